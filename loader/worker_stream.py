"""The part of the loader that runs in each DataLoader worker (or in-process).

Stages, in order: read shard segments → seeded shuffle buffer (on raw bytes, so
the buffer holds compressed data) → fast-forward when resuming → decode → cut into
batches (see ``batch_cutting``; → balance → augment → mixup, when they run in the
workers: see ``worker_stages``).
Each batch is a :class:`~streamaug.core.BatchInFlight` carrying the worker's
error/padding counts since its previous batch, so the main process can keep
``loader.stats`` exact.

There is one stream with two sources of work:

* **planned** (an index): each worker reads the segments its :class:`WorkerPlan`
  names and cuts exactly the planned batch sizes, each from exactly its planned
  samples, a lost one replaced in place by a repeat, so every rank yields the same
  number of batches and a resume is exact;
* **open** (``index=False``): shards are dealt round-robin to ranks, then to
  workers (webdataset's split), and cut into ``batch_size`` batches, each worker's last
  one partial (dropped with ``drop_last``, as DataLoader's workers do). Nothing is known
  up front.

In both, shard order is shuffled per epoch whenever ``shuffle >= 1`` and the buffer
shuffles samples when ``shuffle > 1``.
"""
from __future__ import annotations

import itertools
import os
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import IterableDataset, get_worker_info
from webdataset.filters import shuffle as wds_shuffle

from streamaug.core.flight import BatchInFlight
from streamaug.core.seeding import derive_seed

from .epoch_plan import EpochPlan, PlanSpec, Segment, shard_permutation
from .batch_cutting import batch_stage, decode_stage
from .errors import LOST, ErrorHandler, LoaderStats, StreamError, WorkerCounts, WorkerFailure
from .image_size import ImageSizesVary
from .sample_decoder import SampleDecoder
from .tar_reader import read_segments, whole_shard
from .worker_stages import WorkerStages


@dataclass
class StreamSettings:
    shuffle_buffer: int
    seed: int
    on_error: str
    decoder: SampleDecoder


@dataclass(frozen=True)
class WorkerJob:
    """What one worker does in one pass."""
    worker: int
    segments: tuple[Segment, ...]
    sizes: tuple[int, ...] | None        # real rows per batch; None: ``batch_size`` until the input ends
    batch_ids: Iterable[int]
    skip: int                            # raw samples to pass over first (a resume)


def shuffle_stage(samples: Iterator[dict], bufsize: int, seed: int) -> Iterator[dict]:
    """webdataset's buffer shuffle with an owned, derived RNG (never the global one)."""
    if bufsize <= 1:
        return samples
    return wds_shuffle(bufsize=bufsize, initial=bufsize, rng=random.Random(seed))(samples)


def past_prefix(raw: Iterator[dict], skip: int, stats: LoaderStats) -> Iterator[dict]:
    """``raw`` after its first ``skip`` samples, which a resume passes over (planned batches take
    exactly their planned count of them, lost ones included: see ``batch_cutting``). What reading
    them counted was counted before the resume, with the batches they went into, so it is dropped."""
    raw = iter(raw)
    if skip:
        for _ in itertools.islice(raw, skip):
            pass
        stats.take()
    yield from raw


class WorkerStream(IterableDataset):
    """Iterable over one rank's batches; each DataLoader worker yields its own.

    Workers persist across epochs: before each pass the loader writes ``(epoch,
    batches already done)`` into a small shared-memory tensor, and every worker
    works out its own job for that epoch (the plan is a pure function), so nothing
    else has to reach the workers.
    """

    def __init__(self, settings: StreamSettings, *, spec: PlanSpec | None = None, urls: list[str] | None = None,
                 batch_size: int = 1, world_size: int = 1, rank: int = 0, stages: WorkerStages | None = None,
                 drop_last: bool = False):
        if (spec is None) == (urls is None):
            raise ValueError("WorkerStream needs a plan spec (an index) or urls (no index), not both")
        self.settings, self.spec, self.urls = settings, spec, urls
        self.batch_size, self.world_size, self.rank = batch_size, world_size, rank
        self.stages = stages             # balance/augment/mixup run here (see worker_stages), or None
        self.drop_last = drop_last       # open (no index): each worker drops its last partial batch
        self.control = torch.zeros(2, dtype=torch.int64).share_memory_()
        self._control_pid = os.getpid()  # a forked child's copy takes its own before it sets a position
        self._plans: dict[int, EpochPlan] = {}

    def set_position(self, epoch: int, resume_batches: int) -> None:
        if os.getpid() != self._control_pid:       # the parent's workers read the inherited one
            self.control, self._control_pid = self.control.clone().share_memory_(), os.getpid()
        self.control[0], self.control[1] = epoch, resume_batches

    def plan(self, epoch: int) -> EpochPlan | None:
        if self.spec is None:
            return None
        if epoch not in self._plans:
            self._plans = {epoch: self.spec.plan(epoch)}
        return self._plans[epoch]

    def jobs(self, epoch: int, resume: int, worker: int | None, num_workers: int) -> list[WorkerJob]:
        """The jobs of ``worker`` (all of them in-process, ``worker=None``) for a pass resumed at ``resume``."""
        plan = self.plan(epoch)
        if plan is None:
            k = max(1, num_workers)
            order = shard_permutation(len(self.urls), self.settings.seed, epoch, self.settings.shuffle_buffer > 0)
            mine = [self.urls[i] for i in order][self.rank::self.world_size]
            return [WorkerJob(w, tuple(whole_shard(u) for u in mine[w::k]), None, itertools.count(w, k), 0)
                    for w in ([worker] if worker is not None else range(k))]
        if worker is not None and num_workers != plan.num_workers:
            raise RuntimeError(f"planned for {plan.num_workers} workers, DataLoader has {num_workers}")
        # DataLoader reads its workers round-robin starting at worker 0, but after a
        # resume at batch b the next batch belongs to plan worker b % K: rotate.
        chosen = [(worker + resume) % plan.num_workers] if worker is not None else range(plan.num_workers)
        out = []
        for w in chosen:
            wp = plan.workers[w]
            first = plan.worker_batches_before(w, resume)
            out.append(WorkerJob(w, wp.segments, wp.real_sizes[first:], wp.batch_ids[first:],
                                 sum(wp.real_sizes[:first])))
        return out

    def __iter__(self) -> Iterator[BatchInFlight]:
        epoch, resume = (int(v) for v in self.control.tolist())
        info = get_worker_info()
        worker, k = (info.id, info.num_workers) if info is not None else (None, 1)
        try:
            for job in self.jobs(epoch, resume, worker, k):
                yield from self._run(job, epoch)
        except (StreamError, ImageSizesVary) as e:
            if info is None:
                raise
            yield WorkerFailure(e)        # re-raised as itself in the main process

    def _run(self, job: WorkerJob, epoch: int) -> Iterator[BatchInFlight]:
        st = self.settings
        stats = LoaderStats()
        handle = ErrorHandler(st.on_error, stats)
        raw = read_segments(job.segments, handle, st.decoder.limits, st.decoder.label_or_none,
                            keep_places=job.sizes is not None)        # planned: a lost sample keeps its place
        raw = shuffle_stage(raw, st.shuffle_buffer, derive_seed(st.seed, "buffer", epoch, self.rank, job.worker))
        raw = past_prefix(raw, job.skip, stats)         # fast-forward on raw bytes: nothing is decoded
        samples = decode_stage(raw, st.decoder, handle)
        batches = batch_stage(samples, job.sizes, job.batch_ids, self.batch_size, stats, st.decoder.sizes, handle,
                              sorted({seg.url for seg in job.segments}), self.donors, self.drop_last)
        if self.stages is not None and get_worker_info() is not None:
            batches = self.stages(batches, epoch, self.plan(epoch))
        yield from batches
        left = stats.take()                 # (only when no batch was cut: it would have carried them)
        resumed_past_all = job.sizes is not None and not job.sizes and job.skip > 0
        if (left["skipped"] or left["kept"] or left["padded"]) and not resumed_past_all:
            yield WorkerCounts(left)        # (else its last batch had them)

    def first_shapes(self, limit: int = 64) -> list[tuple[int, ...]]:
        """Image shapes of the dataset's first ``limit`` good samples, in index order."""
        return [s["shape"] for s in itertools.islice((s for s in self.donors() if s is not LOST), limit)]

    def donors(self) -> Iterator:
        """Decoded samples of every shard, in index order, to pad a batch with no good sample
        (errors not counted: each shard's own reader counts them)."""
        st = self.settings
        urls = self.spec.index.urls if self.spec is not None else self.urls
        quiet = ErrorHandler("skip", LoaderStats())
        raw = read_segments([whole_shard(u) for u in urls], quiet, st.decoder.limits)
        return decode_stage(raw, st.decoder, quiet)
