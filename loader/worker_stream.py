"""The part of the loader that runs in each DataLoader worker (or in-process).

Stages, in order: read shard segments → seeded shuffle buffer (on raw bytes, so
the buffer holds compressed data) → fast-forward when resuming → decode → cut into
batches (→ balance → augment → mixup, when they run in the workers: see ``worker_stages``).
Each batch is a :class:`~streamaug.core.BatchInFlight` carrying the worker's
error/padding counts since its previous batch, so the main process can keep
``loader.stats`` exact.

There is one stream with two sources of work:

* **planned** (an index): each worker reads the segments its :class:`WorkerPlan`
  names and cuts exactly the planned batch sizes, padding with repeats if input
  runs short, so every rank yields the same number of batches;
* **open** (``index=False``): shards are dealt round-robin to ranks, then to
  workers (webdataset's split), and cut into ``batch_size`` batches, the last one
  partial. Nothing is known up front.

In both, shard order is shuffled per epoch whenever ``shuffle >= 1`` and the buffer
shuffles samples when ``shuffle > 1``.
"""
from __future__ import annotations

import functools
import itertools
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import IterableDataset, get_worker_info
from webdataset.filters import shuffle as wds_shuffle

from streamaug.core.flight import BatchInFlight
from streamaug.core.seeding import derive_seed

from .epoch_plan import EpochPlan, PlanSpec, Segment, shard_permutation
from .errors import ErrorHandler, LoaderStats, StreamError, WorkerCounts, WorkerFailure, add_counts
from .image_size import ImageSizeRule
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


def decode_stage(raw: Iterator[dict], decoder: SampleDecoder, handle: ErrorHandler) -> Iterator[dict]:
    for sample in raw:
        try:
            yield decoder(sample)
        except StreamError as e:
            handle(e)


def collate_rows(rows: list[dict], batch_id: int, stats: dict, shape: tuple[int, int, int] | None) -> BatchInFlight:
    """Decoded samples → one batch: uint8 NCHW images (one copy) and host labels and masks.
    With ``decode="dali"`` the images stay encoded; with no rows (a batch the balancer
    fills entirely) images are ``(0, C, H, W)`` when the shape is known."""
    empty = (0, shape[2], shape[0], shape[1]) if shape else (0,)
    encoded = None
    if rows and rows[0]["image"] is None:
        images, encoded = torch.empty(empty, dtype=torch.uint8), [r["encoded"] for r in rows]
    elif rows:                          # HWC rows copied straight into the NCHW batch
        h, w, c = rows[0]["image"].shape
        images = torch.empty((len(rows), c, h, w), dtype=torch.uint8)
        out = images.numpy()
        for i, r in enumerate(rows):
            if r["image"].shape != (h, w, c):   # the size rule keeps this from happening; copy_ would broadcast
                raise ValueError(f"{r['__url__']}: key {r['__key__']!r} decoded to {r['image'].shape}, "
                                 f"the batch's first row to {(h, w, c)}")
            out[i] = r["image"].transpose(2, 0, 1)
    else:
        images = torch.empty(empty, dtype=torch.uint8)
    return BatchInFlight(images=images, labels=torch.tensor([r["label"] for r in rows], dtype=torch.int64),
                         keys=[r["__key__"] for r in rows], urls=[r["__url__"] for r in rows],
                         is_padding=torch.tensor([r["is_padding"] for r in rows], dtype=torch.bool),
                         batch_id=batch_id, stats=stats, encoded=encoded)


def past_prefix(raw: Iterator[dict], skip: int, stats: LoaderStats) -> Iterator[dict]:
    """``raw`` after its first ``skip`` samples, which a resume passes over. What reading them
    counted was counted before the resume, with the batches they went into, so it is dropped."""
    raw = iter(raw)
    if skip:
        for _ in itertools.islice(raw, skip):
            pass
        stats.take()
    yield from raw


def borrow_padding(donors: Callable[[], Iterator[dict]] | None, job: WorkerJob, sizes: ImageSizeRule,
                   stats: LoaderStats, limit: int = 64) -> list[dict]:
    """Samples to pad a share whose every sample was skipped, so the planned batches (and the
    rank's length) are still met: the first good samples of the dataset's other shards, read
    in index order. Their own errors are not counted (their shard's reader counts those). The
    share's shards are named in ``stats.examples["no_samples"]``. With no good sample anywhere,
    :class:`StreamError` ``no_samples`` names the share's shards."""
    own = sorted({seg.url for seg in job.segments})
    found: list[dict] = []
    for s in donors() if donors is not None else ():
        if sizes.shape is None or sizes.fits(s, None):
            found.append(dict(s, is_padding=True))
            if len(found) == limit:
                break
    if not found:
        raise StreamError("no_samples", f"every sample of this worker's share (shards {own}) was skipped, "
                          "and no other shard has a good sample to pad its planned batches with",
                          shard=own[0] if own else None, value=len(own))
    stats.examples.setdefault("no_samples", f"every sample of shards {own} was skipped; their planned batches "
                              f"are padding (repeats of samples from {found[0]['__url__']!r})")
    return found


def batch_stage(samples: Iterator[dict], job: WorkerJob, batch_size: int, stats: LoaderStats,
                sizes: ImageSizeRule, handle: ErrorHandler,
                donors: Callable[[], Iterator[dict]] | None = None) -> Iterator[BatchInFlight]:
    """Cut the decoded stream into the job's batches.

    Planned sizes are met exactly: samples lost to skipped errors are replaced by
    repeats of earlier good ones (flagged ``is_padding``). Open-ended batches are
    ``batch_size`` until the input ends; the last is partial. Image sizes follow
    ``sizes`` (see :class:`ImageSizeRule`): a row of another size is an error, raised
    or counted and replaced. Each batch is held until the next one is cut, so errors
    found after the last row (a truncated tail, a failed ``pipe:``) travel with the
    last batch instead of being lost. A share with no good sample at all is padded from
    ``donors`` (see :func:`borrow_padding`).
    """
    open_ended = job.sizes is None
    plan = itertools.repeat(batch_size) if open_ended else job.sizes
    spare: list[dict] = []
    fills = 0
    held: BatchInFlight | None = None
    for size, batch_id in zip(plan, job.batch_ids):
        rows: list[dict] = []
        while len(rows) < size:
            s = next(samples, None)
            if s is None:
                if open_ended:
                    break
                if not spare:
                    spare = borrow_padding(donors, job, sizes, stats)
                s = dict(spare[fills % len(spare)], is_padding=True)
                fills += 1
            if sizes.shape is not None and not sizes.fits(s, handle):
                continue
            rows.append(s)
            if len(spare) < 64 and not s["is_padding"]:
                spare.append(s)
            if sizes.shape is None and len(rows) == size:      # the first batch sets the shape
                rows = sizes.keep_matching(rows, handle)
                spare = [r for r in spare if sizes.fits(r, None)]
        if rows and sizes.shape is None:                       # a first batch cut short by the input's end
            rows = sizes.keep_matching(rows, handle)
        if not rows and open_ended:      # the input ended (a planned batch may have no real row: the
            break                        # balancer fills it; planned batches are never short)
        if held is not None:
            yield held
        held = collate_rows(rows, batch_id, stats.take(), sizes.shape)
        if len(rows) < size:
            break
    if not open_ended:
        for _ in samples:          # nothing planned is left; this reads shards listed as empty, to check them
            pass
    if held is not None:
        add_counts(held.stats, stats.take())
        yield held


class WorkerStream(IterableDataset):
    """Iterable over one rank's batches; each DataLoader worker yields its own.

    Workers persist across epochs: before each pass the loader writes ``(epoch,
    batches already done)`` into a small shared-memory tensor, and every worker
    works out its own job for that epoch (the plan is a pure function), so nothing
    else has to reach the workers.
    """

    def __init__(self, settings: StreamSettings, *, spec: PlanSpec | None = None, urls: list[str] | None = None,
                 batch_size: int = 1, world_size: int = 1, rank: int = 0, stages: WorkerStages | None = None):
        if (spec is None) == (urls is None):
            raise ValueError("WorkerStream needs a plan spec (an index) or urls (no index), not both")
        self.settings, self.spec, self.urls = settings, spec, urls
        self.batch_size, self.world_size, self.rank = batch_size, world_size, rank
        self.stages = stages             # balance/augment/mixup run here (see worker_stages), or None
        self.control = torch.zeros(2, dtype=torch.int64).share_memory_()
        self._plans: dict[int, EpochPlan] = {}

    def set_position(self, epoch: int, resume_batches: int) -> None:
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
        except StreamError as e:
            if info is None:
                raise
            yield WorkerFailure(e)        # re-raised as itself in the main process

    def _run(self, job: WorkerJob, epoch: int) -> Iterator[BatchInFlight]:
        st = self.settings
        stats = LoaderStats()
        handle = ErrorHandler(st.on_error, stats)
        raw = read_segments(job.segments, handle, st.decoder.limits, st.decoder.label_or_none)
        raw = shuffle_stage(raw, st.shuffle_buffer, derive_seed(st.seed, "buffer", epoch, self.rank, job.worker))
        raw = past_prefix(raw, job.skip, stats)         # fast-forward on raw bytes: nothing is decoded
        samples = decode_stage(raw, st.decoder, handle)
        batches = batch_stage(samples, job, self.batch_size, stats, st.decoder.sizes, handle,
                              functools.partial(self._donors, job))
        if self.stages is not None and get_worker_info() is not None:
            batches = self.stages(batches, epoch, self.plan(epoch))
        yield from batches
        left = stats.take()                 # (only when no batch was cut: it would have carried them)
        resumed_past_all = job.sizes is not None and not job.sizes and job.skip > 0
        if (left["skipped"] or left["padded"]) and not resumed_past_all:   # (else its last batch had them)
            yield WorkerCounts(left)

    def _donors(self, job: WorkerJob) -> Iterator[dict]:
        """Decoded good samples of the shards outside ``job``, in index order (errors not counted)."""
        st = self.settings
        own = {seg.url for seg in job.segments}
        urls = self.spec.index.urls if self.spec is not None else self.urls
        quiet = ErrorHandler("skip", LoaderStats())
        raw = read_segments([whole_shard(u) for u in urls if u not in own], quiet, st.decoder.limits)
        return decode_stage(raw, st.decoder, quiet)
