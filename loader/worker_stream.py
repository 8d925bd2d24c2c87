"""The part of the loader that runs in each DataLoader worker (or in-process).

Stages, in order: read planned segments → seeded shuffle buffer (on raw bytes,
so the buffer holds compressed data) → fast-forward when resuming → decode →
assemble uint8 NCHW batches of the planned sizes. Each batch carries the
worker's error/padding counts since the previous batch, so the main process
can keep ``loader.stats`` exact.
"""
from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info
from webdataset.filters import _shuffle

from .epoch_plan import EpochPlan, PlanSpec, WorkerPlan
from .errors import ErrorHandler, LoaderStats, StreamError
from .sample_decoder import SampleDecoder
from .seeding import derive_seed
from .tar_reader import read_segment, read_segments, whole_shard


@dataclass
class StreamSettings:
    shuffle_buffer: int
    seed: int
    on_error: str
    decoder: SampleDecoder


def shuffle_stage(samples: Iterator[dict], bufsize: int, seed: int) -> Iterator[dict]:
    """webdataset's buffer shuffle with an owned, derived RNG (never the global one)."""
    if bufsize <= 1:
        return samples
    return _shuffle(samples, bufsize=bufsize, initial=bufsize, rng=random.Random(seed))


def decode_stage(raw: Iterator[dict], decoder: SampleDecoder, handle: ErrorHandler) -> Iterator[dict]:
    for sample in raw:
        try:
            yield decoder(sample)
        except StreamError as e:
            handle(e)


def collate_uint8(samples: list[dict], empty_shape: tuple[int, ...] = (0,)) -> dict:
    """List of decoded samples → uint8 NCHW images and int64 labels (one copy).
    No samples (a batch the balancer fills entirely) → ``empty_shape`` images."""
    encoded = None
    if samples and samples[0]["image"] is None:          # decode="dali": bytes go to the main process
        images, encoded = torch.empty(empty_shape, dtype=torch.uint8), [s["encoded"] for s in samples]
    elif samples:
        images = torch.from_numpy(np.stack([s["image"] for s in samples])).permute(0, 3, 1, 2).contiguous()
    else:
        images = torch.empty(empty_shape, dtype=torch.uint8)
    return {"images": images,
            "labels": torch.tensor([s["label"] for s in samples], dtype=torch.int64),
            "keys": [s["__key__"] for s in samples],
            "urls": [s["__url__"] for s in samples],
            "is_padding": torch.tensor([s["is_padding"] for s in samples], dtype=torch.bool),
            **({"encoded": encoded} if encoded is not None else {})}


def batch_stage(samples: Iterator[dict], wp: WorkerPlan, first: int, handle: ErrorHandler,
                stats: LoaderStats, decoder_shape: tuple[int, int, int] | None = None) -> Iterator[dict]:
    """Cut the decoded stream into ``wp``'s planned batches, starting at its batch ``first``.

    A sample whose size differs from its batch's first is an error (skip drops it).
    Samples lost to skipped errors are replaced by repeats of earlier good ones
    (flagged ``is_padding``), so every batch keeps its planned size and every
    rank its length.
    """
    spare: list[dict] = []
    fills = 0
    shape = decoder_shape
    empty_shape = (0, shape[2], shape[0], shape[1]) if shape else (0,)
    for j in range(first, len(wp.batch_ids)):
        batch: list[dict] = []
        while len(batch) < wp.real_sizes[j]:
            s = next(samples, None)
            if s is None:
                if not spare:
                    raise StreamError("no_samples", "every sample of this worker's share was skipped; "
                                      "nothing is left to fill the batch", value=wp.real_sizes[j])
                s = dict(spare[fills % len(spare)], is_padding=True)
                fills += 1
            elif batch and s["image"] is not None and s["image"].shape != batch[0]["image"].shape:
                handle(StreamError("image_size", f"image size differs from the batch's "
                                   f"{batch[0]['image'].shape} and no resize= was given",
                                   shard=s["__url__"], key=s["__key__"], value=s["image"].shape))
                continue
            if len(spare) < 64 and not s["is_padding"]:
                spare.append(s)
            batch.append(s)
        out = collate_uint8(batch, empty_shape)
        out.update(batch_id=wp.batch_ids[j], stats=stats.take())
        yield out


class ShardStream(IterableDataset):
    """Iterable over one rank's planned batches; each worker yields its own.

    Workers persist across epochs: before each pass the loader writes
    ``(epoch, batches already done)`` into a small shared-memory tensor, and every
    worker plans that epoch itself from ``spec`` (a pure function), so nothing
    else has to reach the workers.
    """

    def __init__(self, spec: PlanSpec, settings: StreamSettings):
        self.spec = spec
        self.settings = settings
        self.control = torch.zeros(2, dtype=torch.int64).share_memory_()
        self._plans: dict[int, EpochPlan] = {}

    def set_position(self, epoch: int, resume_batches: int) -> None:
        self.control[0], self.control[1] = epoch, resume_batches

    def plan(self, epoch: int) -> EpochPlan:
        if epoch not in self._plans:
            self._plans = {epoch: self.spec.plan(epoch)}
        return self._plans[epoch]

    def __iter__(self) -> Iterator[dict]:
        epoch, resume = (int(v) for v in self.control.tolist())
        plan = self.plan(epoch)
        info = get_worker_info()
        worker = info.id if info is not None else 0
        if info is not None and info.num_workers != plan.num_workers:
            raise RuntimeError(f"planned for {plan.num_workers} workers, DataLoader has {info.num_workers}")
        # DataLoader reads its workers round-robin starting at worker 0, but after a
        # resume at batch b the next batch belongs to plan worker b % K: rotate.
        k = plan.num_workers
        workers = [(worker + resume) % k] if info is not None else range(k)
        for w in workers:       # in-process (num_workers=0) the single planned worker is read directly
            yield from self._worker_batches(plan, plan.workers[w], resume)

    def _worker_batches(self, plan: EpochPlan, wp: WorkerPlan, resume: int) -> Iterator[dict]:
        st = self.settings
        stats = LoaderStats()
        handle = ErrorHandler(st.on_error, stats)
        raw = read_segments(wp.segments, handle)
        raw = shuffle_stage(raw, st.shuffle_buffer, derive_seed(st.seed, "buffer", plan.epoch, plan.rank, wp.worker))
        first = plan.worker_batches_before(wp.worker, resume)
        skip = sum(wp.real_sizes[:first])
        raw = itertools.islice(raw, skip, None)   # fast-forward on raw bytes: nothing is decoded
        samples = decode_stage(raw, st.decoder, handle)
        yield from batch_stage(samples, wp, first, handle, stats, st.decoder.output_shape)


class UnindexedStream(IterableDataset):
    """Without an index (``StreamLoader(index=False)``): shards are shuffled per epoch and
    dealt round-robin to ranks, then to workers (webdataset's split); each worker
    yields batches of ``batch_size`` real samples, its last one partial. Nothing is
    known up front, so ranks may differ in length and there is no ``len()``."""

    def __init__(self, urls: list[str], settings: StreamSettings, batch_size: int, world_size: int, rank: int):
        self.urls, self.settings, self.batch_size = urls, settings, batch_size
        self.world_size, self.rank = world_size, rank
        self.control = torch.zeros(2, dtype=torch.int64).share_memory_()

    def set_position(self, epoch: int, resume_batches: int) -> None:
        self.control[0], self.control[1] = epoch, resume_batches

    def __iter__(self) -> Iterator[dict]:
        st = self.settings
        epoch = int(self.control[0])
        info = get_worker_info()
        worker, k = (info.id, info.num_workers) if info is not None else (0, 1)
        order = np.random.Generator(np.random.PCG64(derive_seed(st.seed, "shards", epoch))).permutation(len(self.urls)) \
            if st.shuffle_buffer > 1 else np.arange(len(self.urls))
        mine = [self.urls[i] for i in order][self.rank::self.world_size][worker::k]
        stats = LoaderStats()
        handle = ErrorHandler(st.on_error, stats)
        raw = (s for url in mine for s in read_segment(whole_shard(url), handle))
        raw = shuffle_stage(raw, st.shuffle_buffer, derive_seed(st.seed, "buffer", epoch, self.rank, worker))
        samples = decode_stage(raw, st.decoder, handle)
        batch, j = [], 0
        for s in samples:
            if batch and s["image"] is not None and s["image"].shape != batch[0]["image"].shape:
                handle(StreamError("image_size", f"image size differs from the batch's {batch[0]['image'].shape} "
                                   "and no resize= was given", shard=s["__url__"], key=s["__key__"], value=s["image"].shape))
                continue
            batch.append(s)
            if len(batch) == self.batch_size:
                yield dict(collate_uint8(batch), batch_id=j * k + worker, stats=stats.take())
                batch, j = [], j + 1
        if batch:
            yield dict(collate_uint8(batch), batch_id=j * k + worker, stats=stats.take())
