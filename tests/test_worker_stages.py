"""balance=, augment= and mixup= in the reading workers (CPU device): the same batches
as in the main process, resumable, counted the same, and only where no stage needs
the whole stream."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from streamaug.loader import StreamLoader
from shard_factory import npy_bytes, write_custom
from test_loader_plugins import collect
from streamaug.ops import Compose, CutMix, Flip, GaussianNoise, MixUp, Rotate, Shear
from streamaug.samplers import ADASYN, SMOTE, BorderlineSMOTE, ClassBalancer


def make(index, backend="kornia", workers=2, where=None, mixup=True, use_index=True, **kw):
    aug = Compose([Flip(p=0.5), Rotate(20), Shear(x=10), GaussianNoise(0.03)], backend=backend)
    return StreamLoader(index.urls, batch_size=9, seed=3, num_workers=workers, device="cpu",
                        index=index if use_index else False, num_classes=index.num_classes,
                        augment=aug, mixup=MixUp(0.4, p=0.5) if mixup else None,
                        stages_in_workers=where, **kw)


def same(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) and torch.equal(s, t) and k == m
                                    for (x, s, k), (y, t, m) in zip(a, b))


@pytest.mark.parametrize("backend", ["kornia", "opencv"])
@pytest.mark.parametrize("use_index", [True, False])
def test_worker_side_batches_equal_main_side(npy_shards, backend, use_index):
    index, _, _ = npy_shards
    workers = make(index, backend, use_index=use_index)
    main = make(index, backend, where=False, use_index=use_index)
    assert workers.stages_in_workers and not main.stages_in_workers
    for epoch in range(2):
        a, b = collect(workers), collect(main)
        assert same(a, b), f"epoch {epoch}: worker-side and main-side batches differ"
        assert sum(len(k) for _, _, k in a) == 100
    assert workers.augment.last_params is None, "the main process's stages were not called"
    assert main.augment.last_params is not None
    plain = StreamLoader(index.urls, batch_size=9, seed=3, num_workers=2, device="cpu",
                         index=index if use_index else False, num_classes=index.num_classes)
    assert not torch.equal(a[0][0], next(iter(plain))[0]), "the stages changed the images"


@pytest.mark.parametrize("workers", [1, 3])
def test_worker_side_equals_main_side_for_any_worker_count(npy_shards, workers):
    index, _, _ = npy_shards
    assert same(collect(make(index, workers=workers)), collect(make(index, workers=workers, where=False)))


def test_cutmix_and_augment_only_run_in_workers_too(npy_shards):
    index, _, _ = npy_shards
    for mixup in (CutMix(1.0), None):
        a = StreamLoader(index.urls, batch_size=9, seed=1, num_workers=2, device="cpu", index=index,
                         augment=Compose([Rotate(30)]), mixup=mixup)
        b = StreamLoader(index.urls, batch_size=9, seed=1, num_workers=2, device="cpu", index=index,
                         augment=Compose([Rotate(30)]), mixup=mixup, stages_in_workers=False)
        assert a.stages_in_workers and same(collect(a), collect(b)), mixup


@pytest.mark.parametrize("cut", [0, 5, 11])
def test_worker_side_resume_is_bit_identical(npy_shards, cut):
    """Start, middle and end of the epoch (12 batches of 9 over 100 samples)."""
    index, _, _ = npy_shards
    reference = collect(make(index))
    first = make(index)
    it = iter(first)
    assert first.stages_in_workers and len([b for _, b in zip(range(cut), it)]) == cut
    state = first.state_dict()
    resumed = make(index)
    resumed.load_state_dict(state)
    assert same(collect(resumed), reference[cut:])


SYNTHESIZERS = {
    "random": lambda: None,
    "smote-thumbnail": lambda: SMOTE(k_neighbors=3, neighbour_space="thumbnail"),
    "smote-pixels": lambda: SMOTE(k_neighbors=3),
    "borderline-2": lambda: BorderlineSMOTE(k_neighbors=3, kind="borderline-2"),
    "adasyn": lambda: ADASYN(k_neighbors=3),
}


def balanced(index, synthesizer="smote-thumbnail", where=None, workers=2, **kw):
    return make(index, where=where, workers=workers,
                balance=ClassBalancer("auto", SYNTHESIZERS[synthesizer](), reservoir_size=16), **kw)


def collect_rows(loader):
    """Everything a balanced batch says about its rows."""
    return [(b[0].clone(), b[1].clone(), tuple(b.keys), b.is_synthetic.clone(), b.is_padding.clone(),
             tuple(None if p is None else (p["seed"], p["neighbour"], p["u"]) for p in b.provenance))
            for b in loader]


def same_rows(a, b):
    return len(a) == len(b) and all(
        torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) and x[2] == y[2] and torch.equal(x[3], y[3])
        and torch.equal(x[4], y[4]) and x[5] == y[5] for x, y in zip(a, b))


@pytest.mark.parametrize("synthesizer", list(SYNTHESIZERS))
def test_balanced_worker_side_batches_equal_main_side(npy_shards, synthesizer):
    index, _, _ = npy_shards
    workers, main = balanced(index, synthesizer), balanced(index, synthesizer, where=False)
    assert workers.stages_in_workers and not main.stages_in_workers
    for epoch in range(2):
        a, b = collect_rows(workers), collect_rows(main)
        assert same_rows(a, b), f"{synthesizer}, epoch {epoch}: worker-side and main-side batches differ"
        made = sum(int(r[3].sum()) for r in a)
        assert made == sum(workers.balance.targets_.values()) > 0
        assert sum(len(r[2]) for r in a) == 100 + made
    for loader in (workers, main):           # a jump with the workers alive, as DistributedSampler users do
        loader.set_epoch(5)
    assert same_rows(collect_rows(workers), collect_rows(main)), f"{synthesizer}, set_epoch(5)"
    assert workers.stats.as_dict() == main.stats.as_dict()
    assert workers.augment.last_params is None, "the main process's stages were not called"


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_with_no_real_row_are_filled_not_lost(tmp_path, workers):
    """10:1 over 11 classes, batch 4: "auto" adds 90 to 20 real samples, so the plan has
    batches with no real row. Each still comes, filled by the balancer (they used to end
    their worker's share, silently losing every later batch of that worker)."""
    from streamaug.loader import write_shards

    labels = np.array([0] * 10 + list(range(1, 11)), dtype=np.int64)
    images = np.random.default_rng(0).integers(0, 256, (len(labels), 8, 8, 3), dtype=np.uint8)
    index = write_shards((images, labels), str(tmp_path), maxcount=7, progress=False)
    runs = []
    for where in (None, False):
        loader = StreamLoader(index.urls, batch_size=4, seed=1, num_workers=workers, device="cpu", index=index,
                              balance=ClassBalancer("auto"), augment=Compose([Rotate(10)]), stages_in_workers=where)
        plan = loader.plan()
        assert 0 in [s for w in plan.workers for s in w.real_sizes], "the plan has a batch with no real row"
        rows = collect_rows(loader)
        assert len(rows) == len(loader) == plan.num_batches
        got = np.bincount(torch.cat([r[1] for r in rows]).numpy(), minlength=11)
        assert got.tolist() == [10] * 11, got
        assert sum(int(r[3].sum()) for r in rows) == 90
        runs.append(rows)
    assert same_rows(*runs)


def test_augment_in_workers_is_a_deprecated_name(npy_shards):
    index, _, _ = npy_shards
    with pytest.warns(DeprecationWarning, match="use stages_in_workers"):
        loader = make(index, augment_in_workers=False)
    assert not loader.stages_in_workers
    with pytest.warns(DeprecationWarning, match="use stages_in_workers"):
        assert loader.augment_in_workers is False
    with pytest.raises(ValueError, match="stages_in_workers=True and its deprecated name augment_in_workers=False"), \
            pytest.warns(DeprecationWarning):
        make(index, where=True, augment_in_workers=False)
    with pytest.raises(ValueError, match="augment_in_workers .* must be None, True or False, got 'yes'"):
        make(index, augment_in_workers="yes")


@pytest.mark.parametrize("workers", [1, 3])
def test_balanced_worker_side_for_any_worker_count_and_without_augment(npy_shards, workers):
    index, _, _ = npy_shards
    assert same_rows(collect_rows(balanced(index, workers=workers)),
                     collect_rows(balanced(index, workers=workers, where=False)))
    only = [StreamLoader(index.urls, batch_size=9, seed=5, num_workers=workers, device="cpu", index=index,
                         balance=ClassBalancer("auto", SMOTE(k_neighbors=3)), stages_in_workers=where)
            for where in (None, False)]
    assert only[0].stages_in_workers and not only[1].stages_in_workers
    assert same_rows(collect_rows(only[0]), collect_rows(only[1]))


@pytest.mark.parametrize("cut", [0, 6, 12])
def test_balanced_worker_side_resume_is_bit_identical(npy_shards, cut):
    """Start, middle and end of a balanced epoch (13 batches of 9: 100 real + 12 synthetic)."""
    index, _, _ = npy_shards
    reference = collect_rows(balanced(index))
    assert len(reference) == 13 and sum(int(r[3].sum()) for r in reference) == 12
    first = balanced(index)
    it = iter(first)
    assert len([b for _, b in zip(range(cut), it)]) == cut
    state = first.state_dict()
    resumed, resumed_main = balanced(index), balanced(index, where=False)
    for loader in (resumed, resumed_main):
        loader.load_state_dict(state)
    rest = collect_rows(resumed)
    assert same_rows(rest, reference[cut:]) and same_rows(rest, collect_rows(resumed_main))
    assert resumed.stats.as_dict() == resumed_main.stats.as_dict()
    assert resumed.stats.synthetic == 12 and resumed.stats.real == 100   # the state carries the prefix's counts


def test_balancer_shortfall_is_counted_the_same_in_workers(tmp_path):
    """Every class-1 sample is unreadable: its synthetic slots become flagged repeats, counted
    as ``balance_shortfall`` in the worker and shipped with the batch."""
    members = []
    for i in range(40):          # every worker's share has good samples (else nothing pads it)
        members += [(f"s_{i:05d}.npy", npy_bytes(np.full((8, 8, 3), i, np.uint8))), (f"s_{i:05d}.cls", b"0")]
        if i % 10 == 4:
            members += [(f"b_{i:05d}.npy", b"not an npy file"), (f"b_{i:05d}.cls", b"1")]
    index = write_custom(str(tmp_path), {"a.tar": members}, {"a.tar": [40, 4]})
    runs = []
    for where in (None, False):
        loader = StreamLoader(index.urls, batch_size=8, seed=2, num_workers=2, device="cpu", index=index,
                              on_error="skip", balance=ClassBalancer("auto"),
                              augment=Compose([Rotate(10)]), stages_in_workers=where)
        runs.append((collect_rows(loader), loader.stats.as_dict(), loader.stages_in_workers))
    (a, stats_a, inside), (b, stats_b, outside) = runs
    assert inside and not outside and same_rows(a, b)
    assert stats_a == stats_b
    assert stats_a["skipped"]["balance_shortfall"] == 36          # class 1's 40 - 4 slots
    assert stats_a["skipped"]["reservoir_unreadable"] == 4
    # the repeats are drawn from the batch's real rows (class 0's reservoir is not filled: only
    # class 1 is synthesized); each batch's repeats were all of its first real row
    loader = StreamLoader(index.urls, batch_size=8, seed=2, device="cpu", index=index, on_error="skip",
                          balance=ClassBalancer("auto"))
    repeats = [int(b.images[i, 0, 0, 0]) for b in loader for i, k in enumerate(b.keys) if k == "padding"]
    assert len(repeats) == 36 and len(set(repeats)) >= 15, repeats
    # ADASYN fills every class's reservoir: the repeats come from class 0's (its first member, before)
    loader = StreamLoader(index.urls, batch_size=8, seed=2, device="cpu", index=index, on_error="skip",
                          balance=ClassBalancer("auto", ADASYN(k_neighbors=3)))
    repeats = [int(b.images[i, 0, 0, 0]) for b in loader for i, k in enumerate(b.keys) if k == "padding"]
    assert len(repeats) == 36 and len(set(repeats)) >= 15, repeats


class NoWorkerContract:
    """A balancer that meets the protocol but says nothing about running in workers."""
    seed = None

    def manual_seed(self, seed): ...
    def state_dict(self): return {}
    def load_state_dict(self, state): ...
    def bind(self, context): ...
    def synthetic_counts(self): return 0, 0
    def __call__(self, batch, n_synthetic): return batch


class HalfContract(NoWorkerContract):
    def worker_blocker(self, indexed): return None


def test_where_the_stages_run(npy_shards):
    index, _, _ = npy_shards
    assert not make(index, workers=0).stages_in_workers
    assert balanced(index).stages_in_workers
    assert not balanced(index, where=False).stages_in_workers
    plain = dict(batch_size=9, num_workers=2, device="cpu", index=index)
    blocked = {
        "balance= with stratified=True picks each batch's slots": dict(balance=ClassBalancer("auto", stratified=True)),
        "balance= without an index feeds its reservoirs": dict(balance=ClassBalancer("auto"), index=False,
                                                               num_classes=index.num_classes),
        "balance= with feature_fn= emits features": dict(
            balance=ClassBalancer("auto", feature_fn=lambda x: x.flatten(1).float())),
        r"balance= \(NoWorkerContract\) has no worker_blocker/prepare/count_into\(\)": dict(balance=NoWorkerContract()),
        r"balance= \(HalfContract\) has no prepare/count_into\(\)": dict(balance=HalfContract()),
    }
    for reason, kw in blocked.items():
        assert not StreamLoader(index.urls, **{**plain, **kw}).stages_in_workers, reason
        with pytest.raises(ValueError, match=r"stages_in_workers=True, but " + reason):
            StreamLoader(index.urls, stages_in_workers=True, **{**plain, **kw})
    assert not make(index, backend="dali").stages_in_workers
    with pytest.raises(ValueError, match="stages_in_workers=True, but num_workers=0"):
        make(index, where=True, workers=0)
    with pytest.raises(ValueError, match="stages_in_workers must be None, True or False, got 'yes'"):
        make(index, where="yes")
    assert make(index, where=True).stages_in_workers


@pytest.mark.slow
def test_a_stage_that_does_not_pickle_stays_in_the_main_process_under_spawn(npy_shards):
    """Red team s34: a lambda sampling_strategy went to spawn-started workers by default, and
    the first batch failed with a PicklingError (spawn is macOS's default)."""
    index, _, _ = npy_shards
    kw = dict(batch_size=9, num_workers=2, device="cpu", index=index, seed=3)

    def strategy(y):                      # a local function: pickle cannot name it
        return {1: 60}
    assert StreamLoader(index.urls, balance=ClassBalancer(strategy), **kw).stages_in_workers, "fork: inherited"
    spawned = StreamLoader(index.urls, balance=ClassBalancer(strategy), multiprocessing_context="spawn", **kw)
    assert not spawned.stages_in_workers
    with spawned:
        counts = np.bincount(np.concatenate([b.hard_labels[~b.is_padding].numpy() for b in spawned]))
    assert counts[1] == 60
    with pytest.raises(ValueError, match="stages_in_workers=True, but balance= cannot be pickled for spawn-started "
                                         "workers .*define its functions at module level"):
        StreamLoader(index.urls, balance=ClassBalancer(strategy), multiprocessing_context="spawn",
                     stages_in_workers=True, **kw)
    assert StreamLoader(index.urls, balance=ClassBalancer("auto"), multiprocessing_context="spawn",
                        **kw).stages_in_workers, "a balancer that pickles goes to spawned workers"


def test_a_start_method_set_to_spawn_after_the_build_names_the_stage_and_the_fix(npy_shards):
    """Left open in s34: built under fork, a loader placed a stage that does not pickle in its
    workers; ``set_start_method("spawn")`` before the first pass then failed inside DataLoader
    with a bare PicklingError. Now the pass raises naming the stage and the ways out, and a
    loader given the context keeps the stage in the main process."""
    import multiprocessing
    index, _, _ = npy_shards
    kw = dict(batch_size=9, num_workers=2, device="cpu", index=index, seed=3)

    def strategy(y):                      # a local function: pickle cannot name it
        return {1: 60}
    loader = StreamLoader(index.urls, balance=ClassBalancer(strategy), **kw)
    assert loader.stages_in_workers
    before = multiprocessing.get_start_method(allow_none=True)
    multiprocessing.set_start_method("spawn", force=True)
    try:
        with pytest.raises(RuntimeError, match=r"now start by spawn.*balance= cannot be pickled.*"
                                               r"multiprocessing_context='spawn' or stages_in_workers=False"):
            next(iter(loader))
        assert not StreamLoader(index.urls, balance=ClassBalancer(strategy), **kw).stages_in_workers
    finally:
        multiprocessing.set_start_method(before, force=True)
        loader.close()
