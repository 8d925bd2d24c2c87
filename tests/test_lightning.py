"""Lightning ``Trainer.fit()`` with StreamLoader train and val loaders and no overrides (issue #11).

(a) one process, in this one: validation runs full passes every time, including the first one
after the sanity check, and ``limit_val_batches=2`` sees the same two batches every round;
(b) ``devices=2, strategy="ddp"`` on CPU (gloo), in a subprocess that Lightning's launcher
re-runs as rank 1: ranks are disjoint and complete, and a checkpoint taken mid-epoch and
resumed with ``ckpt_path=`` reproduces the uninterrupted batches on every rank, with
balance + augment + mixup on. The job is ``framework_scripts/lightning_job.py``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

L = pytest.importorskip("lightning")
pytest.importorskip("sklearn")

SCRIPTS = os.path.join(os.path.dirname(__file__), "framework_scripts")
sys.path.insert(0, SCRIPTS)

from digits_shards import TRAIN_PER_CLASS, VAL_PER_CLASS, make_loaders, write_digits_shards  # noqa: E402
from lightning_job import SaveAtStep, TinyDigits, trainer_for  # noqa: E402

TIMEOUT = 240


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return write_digits_shards(str(tmp_path_factory.mktemp("digits")))


def val_rounds(seen: list[dict], field: str = "keys") -> list[tuple[str, list[list[str]]]]:
    """Validation batches grouped by round: ("sanity" | "val", [keys (or real keys) of each batch])."""
    rounds: list[tuple[str, list[list[str]]]] = []
    for row in seen:
        if row["stage"] == "train":
            continue
        if not rounds or row["idx"] == 0:
            rounds.append((row["stage"], []))
        rounds[-1][1].append(row[field])
    return rounds


# ------------------------------------------------------------------ (a) one process
def test_validation_runs_full_passes_after_the_sanity_check(digits, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train, val = make_loaders(*digits, full=False)
    model = TinyDigits()
    trainer_for(1, 2, num_sanity_val_steps=2, limit_train_batches=3).fit(model, train, val)
    rounds = val_rounds(model.seen)
    assert [stage for stage, _ in rounds] == ["sanity", "val", "val"]
    assert len(rounds[0][1]) == 2, "the sanity check runs 2 steps and abandons the pass"
    everything = sorted(f"val_{i:08d}" for i in range(10 * VAL_PER_CLASS))
    for stage, batches in rounds[1:]:
        assert len(batches) == len(val), f"a validation round ran {len(batches)} of {len(val)} batches"
        assert sorted(k for keys in batches for k in keys) == everything


def test_limit_val_batches_sees_the_same_batches_every_round(digits, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train, val = make_loaders(*digits, full=False)
    model = TinyDigits()
    trainer_for(1, 3, num_sanity_val_steps=2, limit_train_batches=2, limit_val_batches=2).fit(model, train, val)
    rounds = val_rounds(model.seen)
    assert [stage for stage, _ in rounds] == ["sanity", "val", "val", "val"]
    assert all(batches == rounds[0][1] for _, batches in rounds), [b for _, b in rounds]


def test_overfit_batches_trains_on_the_same_first_batches_of_an_unshuffled_loader(digits, tmp_path, monkeypatch):
    """Red team s35: ``Trainer(overfit_batches=2)`` failed ("needs to subclass DataLoader")
    even with ``shuffle=False``: Lightning keeps a loader as it is only when its sampler is a
    ``SequentialSampler``. A shuffling loader still cannot be rebuilt unshuffled."""
    monkeypatch.chdir(tmp_path)
    _, val = make_loaders(*digits, full=False)          # unshuffled
    model = TinyDigits()
    trainer_for(1, 2, overfit_batches=2, num_sanity_val_steps=0).fit(model, val)
    epochs = [[r["keys"] for r in model.seen if r["stage"] == "train" and r["epoch"] == e] for e in range(2)]
    assert len(epochs[0]) == 2 and epochs[0] == epochs[1] == [list(b.keys) for b in val][:2]
    shuffled, _ = make_loaders(*digits, full=False)
    with pytest.raises(ValueError, match=r"needs to subclass .torch\.utils\.data\.DataLoader."):
        trainer_for(1, 1, overfit_batches=2, num_sanity_val_steps=0).fit(TinyDigits(), shuffled)


def test_training_epochs_are_full_passes(digits, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train, val = make_loaders(*digits)
    model = TinyDigits()
    trainer_for(1, 2, num_sanity_val_steps=0, limit_val_batches=0).fit(model, train, val)
    epochs = [[r for r in model.seen if r["stage"] == "train" and r["epoch"] == e] for e in range(2)]
    for e, rows in enumerate(epochs):
        assert len(rows) == len(train), f"epoch {e}"
        assert sorted(k for r in rows for k in r["real"]) == sorted(
            f"train_{i:08d}" for i in range(sum(TRAIN_PER_CLASS))), f"epoch {e}: every real sample once"
    assert [r["keys"] for r in epochs[0]] != [r["keys"] for r in epochs[1]], "epochs are reshuffled"


def test_lightning_epoch_number_reaches_the_loader_through_sampler_set_epoch(digits, tmp_path, monkeypatch):
    """Lightning calls ``loader.sampler.set_epoch(current_epoch)``: its epoch 0 is the loader's epoch 0
    even when the loader already ran a pass of its own before ``fit()``."""
    monkeypatch.chdir(tmp_path)
    train, val = make_loaders(*digits, full=False)
    for _ in train:                   # a pass outside Lightning (a self-advancing loader is now at epoch 1)
        pass
    model = TinyDigits()
    trainer_for(1, 1, num_sanity_val_steps=0, limit_val_batches=0).fit(model, train, val)
    twin, _ = make_loaders(*digits, full=False)
    twin.set_epoch(0)
    assert [r["keys"] for r in model.seen if r["stage"] == "train"] == [list(b.keys) for b in twin]


def test_an_index_free_loader_that_ran_before_fit_follows_lightnings_epochs_after_set_epoch_0(
        digits, tmp_path, monkeypatch):
    """The README's advice: Lightning fetches an index-free loader's first batch before its
    ``set_epoch``, so after a pass of its own the loader is told ``set_epoch(0)`` before ``fit()``;
    then each Lightning epoch is the loader's epoch of that number."""
    monkeypatch.chdir(tmp_path)
    kw = dict(index=False, num_classes=10, channels=1)
    train, _ = make_loaders(*digits, **kw)
    for _ in train:
        pass
    train.set_epoch(0)
    model = TinyDigits()
    trainer_for(1, 2, num_sanity_val_steps=0, limit_val_batches=0).fit(model, train)
    twin, _ = make_loaders(*digits, **kw)
    for epoch in range(2):
        twin.set_epoch(epoch)
        seen = [r["keys"] for r in model.seen if r["stage"] == "train" and r["epoch"] == epoch]
        assert seen == [list(b.keys) for b in twin], f"epoch {epoch}"


def test_an_index_free_balanced_loader_checkpoints_each_epoch_and_resumes(digits, tmp_path, monkeypatch):
    """Without an index, Lightning fetches a pass's first batch before it calls ``set_epoch``; the
    end-of-epoch checkpoint then asked the loader for a state it had no record of (RuntimeError
    at e09ce05). Batches hold ``BATCH`` rows, the epoch's last one at most."""
    from digits_shards import BATCH
    monkeypatch.chdir(tmp_path)

    def fit(epochs: int, resume: str | None = None) -> tuple[TinyDigits, object]:
        train, _ = make_loaders(*digits, index=False, num_classes=10, channels=1)
        saver = L.pytorch.callbacks.ModelCheckpoint(dirpath=f"ckpt{epochs}", save_on_train_epoch_end=True)
        model = TinyDigits()
        L.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, callbacks=[saver], logger=False,
                  enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                  deterministic=True).fit(model, train, ckpt_path=resume)
        return model, saver
    first, saver = fit(1)
    resumed, _ = fit(2, saver.best_model_path)
    for model in (first, resumed):
        sizes = [len(r["keys"]) for r in model.seen if r["stage"] == "train"]
        assert sizes and all(n == BATCH for n in sizes[:-1]) and 0 < sizes[-1] <= BATCH, sizes
    assert {r["epoch"] for r in resumed.seen} == {1}


def test_resuming_a_run_max_steps_stopped_mid_epoch_says_what_lightning_skips(digits, tmp_path, monkeypatch):
    """Red team s40: ``fit(max_steps=k)`` stopping mid-epoch saves Lightning's epoch as the next
    one, so on ``fit(ckpt_path=...)`` it calls ``set_epoch(e + 1)`` and the restored position's
    other batches are never read: that was silent. It is Lightning's count, so the loader warns,
    naming both epochs; a mid-epoch checkpoint within a run resumes without the warning."""
    import warnings

    monkeypatch.chdir(tmp_path)
    steps = len(make_loaders(*digits, full=False)[0]) + 3          # 3 batches into epoch 1

    def fit(max_steps: int, resume: str | None = None, callbacks=()) -> L.Trainer:
        train, _ = make_loaders(*digits, full=False)
        trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=-1, max_steps=max_steps, callbacks=list(callbacks),
                            enable_checkpointing=bool(callbacks), logger=False, enable_progress_bar=False,
                            enable_model_summary=False, deterministic=True, num_sanity_val_steps=0,
                            limit_val_batches=0)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.fit(TinyDigits(), train, ckpt_path=resume)
        trainer.caught = [str(w.message) for w in caught if "replaces the position" in str(w.message)]
        return trainer

    stopped = fit(steps)
    stopped.save_checkpoint("stopped.ckpt")
    resumed = fit(steps + 4, "stopped.ckpt")
    assert len(resumed.caught) == 1 and resumed.caught[0].startswith(
        "set_epoch(2) replaces the position load_state_dict() restored, 3 batches into epoch 1: the rest of "
        "epoch 1 is not read"), resumed.caught
    saver = L.pytorch.callbacks.ModelCheckpoint(dirpath="mid", every_n_train_steps=steps, save_top_k=-1)
    fit(steps + 2, callbacks=[saver])
    within = fit(steps + 4, os.path.join("mid", os.listdir("mid")[0]))
    assert within.caught == [], within.caught


class PeekAtStart(L.Callback):
    """Looks at one training batch as fit starts (image-logging callbacks do)."""

    def on_train_start(self, trainer, pl_module):
        self.peeked = next(iter(trainer.train_dataloader)).keys


def test_a_batch_looked_at_when_a_resumed_fit_starts_leaves_the_resume_exact(digits, tmp_path, monkeypatch):
    """Port red team s41: a callback taking next(iter(train_dataloader)) in on_train_start took
    the restored position; the fit's pass then read the epoch from its first batch again (144
    samples twice, 140 never, no warning). Now the pass after the look resumes there again."""
    monkeypatch.chdir(tmp_path)
    steps = 5

    def fit(callbacks=(), resume=None, **kw) -> TinyDigits:
        train, _ = make_loaders(*digits, full=False)
        model = TinyDigits()
        trainer_for(1, 2, callbacks=callbacks, num_sanity_val_steps=0, limit_val_batches=0, **kw).fit(
            model, train, ckpt_path=resume)
        return model

    whole = [r["keys"] for r in fit().seen if r["stage"] == "train"]
    fit([SaveAtStep("mid.ckpt", steps)], max_steps=steps + 1)
    peek = PeekAtStart()
    resumed = [r["keys"] for r in fit([peek], "mid.ckpt").seen if r["stage"] == "train"]
    assert peek.peeked == whole[steps] and resumed == whole[steps:]


class PeekAtValidationEnd(L.Callback):
    """Looks at a training batch after each validation (image-logging callbacks do)."""

    def __init__(self):
        self.looks = 0

    def on_validation_epoch_end(self, trainer, pl_module):
        next(iter(trainer.train_dataloader))
        self.looks += 1


def test_a_batch_looked_at_mid_epoch_leaves_the_epoch_and_its_checkpoints_whole(digits, tmp_path, monkeypatch):
    """Port red team s41: with val_check_interval=0.5, a callback taking a training batch after
    each validation ended fit after 5 of 10 batches (the loop's pass was superseded). Review s41:
    a checkpoint saved after the look (ModelCheckpoint saves at validation's end) held the look's
    position, mid-epoch and at the epoch's end: resumed, it trained batches twice and others never."""
    monkeypatch.chdir(tmp_path)

    def fit(callbacks=(), resume=None) -> list:
        train, val = make_loaders(*digits, full=False)
        model = TinyDigits()
        L.Trainer(accelerator="cpu", devices=1, max_epochs=2, callbacks=list(callbacks), logger=False,
                  enable_progress_bar=False, enable_model_summary=False, deterministic=True, num_sanity_val_steps=0,
                  val_check_interval=0.5, limit_val_batches=2,
                  enable_checkpointing=any(isinstance(c, L.pytorch.callbacks.ModelCheckpoint) for c in callbacks),
                  ).fit(model, train, val, ckpt_path=resume)
        return [r["keys"] for r in model.seen if r["stage"] == "train"]

    whole = fit()
    peek = PeekAtValidationEnd()
    saver = L.pytorch.callbacks.ModelCheckpoint(dirpath="ck", save_top_k=-1, filename="{step}")
    assert fit([peek, saver]) == whole and peek.looks == 4
    half = len(whole) // 4
    for step in (half, 2 * half):                       # mid-epoch, and the epoch's end
        assert fit([PeekAtValidationEnd()], f"ck/step={step}.ckpt") == whole[step:], step


# ------------------------------------------------------------------ (b) DDP, 2 processes
def run_job(digits, out, tag, *extra):
    cmd = [sys.executable, os.path.join(SCRIPTS, "lightning_job.py"), "--train", digits[0], "--val", digits[1],
           "--out", str(out), "--tag", tag, "--devices", "2", *map(str, extra)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore",
               PYTHONPATH=os.pathsep.join([SCRIPTS, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, cwd=str(out), env=env)
    if proc.returncode != 0:
        raise AssertionError(f"lightning job failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def read(out, tag, rank) -> list[dict]:
    with open(os.path.join(out, f"{tag}-rank{rank}.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def ddp_runs(digits, tmp_path_factory):
    """One uninterrupted 2-epoch run that saves a checkpoint mid-epoch 1, and a run resumed from it."""
    out = tmp_path_factory.mktemp("ddp")
    per_rank = len(make_loaders(*digits, world_size=2, rank=0)[0])   # what each of the 2 ranks streams
    save_at = per_rank + 2                  # mid-epoch 1: checks the epoch counter as well as the position
    run_job(digits, out, "ref", "--save-at", save_at)
    run_job(digits, out, "resumed", "--resume", out / f"step{save_at}.ckpt")
    return out, per_rank, save_at


@pytest.mark.slow
def test_ddp_ranks_are_disjoint_and_complete(ddp_runs):
    out, per_rank, _ = ddp_runs
    everything = sorted(f"train_{i:08d}" for i in range(sum(TRAIN_PER_CLASS)))
    for epoch in range(2):
        rows = [[r for r in read(out, "ref", rank) if r["stage"] == "train" and r["epoch"] == epoch] for rank in range(2)]
        assert len(rows[0]) == len(rows[1]) == per_rank, f"epoch {epoch}: equal batch counts"
        real = [{k for r in rank_rows for k in r["real"]} for rank_rows in rows]
        assert not real[0] & real[1], f"epoch {epoch}: ranks are disjoint"
        assert sorted(real[0] | real[1]) == everything, f"epoch {epoch}: together complete"
        assert sum(len(r["real"]) for rank_rows in rows for r in rank_rows) == len(everything)
        assert sum(r["synthetic"] for rank_rows in rows for r in rank_rows) > 0, "the balancer adds SMOTE rows"


@pytest.mark.slow
def test_ddp_validation_is_split_across_ranks_in_full_passes(ddp_runs):
    out, _, _ = ddp_runs
    rounds = [[b for stage, b in val_rounds(read(out, "ref", rank), "real") if stage == "val"] for rank in range(2)]
    assert len(rounds[0]) == len(rounds[1]) == 2, "one validation round per epoch on each rank"
    for r in range(2):
        assert len(rounds[0][r]) == len(rounds[1][r]), f"round {r}: equal batch counts"
        keys = [[k for batch in rounds[rank][r] for k in batch] for rank in range(2)]
        assert not set(keys[0]) & set(keys[1]), f"round {r}: ranks are disjoint"
        assert sorted(keys[0] + keys[1]) == [f"val_{i:08d}" for i in range(10 * VAL_PER_CLASS)], f"round {r}"


@pytest.mark.slow
def test_ddp_resume_mid_epoch_reproduces_every_rank(ddp_runs):
    """Lightning saves rank 0's loader state only and loads it on both ranks."""
    out, per_rank, save_at = ddp_runs
    for rank in range(2):
        ref = [r for r in read(out, "ref", rank) if r["stage"] == "train"]
        resumed = [r for r in read(out, "resumed", rank) if r["stage"] == "train"]
        assert len(ref) == 2 * per_rank and len(resumed) == len(ref) - save_at, f"rank {rank}"
        assert [(r["epoch"], r["idx"], r["keys"], r["sum"]) for r in resumed] == \
               [(r["epoch"], r["idx"], r["keys"], r["sum"]) for r in ref[save_at:]], f"rank {rank}"
