"""accelerate under ``torchrun --nproc_per_node=2`` (CPU, gloo) with a StreamLoader (issue #11):
``prepare``, ``send_to_device``, ``skip_first_batches``, and ``register_for_checkpointing`` +
``save_state``/``load_state`` resuming mid-epoch with the uninterrupted batches on every rank
(balance + augment + mixup on). The job is ``framework_scripts/accelerate_job.py``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("accelerate")
pytest.importorskip("sklearn")

SCRIPTS = os.path.join(os.path.dirname(__file__), "framework_scripts")
sys.path.insert(0, SCRIPTS)

from digits_shards import TRAIN_PER_CLASS, make_loaders, write_digits_shards  # noqa: E402
from torchrun_job import run_torchrun  # noqa: E402

pytestmark = pytest.mark.slow
TIMEOUT = 240


def torchrun(digits, out, tag, *extra):
    run_torchrun([os.path.join(SCRIPTS, "accelerate_job.py"), "--train", digits[0], "--val", digits[1],
                  "--out", out, "--tag", tag, *extra], cwd=out, timeout=TIMEOUT, pythonpath=(SCRIPTS,))


def read(out, tag, rank) -> tuple[dict, list[dict]]:
    with open(os.path.join(out, f"{tag}-rank{rank}.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return rows[0], rows[1:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted 2-epoch run that saves state mid-epoch 1 (then checks skip_first_batches),
    and a run resumed from that state."""
    root = tmp_path_factory.mktemp("accelerate")
    digits = write_digits_shards(str(root / "digits"))
    per_rank = len(make_loaders(*digits, world_size=2, rank=0)[0])
    save_at = per_rank + 2
    torchrun(digits, root, "ref", "--save-at", save_at, "--skip", 3)
    torchrun(digits, root, "resumed", "--resume", root / "state")
    return root, per_rank, save_at


def test_prepare_and_send_to_device_keep_the_loader_and_its_batches(runs):
    root, per_rank, _ = runs
    for rank in range(2):
        info, rows = read(root, "ref", rank)
        rows = [r for r in rows if r["stage"] == "train"]
        assert info["world_size"] == 2 and "MULTI_CPU" in info["distributed"], info
        assert info["prepared_type"] == "StreamLoader", "prepare() passes a non-DataLoader through"
        assert len(rows) == 2 * per_rank, f"rank {rank}: {len(rows)} batches, expected 2 epochs of {per_rank}"


def test_ranks_are_disjoint_and_complete(runs):
    root, _, _ = runs
    everything = sorted(f"train_{i:08d}" for i in range(sum(TRAIN_PER_CLASS)))
    for epoch in range(2):
        real = [[k for r in read(root, "ref", rank)[1] if r["stage"] == "train" and r["epoch"] == epoch
                 for k in r["real"]] for rank in range(2)]
        assert not set(real[0]) & set(real[1]), f"epoch {epoch}: ranks are disjoint"
        assert sorted(real[0] + real[1]) == everything, f"epoch {epoch}: together complete, each sample once"


def test_save_state_load_state_resumes_every_rank(runs):
    """accelerate saves the registered loader's state from the main process only; both ranks load it."""
    root, per_rank, save_at = runs
    for rank in range(2):
        ref, resumed = ([r for r in read(root, tag, rank)[1] if r["stage"] == "train"] for tag in ("ref", "resumed"))
        assert len(resumed) == len(ref) - save_at, f"rank {rank}"
        assert [(r["epoch"], r["keys"], r["sum"]) for r in resumed] == \
               [(r["epoch"], r["keys"], r["sum"]) for r in ref[save_at:]], f"rank {rank}"


def test_skip_first_batches_yields_the_rest_of_the_pass(runs):
    root, per_rank, _ = runs
    for rank in range(2):
        rows = read(root, "ref", rank)[1]
        assert not [r["error"] for r in rows if r["stage"] == "skip_error"], f"rank {rank}"
        full = [(r["keys"], r["sum"]) for r in rows if r["stage"] == "full"]
        skipped = [(r["keys"], r["sum"]) for r in rows if r["stage"] == "skipped"]
        assert len(full) == per_rank and skipped == full[3:], f"rank {rank}"


ACCUMULATION_JOB = r'''
import json, sys
import numpy as np, torch, torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from accelerate import Accelerator
from streamaug.loader import StreamLoader, write_shards

rng = np.random.default_rng(0)
images, labels = rng.integers(0, 256, (200, 4, 4, 3), dtype=np.uint8), rng.integers(0, 3, 200)
index = write_shards((images, labels), "shards", maxcount=50, progress=False)
accelerator = Accelerator(cpu=True, gradient_accumulation_steps=4)
loaders = {"dataloader": DataLoader(TensorDataset(torch.rand(200, 3, 4, 4), torch.from_numpy(labels)), batch_size=16),
           "indexed": StreamLoader(index.urls, batch_size=16, dtype=torch.float32),
           "unindexed": StreamLoader(index.urls, batch_size=16, dtype=torch.float32, index=False, num_classes=3),
           "skip_first_batches": StreamLoader(index.urls, batch_size=16, dtype=torch.float32)}
out = {}
for name, loader in loaders.items():
    model = torch.nn.Linear(48, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    synced = []
    for epoch in range(2):
        skip = 4 if name == "skip_first_batches" else 0       # accelerate's resume recipe
        batches = accelerator.skip_first_batches(loader, skip) if skip else loader
        for step, (x, y) in enumerate(batches, start=skip):
            with accelerator.accumulate(model):
                accelerator.backward(F.cross_entropy(model(x.flatten(1)), y))
                if accelerator.sync_gradients:
                    synced.append((epoch, step))
                optimizer.step()
                optimizer.zero_grad()
        del batches            # a DataLoader rebuilt over loader.dataset holds its pass until it is dropped
        assert not accelerator.gradient_state.in_dataloader, name
    out[name] = {"synced": synced, "grad_left": model.weight.grad is not None}
print(json.dumps(out))
'''


def test_gradient_accumulation_steps_at_the_end_of_every_pass(tmp_path):
    """``accelerator.accumulate`` steps at the last batch of a pass, as with a DataLoader it
    prepared; it was not told where a StreamLoader pass ends, so the last partial window was
    never stepped and its gradient went into the next epoch's first step."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-c", ACCUMULATION_JOB], capture_output=True, text=True,
                          timeout=TIMEOUT, cwd=str(tmp_path), env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = [(e, s) for e in range(2) for s in (3, 7, 11, 12)]      # 13 batches of 16: 200 samples
    synced = {name: [tuple(p) for p in r["synced"]] for name, r in result.items()}
    assert synced["dataloader"] == expected, "the reference: accelerate's own DataLoader"
    for name in ("indexed", "unindexed"):
        assert synced[name] == expected, name
    # skipping 4 batches shifts the windows (accelerate counts its steps), but the last batch still steps
    assert synced["skip_first_batches"] == [(e, s) for e in range(2) for s in (7, 11, 12)]
    assert not any(result[name]["grad_left"] for name in result), "a gradient left over after the last step"


def test_gather_for_metrics_counts_every_sample_once_over_three_ranks(tmp_path):
    """accelerate's evaluation loop, unchanged, over a StreamLoader: 19 samples on 3 ranks are
    padded to 7 each, and ``gather_for_metrics`` must drop the 2 repeats as it does for its own
    DataLoader. Before, it kept them (``remainder`` was -1), and in batches of 2 the last rank's
    first repeat sat in its third batch, before the cut accelerate makes at the end."""
    import webdataset as wds

    from shard_factory import npy_bytes
    from streamaug.cli import main as cli_main

    total = 19
    with wds.ShardWriter(str(tmp_path / "part-%04d.tar"), maxcount=6, verbose=0) as sink:
        for i in range(total):
            sink.write({"__key__": f"img{i:05d}", "npy": npy_bytes(np.full((4, 4, 3), i, np.uint8)),
                        "cls": str(i % 3).encode()})
    assert cli_main(["index", str(tmp_path / "part-{0000..0003}.tar"), "--quiet"]) == 0
    run_torchrun([os.path.join(SCRIPTS, "accelerate_eval.py"), total], nproc=3, cwd=tmp_path, timeout=TIMEOUT,
                 pythonpath=(SCRIPTS,))
    with open(tmp_path / "gathered.json") as f:
        result = json.load(f)
    assert set(result) == {"1/0", "2/0", "3/2", "4/1", "7/2"}
    for case, got in result.items():
        assert sorted(got["dataloader"]) == list(range(total)), f"the reference, {case}"
        assert got["padded"] == 2, f"7 samples on each of 3 ranks: 2 repeats, {case}"
        assert sorted(got["streamaug"]) == list(range(total)), case


def test_a_balanced_pass_tells_accelerate_its_padding_is_anywhere(tmp_path):
    """Red team: a ClassBalancer that adds no row (classes already even) still shuffles each batch,
    padding rows included, so cutting the gathered last batches after the real count dropped a
    real sample and kept a repeat. With a balancer the remainder is -1 (keep every row)."""
    from accelerate import Accelerator

    from streamaug.loader import StreamLoader, write_shards
    from streamaug.samplers import ClassBalancer

    rng = np.random.default_rng(0)
    index = write_shards((rng.integers(0, 255, (21, 4, 4, 3), np.uint8), np.arange(21) % 3), str(tmp_path),
                         maxcount=8, progress=False)
    accelerator = Accelerator(cpu=True)
    seen = {}
    for name, balance in (("plain", None), ("balanced", ClassBalancer(random_state=3))):
        loader = StreamLoader(index.urls, 2, False, world_size=4, rank=2, balance=balance)
        assert loader.balance is None or loader.balance.synthetic_counts() == (0, 0)
        seen[name] = [accelerator.gradient_state.remainder for _ in loader]
    assert seen["plain"][-1] == 5 and seen["balanced"] == [-1] * len(seen["balanced"])


def test_the_readme_accelerate_example_runs_under_torchrun_on_three_processes(tmp_path):
    """The README says its accelerate example runs as it is under ``torchrun``; the README test
    runs it on one process. Its own asserts (resume at batch 3 on every rank, 1797 samples
    gathered once) are the check. Before, it stopped at batch 10, the whole pass on 3 ranks."""
    from test_readme_examples import BLOCKS

    block, = [b for b in BLOCKS if b.lang == "python" and "from accelerate import Accelerator" in b.code]
    (tmp_path / "train.py").write_text(block.code)
    run_torchrun(["train.py"], nproc=3, cwd=tmp_path, timeout=TIMEOUT)
