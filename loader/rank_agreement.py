"""The check, at a loader's first pass on several ranks, that every rank plans the same epoch.

Each rank reads its own slice of one epoch plan, and the plan depends on the seed (with
shuffling), the batch size, the number of reading workers, ``shuffle``, ``drop_last``, the
world size, the shards and a balancer's targets. A rank that differs in any of them (a
script that passes ``seed=args.seed + rank``, as timm seeds each rank) reads a slice of
another plan: ranks overlap, samples are missed, and epochs can differ in length, which
hangs a DDP job at the epoch's end. Nothing else shows it.

A collective would hang a job that iterates a loader on one rank only (a validation loop on
rank 0), so the check waits for no one. It uses the process group's key-value store: the
first rank to arrive stores its fingerprint (``loader_state.fingerprint``, the one a saved
state carries) with ``compare_set``, and every rank compares its own with the one stored.
A rank whose plan differs raises, naming each field, its value there and on the rank that
arrived first; torchrun then ends the job. Fields that change only the pixels or the
synthetic samples (augment and mixup settings, resize, decode; the seed without shuffling)
are warned about once: the job runs, but a state saved on one rank will not resume the other.

Loaders are matched across ranks by their shards, whether they shuffle, and the order in which
each process built such loaders. Without ``torch.distributed``, on one rank, or where the store cannot
``compare_set``, nothing is checked.
"""
from __future__ import annotations

import collections
import hashlib
import itertools
import json
import os
import warnings

import torch.distributed as dist

from .loader_state import data_fingerprint, fingerprint
from .pass_position import caller_stacklevel

# what each rank's slice of the epoch plan depends on (``seed`` only with shuffling)
PLAN_FIELDS = ("shards", "batch_size", "read_workers", "shuffle", "drop_last", "world_size", "balance_targets",
               "rank_slices")
SHOWN = {"read_workers": "num_workers"}      # the constructor's names
_built = collections.defaultdict(itertools.count)     # loaders this process built, per shards


def agreement_key(loader) -> str:
    """The store key that names this loader on every rank: its shards, whether it shuffles (a
    training loader and an evaluation loader over the same shards are not compared), and its
    place among such loaders this process built (a loader over other shards, built on rank 0
    only, leaves the count alone)."""
    data = hashlib.blake2b(data_fingerprint(loader.index, loader.urls).encode(), digest_size=8).hexdigest()
    kind = f"{data}/{'shuffled' if loader.shuffle else 'in-order'}"
    return f"streamaug/plan/{kind}/{next(_built[kind])}"


def default_store():
    """The default process group's store, or ``None`` (no group, or a torch without the call)."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    get = getattr(dist.distributed_c10d, "_get_default_store", None)
    try:
        return None if get is None else get()
    except (RuntimeError, ValueError):
        return None


def job_key(key: str) -> str:
    """``key`` within this world and this torchrun attempt: an elastic job restarted with fewer
    nodes may find the keys of the attempt before it in the same store."""
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return f"{key}/world{dist.get_world_size()}/attempt{restart}"


def disagreements(first: dict, mine: dict) -> tuple[list[str], list[str]]:
    """``(fields that change the plan, other fields)`` where two fingerprints differ."""
    plan = PLAN_FIELDS + (("seed",) if mine.get("shuffle") or first.get("shuffle") else ())
    differ = sorted(k for k in set(first) | set(mine) if first.get(k) != mine.get(k))
    return [k for k in differ if k in plan], [k for k in differ if k not in plan]


def compare_with_first(store, key: str, rank: int, mine: dict) -> None:
    """Store ``mine`` under ``key`` unless a rank did first; compare with what is stored."""
    try:
        stored = store.compare_set(key, "", json.dumps({"rank": rank, "fingerprint": mine}, sort_keys=True))
    except (RuntimeError, NotImplementedError, AttributeError):     # a store without compare_set
        return
    first = json.loads(stored)
    if first["rank"] == rank:
        return
    plan, other = disagreements(first["fingerprint"], mine)
    if not plan and not other:
        return
    other_rank, theirs = first["rank"], first["fingerprint"]
    shown = "; ".join(f"{SHOWN.get(k, k)}: rank {other_rank} {theirs.get(k)!r}, rank {rank} {mine.get(k)!r}"
                      for k in plan + other)
    if plan:
        raise RuntimeError(
            f"StreamLoader on rank {rank} plans another epoch than rank {other_rank}: {shown}. Every rank reads "
            f"its slice of one plan, so ranks would overlap and miss samples (and epochs can differ in "
            f"length); pass the same values on every rank (seed= too: seed each rank's own RNGs "
            f"apart, not the loader's)")
    warnings.warn(f"StreamLoader on rank {rank} is configured differently from rank {other_rank}: {shown}. "
                  f"The ranks read one plan, but their batches differ in these ways, and a state saved on "
                  f"one of them will not resume the other", RuntimeWarning, stacklevel=caller_stacklevel())


def check_ranks_agree(loader) -> None:
    """At a pass, once per topology: refuse a plan that differs from the first rank's (see the module)."""
    topology = loader._topology
    if getattr(loader, "_agreed_topology", None) == topology or loader.world_size <= 1:
        return
    store = default_store()
    if store is not None:
        mine = json.loads(json.dumps(fingerprint(loader), default=str))   # (as stored: tuples become lists)
        compare_with_first(store, job_key(loader._agreement_key), dist.get_rank(), mine)
    loader._agreed_topology = topology
