"""The check, at a loader's first pass on several ranks, that every rank plans the same epoch.

Each rank reads its own slice of one epoch plan. Which slice, and how many batches a rank
yields, depend on the shards, the world size, ``batch_size``, ``drop_last``, whether the loader
shuffles, a balancer's targets, the seed (when shuffling), and, without an index, the number
of reading workers. A rank that differs in any of them (a script that passes
``seed=args.seed + rank``, as timm seeds each rank) reads a slice of another plan: ranks
overlap, samples are missed, or epochs differ in length, which hangs a DDP job at the epoch's
end. Nothing else shows it.

A collective would hang a job that iterates a loader on one rank only (a validation loop on
rank 0), so the check waits for no one. It uses the process group's key-value store: the
first rank to start a pass stores its fingerprint (``loader_state.fingerprint``, the one a
saved state carries) with ``compare_set``, and every rank compares its own with the one
stored. A rank whose plan differs raises, naming each field, its value there and on the rank
that arrived first; torchrun then ends the job. Other differences (augment and mixup
settings, the shuffle buffer's size, ``num_workers`` with an index when shuffling, ``resize``, ``decode``;
the seed without shuffling) are warned about once: the job runs, but a state saved on one
rank will not resume the other.

Loaders are matched across ranks by their shards and the order in which each process began
their first passes on several ranks (see :func:`agreement_key`). Two processes given the same
``rank=`` with the process group's world size (``rank=LOCAL_RANK`` on every node) are refused
too: they read one slice, and another is never read. Nothing is checked without
``torch.distributed``, on one rank, where ``world_size=`` names a subgroup's size rather than
the process group's, where the store cannot ``compare_set``, or with ``check_ranks=False``.
"""
from __future__ import annotations

import collections
import hashlib
import itertools
import json
import os
import warnings

import torch.distributed as dist

from .loader_state import fingerprint, indexed, workers_free
from .pass_position import caller_stacklevel

# what each rank's slice of the epoch plan, and its number of batches, depend on: always these; the
# seed when shuffling; the reading workers without an index (each worker's last batch may be short)
PLAN_FIELDS = ("shards", "shuffled", "batch_size", "drop_last", "world_size", "balance_targets", "rank_slices")
SHOWN = {"read_workers": "num_workers"}      # the constructor's names
_counts = collections.defaultdict(itertools.count)     # per shards: loaders whose first pass this process began


def agreement_key(shards: str) -> str:
    """The store key that names a loader on every rank: its shards (``data_fingerprint``) and its
    place among the loaders over them whose first pass on several ranks this process began. A
    loader takes its key at that pass, in the process that reads it (a copy sent to a spawned
    process takes its own), so one built but not read, or read on one rank with
    ``world_size=1``, counts nowhere."""
    data = hashlib.blake2b(shards.encode(), digest_size=8).hexdigest()
    return f"streamaug/plan/{data}/{next(_counts[data])}"


def default_store():
    """The default process group's store, or ``None`` (no group, or a torch without the call)."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    get = getattr(dist.distributed_c10d, "_get_default_store", None)
    try:
        return None if get is None else get()
    except (RuntimeError, ValueError):
        return None


def compare_set(store, key: str, value: str) -> bytes | None:
    """``store.compare_set(key, "", value)``: what the key holds after it (``value`` if it was
    unset); ``None`` where the store has no ``compare_set`` (a user's ``dist.Store`` subclass).
    A failing store (a lost connection, a timeout) raises, as it would in any collective."""
    try:
        return store.compare_set(key, "", value)
    except NotImplementedError:
        return None
    except RuntimeError as e:      # (torch's base Store: "... Not implemented.")
        if isinstance(e, dist.DistError) or "not implemented" not in str(e).lower():
            raise
        return None


def job_key(key: str) -> str:
    """``key`` within this world and this torchrun attempt: an elastic job restarted with fewer
    nodes may find the keys of the attempt before it in the same store."""
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return f"{key}/world{dist.get_world_size()}/attempt{restart}"


def compared(fp: dict) -> dict:
    """A fingerprint with what the check compares added: ``shuffled`` (the buffer's size changes
    the batches, not the slices)."""
    return {**fp, "shuffled": bool(fp.get("shuffle"))}


def disagreements(first: dict, mine: dict) -> tuple[list[str], list[str]]:
    """``(fields that change the ranks' slices or batch counts, other fields)`` where two differ."""
    first, mine = compared(first), compared(mine)
    plan = PLAN_FIELDS + (("seed",) if mine["shuffled"] or first["shuffled"] else ()) \
        + (("read_workers",) if not indexed(mine) else ())
    quiet = {"shuffled"} | ({"read_workers"} if workers_free(first) and workers_free(mine) else set())
    differ = sorted(k for k in set(first) | set(mine) if first.get(k) != mine.get(k))
    return [k for k in differ if k in plan], [k for k in differ if k not in plan and k not in quiet]


def compare_with_first(store, key: str, rank: int, mine: dict) -> None:
    """Store ``mine`` under ``key`` unless a rank did first; compare with what is stored."""
    stored = compare_set(store, key, json.dumps({"rank": rank, "fingerprint": mine}, sort_keys=True))
    if stored is None:
        return
    first = json.loads(stored)
    if first["rank"] == rank:
        return
    plan, other = disagreements(first["fingerprint"], mine)
    if not plan and not other:
        return
    other_rank, theirs, mine = first["rank"], compared(first["fingerprint"]), compared(mine)
    shown = "; ".join(f"{SHOWN.get(k, k)}: rank {other_rank} {theirs.get(k)!r}, rank {rank} {mine.get(k)!r}"
                      for k in plan + other)
    where = f"StreamLoader on rank {rank} differs from the same loader on rank {other_rank} (the first rank to " \
            f"start a pass over it)"
    if plan:
        raise RuntimeError(
            f"{where}, so the ranks would read slices of different epoch plans: {shown}. Ranks would overlap "
            f"and miss samples, or yield different numbers of batches; check these settings on every rank "
            f"(seed= too: seed each rank's own RNGs apart, not the loader's). A loader over these shards "
            f"that some ranks read and others do not (rank 0 alone, say) is matched with the next one the "
            f"others read: give it world_size=1, rank=0. If the ranks are meant to read different epochs, "
            f"pass check_ranks=False (a state saved on one rank then resumes no other: Lightning and "
            f"accelerate save rank 0's)")
    warnings.warn(f"{where}: {shown}. The ranks read one plan, but their batches differ in these ways, and "
                  f"a state saved on one of them will not resume the other", RuntimeWarning,
                  stacklevel=caller_stacklevel())


def claim_rank(store, key: str, loader_rank: int, rank: int) -> None:
    """Refuse a second process that reads the same rank's slice (``rank=LOCAL_RANK`` on every node)."""
    holder = compare_set(store, f"{key}/slice{loader_rank}", str(rank))
    if holder is not None and int(holder) != rank:
        raise RuntimeError(
            f"StreamLoader on process rank {rank} was given rank={loader_rank}, which process rank {int(holder)} "
            f"reads too: with world_size= the process group's ({dist.get_world_size()}), every process must "
            f"read its own rank's slice, or the others' samples are never read. Leave rank= out (the process "
            f"group's is used), or pass each process its global rank")


def check_ranks_agree(loader) -> None:
    """At a pass, once per process and topology: refuse a plan that differs from the first
    rank's, or a rank's slice that two processes read (see the module). Only where the
    loader's world size is the process group's (not a data-parallel subgroup given as
    ``world_size=``/``rank=``)."""
    here = (os.getpid(), loader._topology)
    if not loader.check_ranks or loader.world_size <= 1 or loader._agreement[:2] == here:
        return
    store = default_store()
    if store is None or loader.world_size != dist.get_world_size():
        return
    mine = json.loads(json.dumps(fingerprint(loader), default=str))   # (as stored: tuples become lists)
    key = loader._agreement[2] if loader._agreement[0] == here[0] else agreement_key(mine["shards"])
    loader._agreement = (here[0], None, key)         # (a refused pass is checked again, under the same key)
    compare_with_first(store, job_key(key), dist.get_rank(), mine)
    claim_rank(store, job_key(key), loader.rank, dist.get_rank())
    loader._agreement = (*here, key)
