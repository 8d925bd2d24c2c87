"""Ranks that plan different epochs are refused at the first pass, without a collective.

In process: two ranks' loaders (``world_size=2, rank=r``) compared through a real
``torch.distributed.HashStore``, the way each rank compares with the first to arrive. Under
torchrun (gloo): a job that seeds each rank's loader apart fails on the rank that arrives
second, naming the seed; the same job with one seed reads disjoint, complete slices; a loader
read on rank 0 alone waits for no other rank.
"""
from __future__ import annotations

import json
import os
import warnings

import pytest
import torch.distributed as dist

from shard_factory import make_shards
from streamaug.loader import StreamLoader
from streamaug.loader.loader_state import fingerprint
from streamaug.loader.rank_agreement import agreement_key, compare_with_first, disagreements
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
    ("num_workers", {}, {"num_workers": 1}, "num_workers: rank 0 0, rank 1 1"),
    ("drop_last", {}, {"drop_last": True}, "drop_last: rank 0 False, rank 1 True"),
    ("shuffle", {}, {"shuffle": 10}, "shuffle: rank 0 1000, rank 1 10"),
    ("world_size", {}, {"world_size": 3}, "world_size: rank 0 2, rank 1 3"),
])
def test_a_plan_that_differs_is_refused_naming_the_field_and_both_values(folder, field, first, second, shown):
    with pytest.raises(RuntimeError, match="plans another epoch than rank 0") as err:
        both_ranks(folder, first, second)
    assert shown in str(err.value)


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
    assert not any("plans another epoch" in str(w.message) for w in caught)


def test_the_first_rank_to_arrive_is_the_reference_whichever_it_is(folder):
    store = dist.HashStore()
    compare_with_first(store, "k", 1, rank_print(folder, 1, seed=5))      # rank 1 first
    with pytest.raises(RuntimeError, match="StreamLoader on rank 0 plans another epoch than rank 1: seed: rank 1 5"):
        compare_with_first(store, "k", 0, rank_print(folder, 0))


def test_plan_fields_and_other_fields_are_told_apart():
    plan, other = disagreements({"seed": 1, "shuffle": 0, "resize": None}, {"seed": 2, "shuffle": 0, "resize": [8, 8]})
    assert (plan, other) == ([], ["resize", "seed"])
    plan, other = disagreements({"seed": 1, "shuffle": 5}, {"seed": 2, "shuffle": 5})
    assert (plan, other) == (["seed"], [])


def test_loaders_are_matched_by_shards_and_build_order(folder, tmp_path):
    make_shards(str(tmp_path / "other"), n=20, maxcount=16)
    first = StreamLoader(folder, batch_size=8)._agreement_key
    other = StreamLoader(str(tmp_path / "other"), batch_size=8)._agreement_key   # (built on rank 0 only, say)
    second = StreamLoader(folder, batch_size=8)._agreement_key
    prefix, n = first.rsplit("/", 1)
    assert second == f"{prefix}/{int(n) + 1}"     # (the other dataset's loader left the count alone)
    assert other.rsplit("/", 1)[0] != prefix
    assert agreement_key(StreamLoader(folder, batch_size=8)) == f"{prefix}/{int(n) + 3}"   # (each call counts)
    in_order = StreamLoader(folder, batch_size=8, shuffle=False)._agreement_key      # (an evaluation loader)
    assert in_order.rsplit("/", 2)[0] == prefix.rsplit("/", 1)[0] and in_order.rsplit("/", 1)[0] != prefix


def job(folder, out, *flags, check=False):
    os.makedirs(out, exist_ok=True)
    return run_torchrun([SCRIPT, folder, out, *flags], nproc=2, timeout=180, check=check)


@pytest.mark.slow
def test_torchrun_ranks_seeded_apart_fail_naming_the_seed(folder, tmp_path):
    proc = job(folder, str(tmp_path / "out"), "--seed-per-rank")
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "plans another epoch than rank" in text and "seed: rank " in text, text[-3000:]


@pytest.mark.slow
def test_torchrun_one_seed_reads_disjoint_complete_slices_even_with_a_rank0_only_loader(folder, tmp_path):
    out = str(tmp_path / "out")
    job(folder, out, "--rank0-loader", check=True)     # (rank 0's own loader first: no one waits for it)
    ranks = [json.load(open(os.path.join(out, f"rank{r}.json"))) for r in range(2)]
    keys = [set(r["keys"]) for r in ranks]
    assert not keys[0] & keys[1] and len(keys[0] | keys[1]) == 60
    assert not any("StreamLoader on rank" in w for r in ranks for w in r["warnings"])


@pytest.mark.slow
def test_torchrun_seed_apart_without_shuffling_runs_and_warns(folder, tmp_path):
    out = str(tmp_path / "out")
    job(folder, out, "--seed-per-rank", "--shuffle", "0", check=True)
    ranks = [json.load(open(os.path.join(out, f"rank{r}.json"))) for r in range(2)]
    assert len(set(ranks[0]["keys"]) | set(ranks[1]["keys"])) == 60
    told = [w for r in ranks for w in r["warnings"] if "configured differently" in w]
    assert len(told) == 1 and "seed: rank " in told[0]
