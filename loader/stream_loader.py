"""``StreamLoader``: a drop-in ``torch.utils.data.DataLoader`` over WebDataset shards.

>>> loader = StreamLoader("shards/train-{000000..000009}.tar", batch_size=256,
...                       num_workers=2, seed=0, device="cuda")     # doctest: +SKIP
>>> for epoch in range(3):
...     loader.set_epoch(epoch)
...     for images, labels in loader:      # uint8 NCHW on the device, int64 labels
...         ...

Plug-in stages run in the main process on the device, on whole batches:
``balance=`` (a :class:`streamaug.samplers.ClassBalancer`) adds synthetic rows,
``augment=`` (a :class:`streamaug.ops.Compose`) transforms images, and
``mixup=`` (``MixUp``/``CutMix``) turns labels into soft targets. Each must meet
its protocol in :mod:`streamaug.core.plugin` (checked here, when the loader is
built); each is seeded from the loader's seed unless it was given its own, and
its state is part of :meth:`StreamLoader.state_dict`.
"""
from __future__ import annotations

import gc
from collections.abc import Iterator, Sequence

import braceexpand
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from streamaug.core.flight import BatchInFlight
from streamaug.core.plugin import Augmenter, Balancer, BindContext, Mixer
from streamaug.core.seeding import derive_seed
from streamaug.core.threads import IntraOpThreads, limit_worker_threads, main_process_threads
from streamaug.core.transfer import to_device

from .batch import Batch
from .device_feed import device_feed
from .epoch_plan import EpochPlan, PlanSpec
from .errors import ErrorHandler, LoaderStats, check_policy
from .sample_decoder import SampleDecoder
from .sample_lookup import ShardRowSource
from .shard_index import ShardIndex, default_index_path
from .worker_stream import StreamSettings, WorkerStream

PLUGINS = {"balance": Balancer, "augment": Augmenter, "mixup": Mixer}


def expand_urls(urls: str | Sequence[str]) -> list[str]:
    """Brace patterns (``train-{000000..000009}.tar``) and ``::``-separated lists → URLs."""
    if isinstance(urls, str):
        urls = [urls]
    out = [u for pattern in urls for part in str(pattern).split("::") for u in braceexpand.braceexpand(part)]
    if not out or not all(out):
        raise ValueError(f"no shard URLs given (got {urls!r})")
    return out


def _distributed() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class StreamLoader:
    """Stream ``(images, labels)`` batches from WebDataset shards. See the module docs.

    Args:
        urls: shard URLs: paths, brace patterns, ``pipe:`` commands or http(s).
        batch_size: samples per batch (real + synthetic).
        shuffle: shuffle-buffer size in samples (0/1 disables; shard order is
            shuffled per epoch whenever ``shuffle`` is truthy).
        num_workers: DataLoader worker processes for reading and decoding.
        seed: the one seed everything derives from (see ``seeding.derive_seed``).
        drop_last: drop each rank's last partial batch.
        device: where batches are delivered (default: CUDA if available, else CPU).
        pin_memory: pin host batches before the copy (default: when device is CUDA).
        index: path/URL of ``index.json`` or a ``ShardIndex``; default ``index.json``
            beside the first shard.
        on_error: ``"raise"`` or ``"skip"``; skipped samples are counted in ``stats``.
        resize: ``(H, W)`` to resize every image; without it sizes must agree.
        decode: ``"cpu"`` decodes in the workers; ``"dali"`` ships encoded jpg/png bytes and
            decodes each batch with DALI where it lives (nvJPEG on a GPU).
        balance, augment, mixup: plug-in stages (see the module docs).
        world_size, rank: override ``torch.distributed``'s.
    """

    def __init__(self, urls: str | Sequence[str], *, batch_size: int, shuffle: int = 1000,
                 num_workers: int = 0, seed: int = 0, drop_last: bool = False,
                 device: str | torch.device | None = None, pin_memory: bool | None = None,
                 index: str | ShardIndex | None = None, on_error: str = "raise",
                 resize: tuple[int, int] | None = None, balance=None, augment=None, mixup=None,
                 world_size: int | None = None, rank: int | None = None, prefetch_factor: int = 2,
                 decode: str = "cpu", num_classes: int | None = None):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
        if int(shuffle) < 0:
            raise ValueError(f"shuffle must be a buffer size >= 0, got {shuffle!r}")
        self.urls = expand_urls(urls)
        self.index = None if index is False else self._load_index(index)
        if self.index is None and (balance is not None or mixup is not None) and not num_classes:
            raise ValueError("index=False with balance= or mixup= needs num_classes=")
        self.num_classes = self.index.num_classes if self.index is not None else num_classes
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, int(seed)
        self.shuffle, self.drop_last = int(shuffle), drop_last
        self.on_error = check_policy(on_error)
        self.device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        self.pin_memory = self.device.type == "cuda" if pin_memory is None else pin_memory
        ws, rk = _distributed()
        self.world_size = ws if world_size is None else world_size
        self.rank = rk if rank is None else rank
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in [0, world_size={self.world_size}), got {self.rank}")
        self.prefetch_factor = prefetch_factor
        if decode not in ("cpu", "dali"):
            raise ValueError(f"decode must be 'cpu' (in the workers) or 'dali' (where the batch lives), got {decode!r}")
        shape = self.index.image_shape if self.index is not None else None
        self.decoder = SampleDecoder(self.num_classes or (1 << 31) - 1, resize, shape, defer_encoded=decode == "dali")
        self.device_decoder = None
        if decode == "dali":
            from .device_decode import DaliImageDecoder

            channels = shape[2] if shape else 3
            self.device_decoder = DaliImageDecoder(self.device, channels, resize)
        self.stats = LoaderStats()
        self._stage_threads = IntraOpThreads(main_process_threads(num_workers))   # see core/threads.py
        self.balance, self.augment, self.mixup = balance, augment, mixup
        self._rows = ShardRowSource(self.urls, self.index, self.decoder, self.device)
        for name, protocol in PLUGINS.items():
            stage = getattr(self, name)
            if stage is None:
                continue
            if not isinstance(stage, protocol):
                raise TypeError(f"{name}= must meet streamaug.core.plugin.{protocol.__name__} (seed, manual_seed, "
                                f"state_dict, load_state_dict, __call__{', bind, synthetic_counts' if name == 'balance' else ''}), "
                                f"got {type(stage).__name__}")
            if stage.seed is None:
                stage.manual_seed(derive_seed(self.seed, name, self.rank))
        if self.balance is not None:
            self.balance.bind(BindContext(
                class_counts=self.index.class_counts if self.index is not None else None,
                num_classes=self.num_classes, world_size=self.world_size, rank=self.rank, device=self.device,
                rows=self._rows, stats=self.stats, augmented=self.augment is not None))
        settings = StreamSettings(self.shuffle, self.seed, self.on_error, self.decoder)
        if self.index is None:
            self._stream = WorkerStream(settings, urls=self.urls, batch_size=batch_size,
                                        world_size=self.world_size, rank=self.rank)
        else:
            synthetic, most = self.balance.synthetic_counts() if self.balance is not None else (0, 0)
            spec = PlanSpec(self.index, self.seed, batch_size, self.world_size, self.rank, num_workers, drop_last,
                            bool(self.shuffle), synthetic, most)
            self._stream = WorkerStream(settings, spec=spec, batch_size=batch_size)
        self._dataloader = None
        self.epoch = 0
        self._explicit_epoch = False
        self._batches_done = 0

    # ------------------------------------------------------------ planning
    def _load_index(self, index) -> ShardIndex:
        if isinstance(index, ShardIndex):
            full = index
        else:
            path = index or default_index_path(self.urls)
            if path is None:
                raise ValueError("pipe: URLs need an explicit index= (path or URL of index.json)")
            full = ShardIndex.load(path)
        listed = {s.url for s in full.shards}
        if set(self.urls) == listed:
            return full
        return full.subset(self.urls)

    def plan(self, epoch: int | None = None) -> EpochPlan | None:
        """The epoch's plan (``None`` without an index: nothing is known up front)."""
        if self.index is None:
            return None
        return self._stream.plan(self.epoch if epoch is None else epoch)

    def __len__(self) -> int:
        if self.index is None:
            raise TypeError("StreamLoader(index=False) has no len(): the number of samples is unknown")
        return self.plan().num_batches

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch (shard order, buffer and balancer seeds). Once called,
        epochs no longer advance by themselves, as with ``DistributedSampler``."""
        if epoch != self.epoch:
            self._batches_done = 0
        self.epoch, self._explicit_epoch = int(epoch), True

    # ------------------------------------------------------------ iteration
    def _worker_batches(self) -> Iterator[BatchInFlight]:
        self._stream.set_position(self.epoch, self._batches_done)
        if self.num_workers == 0:
            yield from self._stream
            return
        if self._dataloader is None:         # workers persist across epochs (see WorkerStream)
            # Forked workers inherit the parent's uncollected garbage; finalizing it there (e.g. a
            # dead DALI pipeline, whose threads do not exist in the child) can crash the worker.
            gc.collect()
            self._dataloader = DataLoader(self._stream, batch_size=None, num_workers=self.num_workers,
                                          pin_memory=self.pin_memory, prefetch_factor=self.prefetch_factor,
                                          persistent_workers=True, worker_init_fn=_freeze_inherited)
        yield from self._dataloader

    def __iter__(self) -> Iterator[Batch]:
        plan = self.plan()
        if plan is not None and self._batches_done >= plan.num_batches:
            self._advance_epoch()
            plan = self.plan()
        batches = device_feed(self._worker_batches(), self.device, self.pin_memory)
        if plan is None:                  # no index: resume replays the prefix; know which batch is last
            batches = _with_last(_drop(batches, self._batches_done))
        for batch in batches:
            self.stats.merge(batch.stats)
            if batch.encoded is not None:
                batch = self.device_decoder(batch, ErrorHandler(self.on_error, self.stats))
            with self._stage_threads:
                out = self._apply_plugins(batch, plan)
            self._batches_done += 1
            yield out
        self._advance_epoch()

    def _advance_epoch(self) -> None:
        self._batches_done = 0
        if not self._explicit_epoch:
            self.epoch += 1

    def _apply_plugins(self, batch: BatchInFlight, plan: EpochPlan | None) -> Batch:
        """balance → augment → mixup, on the device; counting and planning use host copies,
        so nothing here waits for the device."""
        if self.balance is not None:
            batch = self.balance(batch, None if plan is None else plan.synthetic[batch.batch_id])
        self.stats.real += int(batch.real.sum())
        self.stats.padded += int(batch.is_padding.sum())
        self.stats.synthetic += int(batch.is_synthetic.sum())
        images = batch.images
        if self.augment is not None:
            images = self.augment(images)
        labels = to_device(batch.labels, self.device)
        targets = labels
        if self.mixup is not None:
            images, targets = self.mixup(images, batch.labels, num_classes=self.num_classes)
        return Batch(images, targets, keys=batch.keys, is_synthetic=to_device(batch.is_synthetic, self.device),
                     is_padding=to_device(batch.is_padding, self.device), provenance=batch.provenance,
                     hard_labels=labels, batch_id=batch.batch_id)

    def scan_rows(self, wanted):
        """Samples in index order whose label satisfies ``wanted`` (see ``ShardRowSource.scan``)."""
        return self._rows.scan(wanted)

    def fetch_rows(self, pairs: list[tuple[str, str]], transform=None) -> dict[tuple[str, str], torch.Tensor]:
        """Specific samples ``(shard url, key)`` as rows on the device (see ``ShardRowSource.fetch``)."""
        return self._rows.fetch(pairs, transform)

    def close(self) -> None:
        """Stop the persistent DataLoader workers now (they also stop when the loader is freed)."""
        dl, self._dataloader = self._dataloader, None
        if dl is not None and getattr(dl, "_iterator", None) is not None:
            dl._iterator._shutdown_workers()  # noqa: SLF001 - torch has no public stop for persistent workers

    def __enter__(self) -> "StreamLoader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ resume
    def state_dict(self) -> dict:
        """Everything needed to resume mid-epoch with bit-identical remaining batches.

        Small by design: positions are ``(epoch, batches done)``; the plan and
        every worker's stream are recomputed from the seed. Plug-ins add their
        RNG states (and the balancer its reservoir as keys, not pixels).
        """
        sd = {"epoch": self.epoch, "batches_done": self._batches_done, "seed": self.seed,
              "explicit_epoch": self._explicit_epoch, "world_size": self.world_size, "rank": self.rank,
              "num_workers": self.num_workers, "batch_size": self.batch_size, "stats": self.stats.as_dict()}
        for name in PLUGINS:
            stage = getattr(self, name)
            if stage is not None:
                sd[name] = stage.state_dict()
        return sd

    def load_state_dict(self, sd: dict) -> None:
        for field in ("seed", "world_size", "num_workers", "batch_size"):
            if sd[field] != getattr(self, field):
                raise ValueError(f"state was saved with {field}={sd[field]!r}, this loader has "
                                 f"{getattr(self, field)!r}; resume needs the same value")
        self.epoch, self._batches_done = sd["epoch"], sd["batches_done"]
        self._explicit_epoch = sd["explicit_epoch"]
        self.stats.__init__()                    # in place: a bound balancer counts into this object
        self.stats.merge(sd["stats"])
        self.stats.real, self.stats.synthetic = sd["stats"]["real"], sd["stats"]["synthetic"]
        for name in PLUGINS:
            stage = getattr(self, name)
            if name in sd and stage is not None:
                stage.load_state_dict(sd[name])


def _drop(batches: Iterator[BatchInFlight], n: int) -> Iterator[BatchInFlight]:
    """Skip the first ``n`` batches (a resume without an index replays the epoch's prefix;
    their counts are already in the restored ``stats``)."""
    for i, batch in enumerate(batches):
        if i >= n:
            yield batch


def _with_last(batches: Iterator[BatchInFlight]) -> Iterator[BatchInFlight]:
    """Mark each batch ``last`` or not, one batch of look-ahead."""
    pending = next(batches, None)
    for batch in batches:
        pending.last = False
        yield pending
        pending = batch
    if pending is not None:
        pending.last = True
        yield pending


def _freeze_inherited(worker_id: int) -> None:
    """In each worker: never collect (or finalize) objects inherited from the parent;
    one intra-op thread (the workers are the parallelism)."""
    gc.freeze()
    limit_worker_threads()
