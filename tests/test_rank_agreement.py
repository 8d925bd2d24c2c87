"""Ranks that plan different epochs are refused at the first pass, without a collective.

In process: two ranks' loaders (``world_size=2, rank=r``) compared through a real
``torch.distributed.HashStore``, the way each rank compares with the first to arrive; how a
loader takes its key. Under torchrun (gloo, ``framework_scripts/rank_seed_job.py``): per-rank
seeds or shuffling fail the job, naming what differs, after rank 0 alone read loaders of its
own; with the check off the same job overlaps and misses samples; loaders built per epoch read
disjoint, complete slices beside rank-0-only loaders, which wait for no one.
"""
from __future__ import annotations

import json
import os
import warnings

import pytest
import torch.distributed as dist

from shard_factory import make_shards
from streamaug.loader import StreamLoader
from streamaug.loader.loader_state import data_fingerprint, fingerprint
from streamaug.loader.rank_agreement import agreement_key, claim_rank, compare_set, compare_with_first, disagreements
from streamaug.ops import Compose, Flip
from torchrun_job import run_torchrun

SCRIPT = os.path.join(os.path.dirname(__file__), "framework_scripts", "rank_seed_job.py")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("agree") / "shards")
    make_shards(out, n=60, maxcount=16)
    return out


def rank_print(folder, rank, **kw) -> dict:
    """What rank ``rank`` of two stores: its loader's fingerprint (as JSON holds it)."""
    args = dict(batch_size=8, seed=3, world_size=2, rank=rank)
    loader = StreamLoader(folder, **{**args, **kw})
    return json.loads(json.dumps(fingerprint(loader), default=str))


def both_ranks(folder, first: dict, second: dict):
    """Rank 0 arrives first with ``first``'s settings, rank 1 with ``second``'s."""
    store = dist.HashStore()
    compare_with_first(store, "k", 0, rank_print(folder, 0, **first))
    compare_with_first(store, "k", 1, rank_print(folder, 1, **second))


def test_the_same_settings_on_every_rank_pass(folder):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        both_ranks(folder, {}, {})


@pytest.mark.parametrize("field, first, second, shown", [
    ("seed", {"seed": 3}, {"seed": 4}, "seed: rank 0 3, rank 1 4"),
    ("batch_size", {}, {"batch_size": 9}, "batch_size: rank 0 8, rank 1 9"),
    ("drop_last", {}, {"drop_last": True}, "drop_last: rank 0 False, rank 1 True"),
    ("shuffled", {}, {"shuffle": False}, "shuffled: rank 0 True, rank 1 False"),
    ("world_size", {}, {"world_size": 3}, "world_size: rank 0 2, rank 1 3"),
    ("num_workers, no index", {"index": False}, {"index": False, "num_workers": 1},
     "num_workers: rank 0 0, rank 1 1"),
])
def test_a_plan_that_differs_is_refused_naming_the_field_and_both_values(folder, field, first, second, shown):
    with pytest.raises(RuntimeError, match="differs from the same loader on rank 0") as err:
        both_ranks(folder, first, second)
    assert shown in str(err.value) and "check_ranks=False" in str(err.value)


@pytest.mark.parametrize("second, shown", [
    ({"num_workers": 1}, "num_workers: rank 0 0, rank 1 1"),      # with an index, workers split a rank's slice
    ({"shuffle": 10}, "shuffle: rank 0 1000, rank 1 10"),         # the buffer mixes a worker's run, not slices
])
def test_what_changes_the_batches_but_not_the_slices_only_warns(folder, second, shown):
    with pytest.warns(RuntimeWarning, match="read one plan") as caught:
        both_ranks(folder, {}, second)
    assert any(shown in str(w.message) for w in caught)


def test_num_workers_without_shuffling_is_not_a_difference(folder):
    """With an index and no shuffling the batches are the same for any num_workers, and a state
    resumes across them, so there is nothing to warn about."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        both_ranks(folder, {"shuffle": False}, {"shuffle": False, "num_workers": 1})


def test_a_refusal_names_every_field_that_differs(folder):
    with pytest.raises(RuntimeError) as err:
        both_ranks(folder, {}, {"seed": 4, "batch_size": 9})
    assert "seed: rank 0 3, rank 1 4" in str(err.value) and "batch_size: rank 0 8, rank 1 9" in str(err.value)


def test_the_seed_without_shuffling_only_warns(folder):
    # no shuffling: the plan is the dataset's order, so the seed changes augmentations, not slices
    with pytest.warns(RuntimeWarning, match="seed: rank 0 3, rank 1 4.*will not resume the other"):
        both_ranks(folder, {"shuffle": False, "seed": 3}, {"shuffle": False, "seed": 4})


def test_per_rank_augment_seeds_only_warn(folder):
    with pytest.warns(RuntimeWarning, match="plugin_details") as caught:
        both_ranks(folder, {"augment": Compose([Flip()], seed=0)}, {"augment": Compose([Flip()], seed=1)})
    assert all("read one plan" in str(w.message) for w in caught if "rank 1" in str(w.message))


def test_the_first_rank_to_arrive_is_the_reference_whichever_it_is(folder):
    store = dist.HashStore()
    compare_with_first(store, "k", 1, rank_print(folder, 1, seed=5))      # rank 1 first
    with pytest.raises(RuntimeError, match="StreamLoader on rank 0 differs from the same loader on rank 1 .*"
                                           "seed: rank 1 5, rank 0 3"):
        compare_with_first(store, "k", 0, rank_print(folder, 0))


def test_a_second_process_reading_the_same_ranks_slice_is_refused(monkeypatch):
    import streamaug.loader.rank_agreement as agreement

    monkeypatch.setattr(agreement.dist, "get_world_size", lambda: 2)
    store = dist.HashStore()
    claim_rank(store, "k", 0, 0)
    claim_rank(store, "k", 0, 0)           # (the same process again: a later pass)
    claim_rank(store, "k", 1, 1)
    with pytest.raises(RuntimeError, match=r"process rank 1 was given rank=0, which process rank 0 reads too"):
        claim_rank(store, "k", 0, 1)


def test_a_store_without_compare_set_skips_the_check_and_a_failing_store_raises():
    class NoCompareSet(dist.Store):                  # torch's base Store: "Not implemented."
        pass

    class Lost(dist.Store):
        def compare_set(self, key, expected, desired):
            raise dist.DistStoreError("Socket Timeout")

    class RaisesNotImplemented(dist.Store):          # a Python store that says so the Python way
        def compare_set(self, key, expected, desired):
            raise NotImplementedError

    assert compare_set(NoCompareSet(), "k", "v") is None
    assert compare_set(RaisesNotImplemented(), "k", "v") is None
    compare_with_first(NoCompareSet(), "k", 1, {"seed": 1})          # (nothing to compare with: no error)
    with pytest.raises(dist.DistStoreError, match="Socket Timeout"):
        compare_set(Lost(), "k", "v")
    assert compare_set(dist.HashStore(), "k", "v") == b"v"


def test_plan_fields_and_other_fields_are_told_apart():
    plan, other = disagreements({"seed": 1, "shuffle": 0, "resize": None}, {"seed": 2, "shuffle": 0, "resize": [8, 8]})
    assert (plan, other) == ([], ["resize", "seed"])
    plan, other = disagreements({"seed": 1, "shuffle": 5}, {"seed": 2, "shuffle": 6})
    assert (plan, other) == (["seed"], ["shuffle"])
    indexed = {"shards": "3 shards, 60 samples, names and counts #ab", "read_workers": 0, "shuffle": 5}
    assert disagreements(indexed, {**indexed, "read_workers": 2}) == ([], ["read_workers"])
    unshuffled = {**indexed, "shuffle": 0}          # the same batches for any workers: not a difference
    assert disagreements(unshuffled, {**unshuffled, "read_workers": 2}) == ([], [])
    unindexed = {"shards": "3 shards, no index, names #ab", "read_workers": 0}
    assert disagreements(unindexed, {**unindexed, "read_workers": 2}) == (["read_workers"], [])


def test_loaders_are_counted_per_shards_as_their_first_passes_begin(folder, tmp_path):
    make_shards(str(tmp_path / "other"), n=20, maxcount=16)
    loader, other = StreamLoader(folder, batch_size=8), StreamLoader(str(tmp_path / "other"), batch_size=8)
    shards, others = data_fingerprint(loader.index, loader.urls), data_fingerprint(other.index, other.urls)
    first = agreement_key(shards)
    agreement_key(others)                             # (another dataset's loader leaves this count alone)
    prefix, n = first.rsplit("/", 1)
    assert agreement_key(shards) == f"{prefix}/{int(n) + 1}"
    assert agreement_key(others).rsplit("/", 1)[0] != prefix


def test_a_loader_takes_its_key_at_its_first_pass_in_the_process_that_reads_it(folder, monkeypatch):
    """Built, copied or read with ``world_size=1``, it takes no key; a copy that reached another
    process with a key takes a new one there."""
    import streamaug.loader.rank_agreement as agreement

    taken = []
    monkeypatch.setattr(agreement, "default_store", lambda: dist.HashStore())
    monkeypatch.setattr(agreement.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(agreement.dist, "get_rank", lambda: 0)
    monkeypatch.setattr(agreement, "compare_with_first", lambda store, key, rank, mine: taken.append(key))
    alone = StreamLoader(folder, batch_size=8, world_size=1, rank=0)
    next(iter(alone))
    assert taken == [] and alone._agreement == (None, None, None)
    loader = StreamLoader(folder, batch_size=8, world_size=2, rank=0)
    next(iter(loader))
    next(iter(loader))                                # (checked once per process and topology)
    assert len(taken) == 1 and loader._agreement[0] == os.getpid()
    loader._agreement = (-1, *loader._agreement[1:])  # as a copy that took its key in another process
    next(iter(loader))
    assert len(taken) == 2 and taken[1] != taken[0]
    off = StreamLoader(folder, batch_size=8, world_size=2, rank=0, check_ranks=False)
    next(iter(off))
    assert len(taken) == 2
    monkeypatch.setattr(agreement.dist, "get_world_size", lambda: 4)
    subgroup = StreamLoader(folder, batch_size=8, world_size=2, rank=0)     # a subgroup of 2 in a group of 4
    next(iter(subgroup))
    assert len(taken) == 2
    with pytest.raises(ValueError, match="check_ranks must be True or False, got 'no'"):
        StreamLoader(folder, batch_size=8, check_ranks="no")


def job(folder, out, *flags, check=False):
    os.makedirs(out, exist_ok=True)
    return run_torchrun([SCRIPT, folder, out, *flags], nproc=2, timeout=180, check=check)


def ranks_read(out) -> list[dict]:
    return [json.load(open(os.path.join(out, f"rank{r}.json"))) for r in range(2)]


@pytest.mark.slow
@pytest.mark.parametrize("flags, named", [(["--seed-per-rank"], "seed: rank "),
                                          (["--shuffle-rank0-only"], "shuffled: rank "),
                                          (["--rank-zero-everywhere"], "was given rank=0, which process rank ")],
                         ids=["seed+rank", "shuffle-rank0", "rank0-twice"])
def test_torchrun_ranks_that_plan_apart_fail_naming_what_differs(folder, tmp_path, flags, named):
    # (rank 0 first reads a loader of its own over the same shards, with world_size=1, and a
    # shuffled one over other shards: the count that matches loaders across ranks stays aligned)
    other = str(tmp_path / "other")
    make_shards(other, n=20, maxcount=16)
    proc = job(folder, str(tmp_path / "out"), *flags, "--rank0-loaders", other)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert named in text, text[-3000:]


@pytest.mark.slow
def test_torchrun_seed_plus_rank_with_the_check_off_overlaps_and_misses_samples(folder, tmp_path):
    out = str(tmp_path / "out")
    job(folder, out, "--seed-per-rank", "--no-check", check=True)
    keys = [set(r["keys"][0]) for r in ranks_read(out)]
    assert len(keys[0]) == len(keys[1]) == 30 and keys[0] & keys[1] and len(keys[0] | keys[1]) < 60


@pytest.mark.slow
def test_torchrun_loaders_built_per_epoch_read_disjoint_complete_slices_beside_rank0_only_loaders(folder, tmp_path):
    # a loader per epoch (seed 7 + epoch on every rank), after rank 0 read loaders of its own that
    # no other rank reads: nothing waits for them, and each epoch's loaders are matched
    other, out = str(tmp_path / "other"), str(tmp_path / "out")
    make_shards(other, n=20, maxcount=16)
    job(folder, out, "--rank0-loaders", other, "--epochs", "2", check=True)
    ranks = ranks_read(out)
    for epoch in range(2):
        keys = [set(r["keys"][epoch]) for r in ranks]
        assert not keys[0] & keys[1] and len(keys[0] | keys[1]) == 60
    assert not any("StreamLoader on rank" in w for r in ranks for w in r["warnings"])


@pytest.mark.slow
def test_torchrun_seed_apart_without_shuffling_runs_and_warns(folder, tmp_path):
    out = str(tmp_path / "out")
    job(folder, out, "--seed-per-rank", "--shuffle", "0", check=True)
    ranks = ranks_read(out)
    assert len(set(ranks[0]["keys"][0]) | set(ranks[1]["keys"][0])) == 60
    told = [w for r in ranks for w in r["warnings"] if "read one plan" in w]
    assert len(told) == 1 and "seed: rank " in told[0]
