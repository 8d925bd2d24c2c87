"""StreamLoader(index=False): streaming without an index, online class balancing."""
from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
from imblearn.over_sampling import SMOTE as ImbSMOTE

from loader_states import state_after
from streamaug.loader import StreamLoader, write_shards
from streamaug.samplers import SMOTE, ClassBalancer

pytestmark = pytest.mark.filterwarnings("ignore:class .* has .* samples in the reservoir:RuntimeWarning")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    rng = np.random.default_rng(0)
    n = 1200
    labels = rng.choice(3, n, p=[0.7, 0.2, 0.1])
    images = rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
    index = write_shards((images, labels), str(tmp_path_factory.mktemp("noidx")), maxcount=100, progress=False)
    return index.urls, labels


def imblearn_counts(labels, strategy):
    X = np.random.default_rng(0).normal(size=(len(labels), 2))
    return collections.Counter(ImbSMOTE(sampling_strategy=strategy).fit_resample(X, labels)[1].tolist())


def synthetic_by_half_time(per_batch_rows: list[tuple[int, int]]) -> float:
    """The share of the epoch's synthetic rows handed on by the time half its real rows were:
    balancing part-way, not all at the end (``per_batch_rows``: (real, synthetic) per batch).
    (Counting the batches before the last could not fail once the end came cut into many.)"""
    real, synthetic = np.array(per_batch_rows).T
    half = np.searchsorted(np.cumsum(real), real.sum() / 2)
    return float(synthetic[:half + 1].sum() / max(synthetic.sum(), 1))


def class_counts_and_synthetic(loader) -> tuple[collections.Counter, list[tuple[int, int]]]:
    """One pass: real + synthetic rows per class (padding left out), and (real, synthetic) rows per batch."""
    counts, per_batch = collections.Counter(), []
    for b in loader:
        counts.update(b.hard_labels[~b.is_padding].tolist())
        per_batch.append((int((~b.is_synthetic & ~b.is_padding).sum()), int(b.is_synthetic.sum())))
    return counts, per_batch


@pytest.mark.parametrize("workers", [0, 2])
def test_every_sample_once_without_an_index(shards, workers):
    urls, labels = shards
    loader = StreamLoader(urls, batch_size=64, num_workers=workers, index=False, seed=1)
    keys = [k for b in loader for k in b.keys]
    assert len(keys) == len(set(keys)) == len(labels)
    with pytest.raises(TypeError, match="no len"):
        len(loader)
    second = [k for b in loader for k in b.keys]
    assert second != keys and sorted(second) == sorted(keys), "shards and buffer reshuffle per epoch"


def test_index_false_needs_num_classes_for_balance_or_mixup(shards):
    urls, _ = shards
    with pytest.raises(ValueError, match="needs num_classes="):
        StreamLoader(urls, batch_size=8, index=False, balance=ClassBalancer())


@pytest.mark.parametrize("strategy", ["auto", "all", {1: 900, 2: 500}])
@pytest.mark.parametrize("workers", [0, 2])
def test_online_balancing_meets_imblearn_counts_at_epoch_end(shards, strategy, workers):
    urls, labels = shards
    loader = StreamLoader(urls, batch_size=64, num_workers=workers, index=False, num_classes=3, seed=2,
                          balance=ClassBalancer(strategy))
    counts, per_batch = class_counts_and_synthetic(loader)
    assert counts == imblearn_counts(labels, strategy)
    assert "online_overshoot" not in loader.stats.skipped
    if isinstance(strategy, str):      # ratio strategies act mid-epoch, not only at the end
        assert synthetic_by_half_time(per_batch) > 0.2      # (0.31 measured; 0 with nothing done part-way)


def test_resume_without_an_index_replays_to_the_same_batches(shards):
    urls, _ = shards

    def make():
        return StreamLoader(urls, batch_size=64, num_workers=2, index=False, num_classes=3, seed=3,
                            balance=ClassBalancer("auto"))
    full = [(b.keys, b[0].clone()) for b in make()]
    first = make()
    it = iter(first)
    head = [(b.keys, b[0].clone()) for _, b in zip(range(7), it)]
    state = first.state_dict()
    resumed = make()
    resumed.load_state_dict(state)
    tail = [(b.keys, b[0].clone()) for b in resumed]
    assert len(head) + len(tail) == len(full)
    assert all(k == j and torch.equal(x, y) for (k, x), (j, y) in zip(head + tail, full))


def test_pipe_urls_stream_without_an_index(shards):
    urls, labels = shards
    keys = [k for b in StreamLoader([f"pipe:cat {u}" for u in urls], batch_size=100, index=False) for k in b.keys]
    assert len(set(keys)) == len(labels)


@pytest.mark.parametrize("workers", [0, 2])
def test_counts_of_a_share_with_no_good_sample_are_kept(shards, tmp_path, workers):
    """With two workers the bad shard is one worker's whole share: it cuts no batch to carry
    its count, which used to be lost. Resumed at the start, middle and end: counted once."""
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"this is not a tar" * 100)
    urls = [str(bad), shards[0][0]]

    def make():                      # shuffled shard order: the bad shard's counts come first or last
        return StreamLoader(urls, batch_size=64, num_workers=workers, index=False, on_error="skip", seed=2)
    loader = make()
    assert len([k for b in loader for k in b.keys]) == 100
    assert loader.stats.skipped == {"corrupt_shard": 1}
    for taken in range(3):
        first = make()
        it = iter(first)
        for _ in range(taken):
            next(it)
        state = first.state_dict()
        resumed = make()
        resumed.load_state_dict(state)
        rest = [k for b in resumed for k in b.keys]
        if taken < 2:
            assert len(rest) == 100 - 64 * taken
            assert resumed.stats.skipped == {"corrupt_shard": 1}, taken
        else:                       # taken after the last batch: the next epoch, whose pass counts it again
            assert len(rest) == 100 and resumed.epoch == 2
            assert resumed.stats.skipped == {"corrupt_shard": 2}, taken


def test_counts_that_come_after_the_last_batch_are_counted_once_on_resume(shards, tmp_path):
    """The bad shard is the last worker's whole share and its counts arrive after the only
    batch; a state taken after that batch has them once, and resumes at the next epoch."""
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"this is not a tar" * 100)

    def make():
        return StreamLoader([shards[0][0], str(bad)], batch_size=128, num_workers=2, index=False,
                            on_error="skip", shuffle=0)
    first = make()
    it = iter(first)
    assert len(next(it).keys) == 100
    assert first.stats.skipped == {"corrupt_shard": 1}
    state = first.state_dict()
    assert (state["epoch"], state["batches_done"], state["stats"]["skipped"]) == (1, 0, {"corrupt_shard": 1})
    resumed = make()
    resumed.load_state_dict(state)
    assert len([k for b in resumed for k in b.keys]) == 100
    assert resumed.stats.skipped == {"corrupt_shard": 2}, "epoch 0's count, then epoch 1's"


def test_several_ranks_without_an_index_are_warned_of_unequal_epochs(shards):
    urls, _ = shards
    with pytest.warns(RuntimeWarning, match="without an index on 2 ranks.*streamaug index"):
        StreamLoader(urls, batch_size=64, index=False, world_size=2, rank=1)


@pytest.mark.parametrize("strategy", [{1: 500}, lambda y: {2: 300}])
def test_absolute_strategies_without_an_index_on_several_ranks_are_refused_when_built(shards, strategy):
    urls, _ = shards
    with pytest.warns(RuntimeWarning, match="without an index"), \
            pytest.raises(ValueError, match="without an index each of the 2 ranks balances only"):
        StreamLoader(urls, batch_size=64, index=False, num_classes=3, world_size=2, rank=0,
                     balance=ClassBalancer(strategy))


def test_a_dict_asking_for_fewer_than_the_stream_held_raises_when_it_is_passed(shards):
    """Left open in s34: a dict strategy that asks for fewer samples of a class than the epoch
    holds raised only at the epoch's end (imbalanced-learn's message, no class named), after
    every batch had been trained on. Class 1 has about 240 samples; the error now comes at the
    batch that takes the stream past 100, naming the class and both counts."""
    urls, labels = shards
    loader = StreamLoader(urls, batch_size=64, index=False, num_classes=3, seed=2, balance=ClassBalancer({1: 100}))
    done, held = 0, 0
    with pytest.raises(ValueError, match=r"asks for 100 samples of class 1 in all, but this epoch's stream has "
                                         r"already held 1\d\d; over-sampling adds samples and cannot remove"):
        for b in loader:
            done, held = done + 1, held + int((b.hard_labels[~b.is_synthetic] == 1).sum())
    assert held <= 100 and done < len(labels) // 64 / 2, (done, held)    # raised part-way, not at the end


def test_stratified_without_an_index_is_refused_when_built(shards):
    """Red team s34: it was ignored, the batches byte for byte those of stratified=False."""
    urls, _ = shards
    with pytest.raises(ValueError, match="stratified=True .* need an index"):
        StreamLoader(urls, batch_size=64, index=False, num_classes=3, balance=ClassBalancer(stratified=True))


@pytest.mark.parametrize("workers", [0, 2])
def test_minority_without_an_index_balances_the_epochs_minority_only(tmp_path, workers):
    """Two classes nearly as small: part-way through the epoch either can look the smaller."""
    rng = np.random.default_rng(3)
    labels = rng.permutation(np.repeat([0, 1, 2], [700, 252, 248]))
    images = rng.integers(0, 256, (len(labels), 4, 4, 3), dtype=np.uint8)
    urls = write_shards((images, labels), str(tmp_path), maxcount=100, progress=False, shuffle_seed=None).urls
    loader = StreamLoader(urls, batch_size=64, index=False, num_classes=3, num_workers=workers, seed=2,
                          balance=ClassBalancer("minority"))
    counts = collections.Counter(c for b in loader for c in b.hard_labels[~b.is_padding].tolist())
    assert counts == imblearn_counts(labels, "minority")


@pytest.mark.parametrize("workers", [0, 2])
def test_drop_last_without_an_index_drops_each_workers_partial_batch(shards, workers):
    """As DataLoader over an IterableDataset: every batch full, each worker's partial tail dropped."""
    urls, labels = shards
    full = StreamLoader(urls, batch_size=64, num_workers=workers, index=False, seed=1)
    dropped = StreamLoader(urls, batch_size=64, num_workers=workers, index=False, seed=1, drop_last=True)
    kept = list(dropped)
    assert kept and all(len(b.keys) == 64 for b in kept)
    whole = list(full)
    assert [b.keys for b in kept] == [b.keys for b in whole if len(b.keys) == 64]
    assert sum(len(b.keys) != 64 for b in whole) == max(1, workers) and len(labels) % 64


@pytest.mark.parametrize("workers", [0, 2])
def test_classes_nearly_as_large_as_the_majority_get_no_rows_the_epoch_end_would_not(tmp_path, workers):
    """Seven classes of about equal size and three small ones: part-way, any of the seven can look
    short of the majority by more than it will be at the end. Nothing may overshoot, and the small
    classes still get most of their rows before the last batch."""
    rng = np.random.default_rng(5)
    sizes = [181, 179, 183, 176, 180, 178, 182, 8, 12, 6]
    labels = rng.permutation(np.repeat(np.arange(10), sizes))
    images = rng.integers(0, 256, (len(labels), 4, 4, 3), dtype=np.uint8)
    urls = write_shards((images, labels), str(tmp_path), maxcount=100, progress=False, shuffle_seed=None).urls
    loader = StreamLoader(urls, batch_size=64, index=False, num_classes=10, num_workers=workers, seed=2,
                          balance=ClassBalancer("auto"))
    counts, per_batch = class_counts_and_synthetic(loader)
    assert counts == imblearn_counts(labels, "auto")
    assert "online_overshoot" not in loader.stats.skipped
    assert synthetic_by_half_time(per_batch) > 0.2          # (0.26-0.32 measured; 0 with nothing part-way)


def test_a_clear_minority_is_balanced_part_way_not_all_in_the_last_batch(shards):
    urls, labels = shards                     # 70% / 20% / 10%: the minority is settled early
    loader = StreamLoader(urls, batch_size=64, index=False, num_classes=3, seed=2,
                          balance=ClassBalancer("minority"))
    counts, per_batch = class_counts_and_synthetic(loader)
    assert counts == imblearn_counts(labels, "minority")
    assert synthetic_by_half_time(per_batch) > 0.2          # (0.26-0.32 measured; 0 with nothing part-way)


def balanced_loader(urls, workers, **kw):
    return StreamLoader(urls, batch_size=64, num_workers=workers, index=False, num_classes=3, seed=4,
                        balance=ClassBalancer("auto"), **kw)


@pytest.mark.parametrize("workers", [0, 2])
def test_drop_last_with_a_balancer_gives_up_rows_in_proportion_to_the_epochs_classes(tmp_path, workers):
    """Red team s34: the epoch's last rows are the balancer's rows due to the minorities, so
    dropping the short last batch as it was left [496, 355, 349] of a [500, 500, 500] epoch."""
    labels = np.array([0] * 500 + [1] * 60 + [2] * 25)
    np.random.default_rng(15).shuffle(labels)
    images = np.random.default_rng(0).integers(0, 256, (len(labels), 4, 4, 3), dtype=np.uint8)
    index = write_shards((images, labels), str(tmp_path) + "/", maxcount=100, progress=False)
    loader = StreamLoader(index.urls, batch_size=400, index=False, num_classes=3, drop_last=True, num_workers=workers,
                          balance=ClassBalancer("auto", SMOTE()), device="cpu")
    counts, _ = class_counts_and_synthetic(loader)
    assert [counts[c] for c in range(3)] == [400, 400, 400]


@pytest.mark.parametrize("workers", [0, 2])
def test_balanced_batches_without_an_index_hold_batch_size_rows(shards, workers):
    """Before, each batch held 64 real rows plus its synthetic ones (about 130 here), and the last one
    everything still due (over 2,000 rows on 5000/300/50): a GPU sized for batch_size ran out."""
    urls, labels = shards
    loader = balanced_loader(urls, workers)
    sizes, counts, keys = [], collections.Counter(), []
    for b in loader:
        sizes.append(len(b.keys))
        counts.update(b.hard_labels[~b.is_padding].tolist())
        keys += [k for k, s in zip(b.keys, b.is_synthetic.tolist()) if not s]
    total = sum(imblearn_counts(labels, "auto").values())
    assert sizes == [64] * (total // 64) + [total % 64] * (total % 64 > 0)
    assert counts == imblearn_counts(labels, "auto") and sorted(keys) == sorted(set(keys))
    assert len(keys) == len(labels), "every real sample once"
    dropped = [len(b.keys) for b in balanced_loader(urls, workers, drop_last=True)]
    assert dropped and set(dropped) == {64}


@pytest.mark.parametrize("workers", [0, 2])
def test_synthetic_rows_are_made_batch_size_rows_at_a_time(shards, workers, monkeypatch):
    """The balancer made everything due at once: each batch read grew to ~3x batch_size here (~11x
    on a 1000-class long tail), and the epoch's end to 1,410 rows for batch_size 64 on 5000/300/50
    (red team), each one tensor. Every part it hands to the re-cut now holds at most batch_size
    rows, and the epoch's totals are still imbalanced-learn's."""
    from streamaug.loader import open_pass
    recut, parts = open_pass.rebatched, []

    def watched(balanced, batch_size, drop_last):
        def each():
            for part in balanced:
                parts.append(len(part))
                yield part
        return recut(each(), batch_size, drop_last)
    monkeypatch.setattr(open_pass, "rebatched", watched)
    urls, labels = shards
    counts, per_batch = class_counts_and_synthetic(balanced_loader(urls, workers))
    assert counts == imblearn_counts(labels, "auto")
    assert sum(made for _, made in per_batch) == sum(counts.values()) - len(labels)
    assert max(parts) <= 64 and len(parts) > len(urls), parts


@pytest.mark.parametrize("sizes,made", [((500, 40), 210), ((500, 300), 0)], ids=["short", "already-met"])
def test_a_float_ratio_without_an_index_balances_two_classes(tmp_path, sizes, made):
    """``ClassBalancer(0.5)`` without an index was refused when the loader was built (its form was
    checked on counts [1, 1], which already meet any ratio: imbalanced-learn's "would remove
    samples"), and a ratio the counts already met mid-epoch would have raised the same."""
    rng = np.random.default_rng(1)
    labels = rng.permutation(np.repeat([0, 1], sizes))
    index = write_shards((rng.integers(0, 256, (len(labels), 4, 4, 3), dtype=np.uint8), labels),
                         str(tmp_path), maxcount=100, progress=False)
    loader = StreamLoader(index.urls, batch_size=32, index=False, num_classes=2, seed=2,
                          balance=ClassBalancer(0.5))
    counts, per_batch = class_counts_and_synthetic(loader)
    assert sum(m for _, m in per_batch) == made and counts == collections.Counter({0: sizes[0], 1: sizes[1] + made})
    if made:
        assert counts == imblearn_counts(labels, 0.5)


@pytest.mark.parametrize("synthesizer", ["ADASYN", "BorderlineSMOTE"])
def test_a_batchs_parts_share_one_neighbour_search_per_class(shards, monkeypatch, synthesizer):
    """ADASYN and Borderline-SMOTE search every member's neighbours over all classes: a stream-fed
    reservoir searched again for each part of a batch (epochs 2-2.8x slower, red team). Between two
    writes to the reservoirs the search is kept: no class is searched twice at one version."""
    import streamaug.samplers as samplers
    from streamaug.samplers import synthesizer as synthesis

    searches = []
    search = synthesis.pool_search

    def counted(reservoir, c, m, rows):
        if rows is None:
            searches.append((c, m, reservoir.pool_version()))
        return search(reservoir, c, m, rows)
    monkeypatch.setattr(synthesis, "pool_search", counted)
    urls, labels = shards
    loader = StreamLoader(urls, batch_size=16, index=False, num_classes=3, seed=4,
                          balance=ClassBalancer("auto", getattr(samplers, synthesizer)()))
    counts, _ = class_counts_and_synthetic(loader)
    assert counts == imblearn_counts(labels, "auto")
    assert searches and len(set(searches)) == len(searches), len(searches) - len(set(searches))


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("stop_at", ["start", "middle", "in_the_last_batches", "end"])
def test_resume_without_an_index_replays_the_epoch_to_the_same_batches_and_counts(shards, workers, stop_at):
    """The cut into batches depends on every batch before it, so a resume replays the epoch from its
    start, the balancer restored to its state there; counts are not counted twice."""
    urls, _ = shards

    def rows(batches):
        return [(tuple(b.keys), b[0].clone(), b.is_synthetic.clone()) for b in batches]
    whole = balanced_loader(urls, workers)
    full = rows(whole)
    full_stats = whole.stats.as_dict()                  # after one epoch
    after = rows(whole)                                 # the next
    cut = {"start": 0, "middle": 9, "in_the_last_batches": len(full) - 2, "end": len(full)}[stop_at]
    first = balanced_loader(urls, workers)
    it = iter(first)
    head = rows(next(it) for _ in range(cut))
    state = first.state_dict()
    del it, first
    resumed = balanced_loader(urls, workers)
    resumed.load_state_dict(state)
    tail = rows(resumed)
    want = after if stop_at == "end" else full[cut:]
    assert len(tail) == len(want)
    assert all(a[0] == b[0] and torch.equal(a[1], b[1]) and torch.equal(a[2], b[2]) for a, b in zip(tail, want))
    assert all(a[0] == b[0] for a, b in zip(head, full))
    if stop_at != "end":
        assert resumed.stats.as_dict() == full_stats, "the replayed prefix is counted once"
    if stop_at == "middle":
        assert state["replays_epoch"] and state["stats"]["real"] == 0, "the state holds the epoch's start"


def test_a_part_way_state_from_before_the_replay_warns_and_resumes(shards):
    urls, _ = shards
    state = state_after(lambda: balanced_loader(urls, 0), 1)
    del state["replays_epoch"]
    resumed = balanced_loader(urls, 0)
    with pytest.warns(RuntimeWarning, match="earlier streamaug"):
        resumed.load_state_dict(state)
    assert all(len(b.keys) <= 64 for b in resumed)


@pytest.mark.parametrize("resume_with_set_epoch", [True, False])
def test_a_state_after_set_epochs_last_batch_resumes_the_next_epoch_exactly(shards, resume_with_set_epoch):
    """The manual loop: ``set_epoch(e)``, a full pass, save. That state is the epoch's end, not a point
    part-way: it holds the balancer as it is (at e09ce05 it held the epoch's start, so the next epoch
    drew from the wrong reservoir and the counts went back to 0)."""
    urls, _ = shards

    def rows(loader):
        return [(tuple(b.keys), b[0].clone()) for b in loader]
    whole = balanced_loader(urls, 0)
    whole.set_epoch(0)
    rows(whole)
    stats0 = whole.stats.as_dict()
    whole.set_epoch(1)
    want = rows(whole)
    first = balanced_loader(urls, 0)
    first.set_epoch(0)
    rows(first)
    state = first.state_dict()
    assert state["epoch_ended"] and not state["replays_epoch"] and state["stats"] == stats0
    resumed = balanced_loader(urls, 0)
    resumed.load_state_dict(state)
    assert resumed.stats.as_dict() == stats0
    if not resume_with_set_epoch:
        assert rows(resumed) == [], "nothing is left of set_epoch's epoch (as with an index)"
    resumed.set_epoch(1)
    got = rows(resumed)
    assert len(got) == len(want) and all(a[0] == b[0] and torch.equal(a[1], b[1]) for a, b in zip(got, want))
    assert resumed.stats.as_dict() == whole.stats.as_dict()


def test_set_epoch_after_a_pass_began_still_gives_a_state(shards):
    """Lightning's order without an index: ``iter()``, one batch fetched ahead, then ``set_epoch``.
    The pass goes on in epoch 0's order, so the state names epoch 0 (it named epoch 1 with one
    batch done, and its resume read other rows), and the resume continues the pass exactly."""
    urls, _ = shards
    loader = balanced_loader(urls, 0)
    it = iter(loader)
    next(it)
    loader.set_epoch(1)
    with pytest.warns(UserWarning, match=r"set_epoch\(1\) was called while a pass of epoch 0 ran"):
        next(it)
    state = loader.state_dict()
    rest = [b.keys for b in it]
    assert (state["epoch"], state["batches_done"], state["replays_epoch"], state["next_epoch"]) == (0, 2, True, 1)
    assert loader.epoch == 1 and rest
    resumed = balanced_loader(urls, 0)
    resumed.load_state_dict(state)
    assert [b.keys for b in resumed] == rest and resumed.epoch == 1


def test_a_saved_state_is_a_copy(shards):
    urls, _ = shards
    loader = balanced_loader(urls, 0)
    it = iter(loader)
    next(it)
    state = loader.state_dict()
    state["stats"]["real"] = 10 ** 6
    state["balance"]["seen_epoch"][0] = 10 ** 6
    again = loader.state_dict()
    assert again["stats"]["real"] == 0 and again["balance"]["seen_epoch"][0] != 10 ** 6


@pytest.mark.parametrize("workers", [0, 3])
def test_drop_last_without_an_index_drops_only_the_recut_partial_batch(shards, workers):
    """The reading workers keep their partial batches; only the re-cut's last one is dropped (at
    e09ce05 both were, and 144 rows went)."""
    urls, labels = shards
    kept = [b for b in balanced_loader(urls, workers, drop_last=True)]
    real = [k for b in kept for k, s in zip(b.keys, b.is_synthetic.tolist()) if not s]
    total = sum(imblearn_counts(labels, "auto").values())
    assert [len(b.keys) for b in kept] == [64] * (total // 64)
    assert len(real) == len(set(real)) >= len(labels) - 63


def test_a_state_restores_its_reservoirs_past_a_cut_shard(shards, tmp_path):
    """Restoring the reservoirs reads their samples back by key; a shard cut short after them (read
    under on_error="skip") made the restore raise the shard's StreamError."""
    urls, labels = shards
    cut = tmp_path / "cut.tar"
    data = open(urls[0], "rb").read()
    cut.write_bytes(data[:len(data) // 2])
    files = [str(cut)] + list(urls[1:])

    def make():
        return StreamLoader(files, batch_size=64, index=False, num_classes=3, seed=4, on_error="skip",
                            balance=ClassBalancer("auto"))
    whole = make()
    list(whole)
    want = [tuple(b.keys) for b in whole]
    first = make()
    list(first)
    assert first.stats.skipped["truncated_shard"] == 1
    resumed = make()
    resumed.load_state_dict(first.state_dict())
    assert [tuple(b.keys) for b in resumed] == want


@pytest.mark.parametrize("max_rows", [0, -3])
def test_max_rows_must_be_positive(max_rows):
    from streamaug.core.flight import BatchInFlight

    balancer = ClassBalancer("auto").fit_online(3)
    batch = BatchInFlight(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]), ["a", "b"], ["u", "u"],
                          torch.zeros(2, dtype=torch.bool), 0)
    with pytest.raises(ValueError, match=f"max_rows must be a positive number of rows, got {max_rows}"):
        balancer(batch, None, max_rows=max_rows)
