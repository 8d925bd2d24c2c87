"""Rank × worker splits: disjoint, complete, equal length; padding is flagged and counted."""
from __future__ import annotations

import numpy as np
import pytest
import webdataset as wds

from shard_factory import good_members, npy_bytes, write_custom
from streamaug.loader import StreamLoader, plan_epoch
from streamaug.cli import main as cli_main
from streamaug.loader.tar_reader import shard_runs


def stream(index, world, rank, workers, batch_size, **kw):
    loader = StreamLoader(index.urls, batch_size=batch_size, num_workers=workers, world_size=world,
                          rank=rank, seed=5, shuffle=8, **kw)
    batches = list(loader)
    return loader, batches


@pytest.mark.parametrize("world,workers", [(2, 2), (3, 1), (2, 0), (4, 2)])
def test_ranks_and_workers_cover_every_sample_once(npy_shards, world, workers):
    index, _, _ = npy_shards
    real, counts = [], []
    for rank in range(world):
        loader, batches = stream(index, world, rank, workers, batch_size=6)
        counts.append(len(batches))
        assert len(batches) == len(loader)
        for b in batches:
            real += [k for k, pad in zip(b.keys, b.is_padding.tolist()) if not pad]
    assert len(set(counts)) == 1, f"unequal batch counts per rank: {counts}"
    assert sorted(real) == sorted(set(real)) and len(real) == 100


def test_uneven_shards_fewer_than_consumers(tmp_path):
    """3 shards of 7, 2 and 11 samples over 2 ranks × 2 workers (4 consumers)."""
    shards = {"a.tar": good_members(7), "b.tar": good_members(2, 7), "c.tar": good_members(11, 9)}
    counts = {"a.tar": [4, 3], "b.tar": [1, 1], "c.tar": [5, 6]}
    index = write_custom(str(tmp_path), shards, counts)
    seen, lengths, padded = [], [], 0
    for rank in range(2):
        loader, batches = stream(index, 2, rank, 2, batch_size=3)
        lengths.append([len(b[1]) for b in batches])
        padded += loader.stats.padded
        seen += [k for b in batches for k, p in zip(b.keys, b.is_padding.tolist()) if not p]
    assert lengths[0] == lengths[1] == [3, 3, 3, 1]
    assert sorted(seen) == sorted(f"s_{i:05d}" for i in range(20)) and padded == 0


def test_padding_when_samples_do_not_split_evenly(tmp_path):
    index = write_custom(str(tmp_path), {"a.tar": good_members(5), "b.tar": good_members(2, 5)},
                         {"a.tar": [3, 2], "b.tar": [1, 1]})
    total_pad, real, lengths = 0, [], []
    for rank in range(3):                                   # 7 samples over 3 ranks: 3 each, 2 padded
        loader, batches = stream(index, 3, rank, 1, batch_size=2)
        lengths.append(sum(len(b[1]) for b in batches))
        total_pad += loader.stats.padded
        real += [k for b in batches for k, p in zip(b.keys, b.is_padding.tolist()) if not p]
    assert lengths == [3, 3, 3] and total_pad == 2 and sorted(real) == sorted(set(real)) and len(real) == 7


def test_drop_last_trims_every_rank_to_the_same_full_batches(npy_shards):
    index, _, _ = npy_shards
    for rank in range(3):
        loader, batches = stream(index, 3, rank, 2, batch_size=8, drop_last=True)
        assert [len(b[1]) for b in batches] == [8] * 4 and loader.stats.padded == 0


def test_plan_is_a_pure_function_and_reserves_synthetic_slots(npy_shards):
    index, _, _ = npy_shards
    kw = dict(seed=1, epoch=2, batch_size=10, world_size=2, rank=1, num_workers=3, synthetic_per_rank=17)
    a, b = plan_epoch(index, **kw), plan_epoch(index, **kw)
    assert a == b
    assert sum(a.synthetic) == 17 and max(a.synthetic) - min(a.synthetic) <= 1
    assert a.num_batches == 7 and sum(w.real_total for w in a.workers) == 50
    assert plan_epoch(index, **{**kw, "epoch": 3}).shard_order != a.shard_order


@pytest.mark.parametrize("batch_size", [7, 16, 30])
def test_drop_last_cuts_real_and_synthetic_rows_in_proportion(npy_shards, batch_size):
    """The cut must not fall on real rows alone: that tips the class balance the synthetic rows make."""
    index, _, _ = npy_shards
    kw = dict(seed=1, epoch=0, batch_size=batch_size, world_size=1, rank=0, num_workers=2,
              synthetic_per_rank=41, drop_last=True)
    plan = plan_epoch(index, **kw)
    kept = plan.num_batches * batch_size
    total = index.total + 41
    assert kept < total and abs(sum(plan.synthetic) - 41 * kept / total) <= 0.5
    assert sum(w.real_total for w in plan.workers) + sum(plan.synthetic) == kept


@pytest.mark.parametrize("kwargs,message", [
    ({"batch_size": 0}, "batch_size must be >= 1"),
    ({"batch_size": 4, "rank": 3, "world_size": 2}, "rank must be in"),
    ({"batch_size": 200, "drop_last": True}, "leaves no batch"),
])
def test_plan_rejects_bad_arguments(npy_shards, kwargs, message):
    index, _, _ = npy_shards
    with pytest.raises(ValueError, match=message):
        plan_epoch(index, seed=0, epoch=0, **kwargs)


def shardwriter_corpus(n: int = 40, maxcount: int = 9) -> str:
    """``n`` samples written by webdataset's ShardWriter into the working directory, indexed
    by the CLI; returns the brace pattern (a relative path)."""
    with wds.ShardWriter("part-%04d.tar", maxcount=maxcount, verbose=0) as sink:
        for i in range(n):
            sink.write({"__key__": f"img{i:05d}", "npy": npy_bytes(np.full((4, 4, 3), i, np.uint8)),
                        "cls": str(i % 3).encode()})
    pattern = f"part-{{0000..{(n - 1) // maxcount:04d}}}.tar"
    assert cli_main(["index", pattern, "--quiet"]) == 0
    return pattern


@pytest.mark.parametrize("workers", [0, 1, 2, 3])
@pytest.mark.parametrize("batch_size", [4, 7])
def test_without_shuffling_batches_come_in_dataset_order(tmp_path, monkeypatch, workers, batch_size):
    """``shuffle=False`` is DataLoader's order for any number of workers: batch ``j`` holds samples
    ``j*B ..``, so predictions line up with the dataset. Before, each worker read a contiguous part
    and batches alternated between the parts (img00000-03, then img00020-23 with 2 workers)."""
    monkeypatch.chdir(tmp_path)
    pattern = shardwriter_corpus()
    with StreamLoader(pattern, batch_size, False, num_workers=workers) as loader:
        batches = [(b.keys, b[0][:, 0, 0, 0].tolist()) for b in loader]
    want = [f"img{i:05d}" for i in range(40)]
    assert [k for keys, _ in batches for k in keys] == want
    assert [v for _, values in batches for v in values] == list(range(40)), "each key's own image"
    assert [len(keys) for keys, _ in batches] == [batch_size] * (40 // batch_size) + [40 % batch_size] * (40 % batch_size > 0)


@pytest.mark.parametrize("workers", [0, 2])
def test_without_shuffling_ranks_hold_consecutive_slices_in_order(tmp_path, monkeypatch, workers):
    monkeypatch.chdir(tmp_path)
    pattern = shardwriter_corpus(n=41)
    keys = []
    for rank in range(2):
        with StreamLoader(pattern, 4, False, num_workers=workers, world_size=2, rank=rank) as loader:
            keys.append([k for b in loader for k, p in zip(b.keys, b.is_padding.tolist()) if not p])
    assert keys[0] == [f"img{i:05d}" for i in range(21)]
    assert keys[1] == [f"img{i:05d}" for i in range(21, 41)]      # its 21st row is a flagged repeat


@pytest.mark.parametrize("shuffle", [False, True])
def test_each_worker_reads_each_shard_in_one_pass(npy_shards, shuffle):
    """In dataset order a worker has one segment per batch in a shard: they are read in one pass
    (re-opening the shard per batch would read it from the start each time)."""
    index, _, _ = npy_shards
    plan = plan_epoch(index, seed=3, epoch=1, batch_size=3, num_workers=3, shuffle=shuffle)
    for wp in plan.workers:
        runs = list(shard_runs(wp.segments))
        assert len(runs) == len({seg.url for seg in wp.segments}), "one pass per shard"
        planned = [(seg.url, p) for seg in wp.segments for p in range(seg.start, seg.stop)]
        assert len(planned) == wp.real_total == sum(seg.size for run in runs for seg in run)
    rows = [r for wp in plan.workers for r in ((seg.url, p) for seg in wp.segments for p in range(seg.start, seg.stop))]
    assert sorted(rows) == sorted(set(rows)) and len(rows) == index.total, "every sample once"
    if not shuffle:
        assert len(plan.workers[0].segments) > len(index.shards), "the batches interleave"


def rank_rows(plan) -> list[list[tuple[int, bool]]]:
    """The rank's batches as ``(global position, is padding)`` rows, read off an unshuffled plan:
    each worker's segments fill its batches in order."""
    starts = {}
    for i, url in enumerate(plan.shard_order):
        starts[url] = sum(int(u.split("-")[1].split(".")[0]) for u in plan.shard_order[:i])
    batches = [None] * plan.num_batches
    for wp in plan.workers:
        rows = [(starts[s.url] + p, s.padding) for s in wp.segments for p in range(s.start, s.stop)]
        for j, size in zip(wp.batch_ids, wp.real_sizes):
            batches[j], rows = rows[:size], rows[size:]
        assert rows == []
    return batches


@pytest.mark.parametrize("workers", [0, 2])
def test_padding_is_only_at_the_end_of_the_gathered_last_batches(workers):
    """accelerate's ``gather_for_metrics`` cuts the rows gathered from the ranks' last batches
    (rank after rank) to the first ``remainder``. Every sample must come once before that cut and
    only padding after it. Before, the last rank's short slice was padded from where it ended: 10
    samples over 4 ranks in batches of 2 put a repeat in rank 3's first batch, which no cut at
    the end can remove."""
    from streamaug.loader.shard_index import ShardIndex, ShardInfo

    for total in range(1, 31):
        sizes = [total // 3, total - total // 3 - total // 4, total // 4]
        index = ShardIndex([ShardInfo(f"s{i}-{n}.tar", n, (n,)) for i, n in enumerate(sizes)], num_classes=1)
        for world in range(1, 6):
            for batch_size in (1, 2, 3, 7):
                plans = [plan_epoch(index, seed=0, epoch=0, batch_size=batch_size, world_size=world, rank=r,
                                    num_workers=workers, shuffle=False) for r in range(world)]
                gathered, counted = [], []
                for plan in plans:
                    batches = rank_rows(plan)
                    assert not any(pad for b in batches[:-1] for _, pad in b), (total, world, batch_size)
                    gathered += batches[-1]
                    counted += [g for b in batches[:-1] for g, _ in b]
                cut = plans[0].gathered_real
                assert {p.gathered_real for p in plans} == {cut}
                assert len({len(rank_rows(p)[-1]) for p in plans}) == 1, "the ranks' last batches gather as one tensor"
                if cut == 0:
                    cut = len(gathered)
                assert [pad for _, pad in gathered] == [False] * cut + [True] * (len(gathered) - cut), \
                    (total, world, batch_size, gathered)
                assert sorted(counted + [g for g, _ in gathered[:cut]]) == list(range(total))


def test_gathered_real_is_unknown_where_padding_may_sit_elsewhere(npy_shards):
    """100 samples over 3 ranks in batches of 8: slices of 34, 34 and 32, whose last batches of 2
    gather 6 rows, 4 of them real. Shuffled, the buffer mixes the padding in; a balancer's shares
    may differ by one: unknown (-1). Nothing padded: 0."""
    index, _, _ = npy_shards
    kw = dict(seed=0, epoch=0, batch_size=8, rank=0)
    assert plan_epoch(index, shuffle=False, world_size=3, **kw).gathered_real == 4
    assert plan_epoch(index, shuffle=True, world_size=3, **kw).gathered_real == -1
    assert plan_epoch(index, shuffle=False, world_size=3, synthetic_per_rank=5, **kw).gathered_real == -1
    assert plan_epoch(index, shuffle=True, world_size=4, **kw).gathered_real == 0
    assert plan_epoch(index, shuffle=False, world_size=3, drop_last=True, **kw).gathered_real == 0


def test_a_ranks_slice_moves_every_shuffled_epoch(tmp_path):
    """Red team s35: the ranks' slices were contiguous runs of the shuffled shard order, so with
    one shard (or a few large ones) rank 0 read the same 20 of 40 samples every epoch. The
    global order now starts at a position drawn from (seed, epoch): each epoch the ranks still
    read every sample once between them, and rank 0's set moves. Unshuffled (an evaluation
    loader), the slices stay in dataset order."""
    index = write_custom(str(tmp_path), {"a.tar": good_members(40)}, {"a.tar": [20, 20]})
    sets = []
    for epoch in range(4):
        keys = []
        for rank in range(2):
            loader = StreamLoader(index.urls, batch_size=6, world_size=2, rank=rank, seed=5, shuffle=8, num_workers=1)
            loader.set_epoch(epoch)
            keys.append({k for b in loader for k, p in zip(b.keys, b.is_padding.tolist()) if not p})
        assert len(keys[0]) == len(keys[1]) == 20 and not keys[0] & keys[1], epoch
        sets.append(frozenset(keys[0]))
    assert len(set(sets)) == 4, "rank 0 reads another half each epoch"
    for epoch in range(2):
        plain = StreamLoader(index.urls, batch_size=6, world_size=2, rank=0, shuffle=False)
        plain.set_epoch(epoch)
        assert [k for b in plain for k in b.keys] == [f"s_{i:05d}" for i in range(20)]


def test_a_state_from_before_the_moving_slices_is_refused_where_they_move(tmp_path):
    """A shuffled multi-rank state saved before the slices moved (no ``rank_slices`` in its
    fingerprint) meant other batches: refused by name. One rank, or unshuffled, it still resumes."""
    index = write_custom(str(tmp_path), {"a.tar": good_members(40)}, {"a.tar": [20, 20]})
    for kw, refused in ((dict(world_size=2, rank=1), True), (dict(world_size=2, rank=1, shuffle=False), False),
                        (dict(), False), (dict(world_size=2, rank=0, index=False), False)):
        saver = StreamLoader(index.urls, batch_size=6, seed=5, **kw)
        it = iter(saver)
        next(it)
        older = saver.state_dict()
        assert older["fingerprint"].pop("rank_slices") == ("rotated" if refused else "fixed")
        resumed = StreamLoader(index.urls, batch_size=6, seed=5, **kw)
        if refused:
            with pytest.raises(ValueError, match="rank_slices: saved 'fixed', this loader 'rotated'"):
                resumed.load_state_dict(older)
        else:                             # (without an index, shards are dealt to ranks: nothing moved)
            resumed.load_state_dict(older)
            assert [b.keys for b in resumed] == [b.keys for b in it]
    at_start = StreamLoader(index.urls, batch_size=6, seed=5, world_size=2, rank=1).state_dict()
    at_start["fingerprint"].pop("rank_slices")          # an epoch's start means the same batches either way
    StreamLoader(index.urls, batch_size=6, seed=5, world_size=2, rank=1).load_state_dict(at_start)
