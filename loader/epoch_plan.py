"""Plan one epoch from the shard index: which rank and worker reads which sample
ranges, and how every batch is made up.

The plan is a pure function of ``(index, seed, epoch, world_size, rank,
num_workers, batch_size, drop_last, synthetic slots)``. Each DataLoader worker
and the main process compute it independently and agree, so nothing has to be
communicated, and a resume only needs ``(epoch, batches already yielded)``.

How an epoch is laid out
------------------------
1. Shard order is shuffled with a seed derived from ``(seed, epoch)``; the
   concatenated shards form one global sample order. Shuffled, on several ranks, that
   order starts at a position drawn from ``(seed, epoch)`` and wraps round
   (:func:`rank_rotation`), so the ranks' slices move every epoch: with one shard, or a
   few large ones, a rank read the same samples every epoch (as ``DistributedSampler``
   does not).
2. Each rank yields ``ceil(N / W)`` samples (``floor`` with ``drop_last``) and
   reads a contiguous slice of the global order. A rank whose slice is short of
   that, or whose share of synthetic samples is one short of the largest, is
   padded by wrapping round the global order (flagged ``is_padding``, counted
   as ``padded``). Without a balancer the slices are cut so that padding falls
   only in the ranks' last batches, after their real rows, and in rank order:
   every rank's earlier batches are whole and real, and the last batches,
   gathered rank after rank, hold the real rows first (``EpochPlan.gathered_real``
   of them). That is where accelerate's ``gather_for_metrics`` trims the
   duplicates of its own loaders (see ``accelerate_pass``).
   Slices are at sample granularity, so fewer shards than ranks × workers is
   fine: a shard is then read by several consumers, each skipping to its part.
3. The rank's output batches are numbered ``0..T-1``; batch ``j`` belongs to
   worker ``j % K``, which is the order in which ``torch.utils.data.DataLoader``
   reads an ``IterableDataset``'s workers. Every rank has the same ``T``.
4. A balancer may reserve synthetic slots: batch ``j`` then carries
   ``synthetic[j]`` made-up samples and ``B - synthetic[j]`` real ones.
5. Shuffled, each worker reads a contiguous run of the rank's real samples, enough
   for its batches, so shards are streamed, not seeked. Without shuffling, batch
   ``j`` holds the rank's samples in order (``DataLoader(shuffle=False)``'s order,
   for any number of workers): each worker reads the runs of its own batches and
   passes over the other workers' samples undecoded, in the same pass over a shard.
"""
from __future__ import annotations

import bisect
import itertools
import math
from dataclasses import dataclass

import numpy as np

from streamaug.core.seeding import numpy_generator

from .shard_index import ShardIndex


@dataclass(frozen=True)
class Segment:
    """Samples ``[start, stop)`` of shard ``url`` (in its stored order)."""
    url: str
    start: int
    stop: int
    shard_count: int
    padding: bool = False            # a wrap-around re-read that fills the plan
    class_counts: tuple[int, ...] | None = None    # the index's, checked by the reader of the shard's end

    @property
    def size(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class WorkerPlan:
    worker: int
    batch_ids: tuple[int, ...]       # rank-level batch numbers, increasing
    real_sizes: tuple[int, ...]      # real samples in each of those batches
    segments: tuple[Segment, ...]    # what to read, in order
    padded: int                      # samples repeated to fill the plan (wrap-around)

    @property
    def real_total(self) -> int:
        return sum(self.real_sizes)


@dataclass(frozen=True)
class EpochPlan:
    epoch: int
    rank: int
    world_size: int
    num_workers: int
    batch_size: int
    num_batches: int
    synthetic: tuple[int, ...]       # synthetic samples per batch (zeros without a balancer)
    workers: tuple[WorkerPlan, ...]
    shard_order: tuple[str, ...]
    # real rows among the ranks' last batches gathered in rank order, which come before any
    # padding there (every earlier batch is real): 0 when nothing is padded, -1 when padding
    # may sit elsewhere (a shuffle buffer mixes it in, or a balancer's short share; the loader sends
    # accelerate -1 with any balancer, which shuffles each batch's rows)
    gathered_real: int = -1

    def worker_batches_before(self, worker: int, batches_done: int) -> int:
        """How many of ``worker``'s batches are among the first ``batches_done`` of the rank."""
        return max(0, (batches_done - worker + self.num_workers - 1) // self.num_workers)


def rank_share(total: int, world_size: int, drop_last: bool) -> int:
    return total // world_size if drop_last else math.ceil(total / world_size)


def rank_slice(total: int, world_size: int, rank: int, batch_size: int, drop_last: bool,
               balanced: bool) -> tuple[int, int, int]:
    """``(start, real, tail)``: ``rank``'s slice is global positions ``[start, start + real)``;
    ``tail`` is how many real rows the ranks' last batches hold together (-1 if not planned).

    Each rank yields ``rank_share`` samples. Plain slices of that size put all the padding on
    the last ranks, where it can fill whole batches before their last (10 samples, 4 ranks,
    batches of 2: the last rank reads 1 and pads 2, one of them in its first batch). Without
    a balancer, every rank's batches before its last are filled first, and the remaining real
    samples go to the last batches in rank order, so padding sits only at the end of the last
    batches, as accelerate's own loaders place it. With ``drop_last`` nothing is padded."""
    share = rank_share(total, world_size, drop_last)
    if drop_last or balanced:
        start = rank * share
        return start, max(0, min(share, total - start)), -1
    head = (math.ceil(share / batch_size) - 1) * batch_size     # the rows of each rank's earlier batches
    last = share - head                                         # each rank's last batch (1..batch_size rows)
    tail = total - world_size * head                            # real rows left for the last batches: >= 1
    return rank * head + min(rank * last, tail), head + min(last, max(0, tail - rank * last)), tail


def slices_rotate(world_size: int, shuffle: bool) -> bool:
    """Whether the ranks' slices move every epoch: shuffled, on several ranks (unshuffled, the
    order is the dataset's, and the padding is placed for ``gather_for_metrics``)."""
    return world_size > 1 and bool(shuffle)


def rank_rotation(total: int, seed: int, epoch: int, world_size: int, shuffle: bool) -> int:
    """Where the epoch's global order starts: a position drawn from ``(seed, epoch)`` where
    :func:`slices_rotate`, else 0."""
    if not slices_rotate(world_size, shuffle):
        return 0
    return int(numpy_generator(seed, "rank rotation", epoch).integers(total))


def _rotated(ranges: list[tuple[int, int, bool]], rotation: int, total: int) -> list[tuple[int, int, bool]]:
    """Global ranges moved by ``rotation`` round the order, split where they wrap."""
    out = []
    for lo, hi, padding in ranges:
        lo, hi = lo + rotation, hi + rotation
        if lo >= total:
            lo, hi = lo - total, hi - total
        out += [(lo, min(hi, total), padding)] + ([(0, hi - total, padding)] if hi > total else [])
    return out


def shard_permutation(n: int, seed: int, epoch: int, shuffle: bool) -> list[int]:
    """The epoch's shard order (identity without ``shuffle``); the same with and without an index."""
    order = np.arange(n)
    if shuffle:
        order = numpy_generator(seed, "shards", epoch).permutation(order)
    return order.tolist()


def shard_order(index: ShardIndex, seed: int, epoch: int, shuffle: bool) -> list[int]:
    return shard_permutation(len(index.shards), seed, epoch, shuffle)


def _segments(index: ShardIndex, order: list[int], ranges: list[tuple[int, int, bool]]) -> list[Segment]:
    """Global-order position ranges ``(lo, hi, padding)`` → shard segments."""
    shards = [index.shards[i] for i in order]
    ends = np.cumsum([s.count for s in shards]).tolist()
    out: list[Segment] = []
    for lo, hi, padding in ranges:
        i = bisect.bisect_left(ends, lo)            # the first shard that ends at or after lo
        while i < len(shards):
            s = shards[i]
            offset = ends[i] - s.count
            if offset > hi:
                break
            a, b = max(lo, offset), min(hi, offset + s.count)
            if a < b:
                out.append(Segment(s.url, a - offset, b - offset, s.count, padding, s.class_counts))
            elif s.count == 0 and not padding and (lo <= offset < hi or offset == hi == index.total):
                out.append(Segment(s.url, 0, 0, 0, False, s.class_counts))   # read to check it is empty
            i += 1
    return out


def _merged(pieces: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Increasing position ranges with the adjacent ones joined (empty ones dropped)."""
    out: list[tuple[int, int]] = []
    for a, b in pieces:
        if a >= b:
            continue
        if out and out[-1][1] == a:
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def _rank_ranges(total: int, rank_start: int, rank_real: int, p0: int, p1: int) -> tuple[list, int]:
    """Rank positions [p0, p1) → global ranges. Positions past the rank's ``rank_real``
    real samples are padding, read by wrapping round the global order."""
    ranges, padded = [], 0
    a, b = p0, min(p1, rank_real)
    if a < b:
        ranges.append((rank_start + a, rank_start + b, False))
    q, end = max(p0, rank_real) - rank_real, p1 - rank_real
    while q < end:                          # padding: global positions q, q+1, ... modulo total
        g = (rank_start + rank_real + q) % total
        span = min(end - q, total - g)
        ranges.append((g, g + span, True))
        padded += span
        q += span
    return ranges, padded


def plan_epoch(index: ShardIndex, *, seed: int, epoch: int, batch_size: int, world_size: int = 1,
               rank: int = 0, num_workers: int = 0, drop_last: bool = False, shuffle: bool = True,
               synthetic_per_rank: int = 0, synthetic_max: int | None = None) -> EpochPlan:
    """Plan ``rank``'s share of ``epoch``. See the module docstring for the layout.

    ``synthetic_per_rank`` is how many synthetic samples the balancer adds on
    this rank and ``synthetic_max`` the most any rank adds; every rank yields
    ``share + synthetic_max`` samples, padding with real samples where short.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
    if index.total == 0:
        raise ValueError(f"index {index.source!r} lists no samples")
    synthetic_max = synthetic_per_rank if synthetic_max is None else synthetic_max
    if not 0 <= synthetic_per_rank <= synthetic_max:
        raise ValueError(f"synthetic_per_rank must be in [0, synthetic_max={synthetic_max}], got {synthetic_per_rank}")
    k = max(1, num_workers)
    order = shard_order(index, seed, epoch, shuffle)
    total = index.total
    rotation = rank_rotation(total, seed, epoch, world_size, shuffle)
    share = rank_share(total, world_size, drop_last)
    rank_start, rank_real, tail = rank_slice(total, world_size, rank, batch_size, drop_last, synthetic_max > 0)
    total_out = share + synthetic_max
    num_batches = total_out // batch_size if drop_last else math.ceil(total_out / batch_size)
    if num_batches == 0:
        raise ValueError(f"drop_last=True with batch_size={batch_size} leaves no batch: "
                         f"each rank gets only {total_out} samples")
    out_sizes = [batch_size] * num_batches
    if not drop_last:
        out_sizes[-1] = total_out - batch_size * (num_batches - 1)
    # drop_last cuts real and synthetic rows alike, in proportion (cutting only real rows tipped
    # the epoch's class balance: 541 of 541 synthetic rows kept against 959 of 1279 real ones)
    synth_total = round(synthetic_per_rank * sum(out_sizes) / total_out)
    ends = np.cumsum(out_sizes)               # spread in proportion to batch size (the last may be short)
    cum = [round(synth_total * int(e) / int(ends[-1])) for e in ends]
    synthetic = [cum[0]] + [cum[j] - cum[j - 1] for j in range(1, num_batches)]
    real_sizes = [o - s for o, s in zip(out_sizes, synthetic)]

    # rank positions of each batch's real rows: shuffled, a worker reads one contiguous run for all
    # its batches (streamed); in dataset order (no shuffle), the runs of its own batches
    firsts = [0, *itertools.accumulate(real_sizes)]
    workers, cursor = [], 0
    for w in range(k):
        ids = tuple(range(w, num_batches, k))
        sizes = tuple(real_sizes[j] for j in ids)
        n = sum(sizes)
        pieces = [(firsts[j], firsts[j + 1]) for j in ids] if not shuffle else [(cursor, cursor + n)]
        ranges, padded = [], 0
        for p0, p1 in _merged(pieces):
            more, extra = _rank_ranges(total, rank_start, rank_real, p0, p1)
            ranges += _rotated(more, rotation, total)
            padded += extra
        workers.append(WorkerPlan(w, ids, sizes, tuple(_segments(index, order, ranges)), padded))
        cursor += n
    may_pad = synthetic_max > 0 or world_size * share > total    # (a balancer's shares may differ by one)
    gathered_real = 0 if not may_pad else -1 if shuffle or tail < 0 else tail
    return EpochPlan(epoch, rank, world_size, k, batch_size, num_batches, tuple(synthetic),
                     tuple(workers), tuple(index.shards[i].url for i in order), gathered_real)


@dataclass(frozen=True)
class PlanSpec:
    """Everything but the epoch: picklable, so DataLoader workers can plan for themselves."""
    index: ShardIndex
    seed: int
    batch_size: int
    world_size: int
    rank: int
    num_workers: int
    drop_last: bool
    shuffle: bool
    synthetic_per_rank: int = 0
    synthetic_max: int = 0

    def plan(self, epoch: int) -> EpochPlan:
        return plan_epoch(self.index, seed=self.seed, epoch=epoch, batch_size=self.batch_size,
                          world_size=self.world_size, rank=self.rank, num_workers=self.num_workers,
                          drop_last=self.drop_last, shuffle=self.shuffle,
                          synthetic_per_rank=self.synthetic_per_rank, synthetic_max=self.synthetic_max)
