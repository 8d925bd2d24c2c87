"""Rank × worker splits: disjoint, complete, equal length; padding is flagged and counted."""
from __future__ import annotations

import pytest

from shard_factory import good_members, write_custom
from streamaug.loader import StreamLoader, plan_epoch


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
