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
``mixup=`` (``MixUp``/``CutMix``) turns labels into soft targets. Each is
seeded from the loader's seed unless it was given its own, and its state is
part of :meth:`StreamLoader.state_dict`.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import braceexpand
import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from .batch import Batch
from .device_feed import device_feed
from .epoch_plan import EpochPlan, PlanSpec
from .epoch_plan import Segment
from .errors import ErrorHandler, LoaderStats, StreamError, check_policy
from .tar_reader import read_segment
from .sample_decoder import SampleDecoder
from .seeding import derive_seed
from .shard_index import ShardIndex, default_index_path
from .worker_stream import ShardStream, StreamSettings

PLUGINS = ("balance", "augment", "mixup")


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
        balance, augment, mixup: plug-in stages (see the module docs).
        world_size, rank: override ``torch.distributed``'s.
    """

    def __init__(self, urls: str | Sequence[str], *, batch_size: int, shuffle: int = 1000,
                 num_workers: int = 0, seed: int = 0, drop_last: bool = False,
                 device: str | torch.device | None = None, pin_memory: bool | None = None,
                 index: str | ShardIndex | None = None, on_error: str = "raise",
                 resize: tuple[int, int] | None = None, balance=None, augment=None, mixup=None,
                 world_size: int | None = None, rank: int | None = None, prefetch_factor: int = 2):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
        if int(shuffle) < 0:
            raise ValueError(f"shuffle must be a buffer size >= 0, got {shuffle!r}")
        self.urls = expand_urls(urls)
        self.index = self._load_index(index)
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
        self.decoder = SampleDecoder(self.index.num_classes, resize, self.index.image_shape)
        self.balance, self.augment, self.mixup = balance, augment, mixup
        for name in PLUGINS:
            stage = getattr(self, name)
            if stage is not None and hasattr(stage, "bind"):
                stage.bind(self)
            if stage is not None and getattr(stage, "seed", 0) is None and hasattr(stage, "manual_seed"):
                stage.manual_seed(derive_seed(self.seed, name, self.rank))
        synthetic, most = self.balance.synthetic_counts() if self.balance is not None else (0, 0)
        spec = PlanSpec(self.index, self.seed, batch_size, self.world_size, self.rank, num_workers, drop_last,
                        bool(self.shuffle), synthetic, most)
        self._stream = ShardStream(spec, StreamSettings(self.shuffle, self.seed, self.on_error, self.decoder))
        self._dataloader = None
        self.stats = LoaderStats()
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

    def plan(self, epoch: int | None = None) -> EpochPlan:
        return self._stream.plan(self.epoch if epoch is None else epoch)

    def __len__(self) -> int:
        return self.plan().num_batches

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch (shard order, buffer and balancer seeds). Once called,
        epochs no longer advance by themselves, as with ``DistributedSampler``."""
        if epoch != self.epoch:
            self._batches_done = 0
        self.epoch, self._explicit_epoch = int(epoch), True

    # ------------------------------------------------------------ iteration
    def _worker_batches(self, plan: EpochPlan) -> Iterator[dict]:
        self._stream.set_position(plan.epoch, self._batches_done)
        if self.num_workers == 0:
            yield from self._stream
            return
        if self._dataloader is None:         # workers persist across epochs (see ShardStream)
            self._dataloader = DataLoader(self._stream, batch_size=None, num_workers=self.num_workers,
                                          pin_memory=self.pin_memory, prefetch_factor=self.prefetch_factor,
                                          persistent_workers=True)
        yield from self._dataloader

    def __iter__(self) -> Iterator[Batch]:
        plan = self.plan()
        if self._batches_done >= plan.num_batches:
            self._advance_epoch()
            plan = self.plan()
        for batch in device_feed(self._worker_batches(plan), self.device):
            self.stats.merge(batch.pop("stats"))
            out = self._apply_plugins(batch, plan)
            self._batches_done += 1
            yield out
        self._advance_epoch()

    def _advance_epoch(self) -> None:
        self._batches_done = 0
        if not self._explicit_epoch:
            self.epoch += 1

    def _apply_plugins(self, batch: dict, plan: EpochPlan) -> Batch:
        n_synth = plan.synthetic[batch["batch_id"]]
        if self.balance is not None:
            batch = self.balance(batch, n_synth)
        images, labels = batch["images"], batch["labels"]
        synthetic = batch.get("is_synthetic", torch.zeros(len(labels), dtype=torch.bool, device=labels.device))
        self.stats.real += int((~synthetic & ~batch["is_padding"]).sum())
        self.stats.padded += int(batch["is_padding"].sum())
        self.stats.synthetic += int(synthetic.sum())
        if self.augment is not None:
            images = self.augment(images)
        targets = labels
        if self.mixup is not None:
            images, targets = self.mixup(images, labels, num_classes=self.index.num_classes)
        return Batch(images, targets, keys=batch["keys"], is_synthetic=synthetic,
                     is_padding=batch["is_padding"], provenance=batch.get("provenance", []),
                     hard_labels=labels, batch_id=batch["batch_id"])

    def scan_rows(self, wanted) -> Iterator[tuple[str, str, int, torch.Tensor]]:
        """Samples in index order whose label satisfies ``wanted(label)``, decoded on
        demand: ``(url, key, label, CHW uint8 row on the device)``."""
        handle = ErrorHandler("skip", LoaderStats())
        for info in self.index.shards:
            for raw in read_segment(Segment(info.url, 0, info.count, info.count), handle):
                try:
                    label = int(raw["cls"])
                except (KeyError, ValueError):
                    continue
                if 0 <= label < self.index.num_classes and wanted(label):
                    try:
                        image = self.decoder(raw)["image"]
                    except StreamError:
                        continue
                    yield info.url, raw["__key__"], label, torch.from_numpy(np.array(image)).permute(2, 0, 1).to(self.device)

    def fetch_rows(self, pairs: list[tuple[str, str]], transform=None) -> dict[tuple[str, str], torch.Tensor]:
        """Read specific samples ``(shard url, key)`` → CHW uint8 rows on the loader's device
        (``transform`` maps a batch of them, e.g. to features). Used to restore reservoirs."""
        wanted: dict[str, set[str]] = {}
        for url, key in pairs:
            wanted.setdefault(url, set()).add(key)
        found: dict[tuple[str, str], torch.Tensor] = {}
        handle = ErrorHandler("raise", LoaderStats())
        for url, keys in wanted.items():
            info = self.index.shard(url)
            for raw in read_segment(Segment(url, 0, info.count, info.count), handle):
                if raw["__key__"] in keys:
                    image = self.decoder(raw)["image"]
                    found[(url, raw["__key__"])] = torch.from_numpy(np.array(image)).permute(2, 0, 1).to(self.device)
        missing = [p for p in pairs if tuple(p) not in found]
        if missing:
            raise ValueError(f"saved state names samples that are not in their shards, e.g. {missing[0]!r}")
        if transform is not None:
            order = list(found)
            rows = transform(torch.stack([found[p] for p in order]))
            found = dict(zip(order, rows))
        return found

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
            if stage is not None and hasattr(stage, "state_dict"):
                sd[name] = stage.state_dict()
        return sd

    def load_state_dict(self, sd: dict) -> None:
        for field in ("seed", "world_size", "num_workers", "batch_size"):
            if sd[field] != getattr(self, field):
                raise ValueError(f"state was saved with {field}={sd[field]!r}, this loader has "
                                 f"{getattr(self, field)!r}; resume needs the same value")
        self.epoch, self._batches_done = sd["epoch"], sd["batches_done"]
        self._explicit_epoch = sd["explicit_epoch"]
        self.stats = LoaderStats()
        self.stats.merge(sd["stats"])
        self.stats.real, self.stats.synthetic = sd["stats"]["real"], sd["stats"]["synthetic"]
        for name in PLUGINS:
            stage = getattr(self, name)
            if name in sd and stage is not None:
                stage.load_state_dict(sd[name])
