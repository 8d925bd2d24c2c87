"""The batch in flight: what travels from a worker through the plug-in stages.

Every field is defined here, once. Workers fill the host side; the loader moves
``images`` to the device (``pin_memory`` makes that copy asynchronous); the balancer
appends rows; the loader turns it into the user's :class:`streamaug.loader.Batch`.
Labels and masks stay on the host until the end, so counting and planning never
wait for the device.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from .transfer import to_device


INLINE_BYTES = 64 << 10


class InlineTensor(NamedTuple):
    """A small CPU tensor pickled by value (see :meth:`BatchInFlight.__getstate__`)."""
    raw: bytes
    dtype: torch.dtype
    shape: tuple[int, ...]

    @classmethod
    def of(cls, t: torch.Tensor) -> "InlineTensor":
        return cls(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes(), t.dtype, tuple(t.shape))

    def tensor(self) -> torch.Tensor:
        if not self.raw:
            return torch.empty(self.shape, dtype=self.dtype)
        return torch.frombuffer(bytearray(self.raw), dtype=torch.uint8).view(self.dtype).view(self.shape)


@dataclass
class BatchInFlight:
    """One batch between a worker and the user.

    ``images`` is uint8 NCHW (on the host from a worker, on the device after the feed);
    with ``decode="dali"`` it is empty and ``encoded`` holds each row's bytes until the
    loader decodes them. ``labels``, ``is_padding`` and ``is_synthetic`` are host
    tensors, one entry per row; ``provenance`` holds, per row, ``None`` (a real row) or
    ``{"seed": (url, key), "neighbour": (url, key) | None, "u": float}``.
    """

    images: torch.Tensor
    labels: torch.Tensor
    keys: list[str]
    urls: list[str]
    is_padding: torch.Tensor
    batch_id: int
    stats: dict = field(default_factory=dict)           # worker counters since its previous batch
    encoded: list[bytes] | None = None
    is_synthetic: torch.Tensor | None = None
    provenance: list | None = None
    last: bool | None = None                             # no index: whether this is the epoch's last batch
    slot_offset: int | None = None                       # planned synthetic slots used by earlier batches
    stages_done: bool = False                            # augment/mixup already ran in the worker
    targets: torch.Tensor | None = None                  # soft targets, when mixup ran in the worker

    def __post_init__(self):
        n = len(self.labels)
        if self.is_synthetic is None:
            self.is_synthetic = torch.zeros(n, dtype=torch.bool)
        if self.provenance is None:
            self.provenance = [None] * n

    def __len__(self) -> int:
        return len(self.labels)

    def __getstate__(self) -> dict:
        """From a reading worker, CPU tensors of up to ``INLINE_BYTES`` (labels, masks, soft
        targets; tiny images) travel inside the pickle. Torch would otherwise move each into
        its own shared-memory segment and pass its descriptor over a socket: about 0.1 ms of
        the main process's time per tensor, per batch (``benchmarks/host_overhead.py``)."""
        state = dict(self.__dict__)
        for name, value in state.items():
            if isinstance(value, torch.Tensor) and value.device.type == "cpu" and not value.is_pinned() \
                    and value.is_contiguous() and value.untyped_storage().nbytes() <= INLINE_BYTES \
                    and not value.requires_grad:        # (a strided layout, e.g. channels_last, is kept by torch's way)
                state[name] = InlineTensor.of(value)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update({k: v.tensor() if isinstance(v, InlineTensor) else v for k, v in state.items()})

    @property
    def real(self) -> torch.Tensor:
        """Host mask of rows read from shards (not padding, not synthetic)."""
        return ~self.is_padding & ~self.is_synthetic

    def pin_memory(self) -> "BatchInFlight":
        """Called by DataLoader's pin-memory thread: page-lock what goes to the device."""
        self.images = self.images.pin_memory()
        self.labels = self.labels.pin_memory()
        return self

    def extend(self, images: torch.Tensor, labels: list[int], keys: list[str], urls: list[str],
               provenance: list, synthetic: list[bool], padding: list[bool]) -> None:
        """Append rows (``images`` already in this batch's dtype and on its device)."""
        self.images = torch.cat([self.images, images]) if len(self.images) else images
        self.labels = torch.cat([self.labels, torch.tensor(labels, dtype=torch.int64)])
        self.keys, self.urls = self.keys + list(keys), self.urls + list(urls)
        self.provenance = self.provenance + list(provenance)
        self.is_synthetic = torch.cat([self.is_synthetic, torch.tensor(synthetic, dtype=torch.bool)])
        self.is_padding = torch.cat([self.is_padding, torch.tensor(padding, dtype=torch.bool)])

    def rows(self, start: int, stop: int, copy: bool = False) -> "BatchInFlight":
        """Rows ``start..stop`` as a batch (same ``batch_id``, no counts): views of this batch's
        tensors, or copies with ``copy`` (a view keeps all of this batch's rows alive)."""
        def cut(t: torch.Tensor) -> torch.Tensor:
            return t[start:stop].clone() if copy else t[start:stop]
        return BatchInFlight(cut(self.images), cut(self.labels), self.keys[start:stop], self.urls[start:stop],
                             cut(self.is_padding), self.batch_id, {}, is_synthetic=cut(self.is_synthetic),
                             provenance=self.provenance[start:stop], stages_done=self.stages_done,
                             targets=None if self.targets is None else cut(self.targets))

    @classmethod
    def joined(cls, parts: list["BatchInFlight"], batch_id: int) -> "BatchInFlight":
        """The rows of ``parts`` in order, as batch ``batch_id`` (decoded parts, whose counts the
        loader has taken already: a part's ``stats`` must be empty)."""
        if len(parts) == 1:
            only = parts[0]
            only.batch_id, only.last, only.slot_offset = batch_id, None, None
            return only
        if any(p.encoded is not None or p.stats for p in parts) or len({p.stages_done for p in parts}) > 1:
            raise ValueError("only decoded batches whose counts were taken and whose stages are alike can be joined")
        targets = None if parts[0].targets is None else torch.cat([p.targets for p in parts])
        return cls(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]),
                   [k for p in parts for k in p.keys], [u for p in parts for u in p.urls],
                   torch.cat([p.is_padding for p in parts]), batch_id, {},
                   is_synthetic=torch.cat([p.is_synthetic for p in parts]),
                   provenance=[v for p in parts for v in p.provenance], stages_done=parts[0].stages_done,
                   targets=targets)

    def permute(self, perm: np.ndarray) -> None:
        """Reorder every row field by ``perm`` (or keep only its rows, in its order)."""
        host = torch.from_numpy(np.asarray(perm, dtype=np.int64))
        self.images = self.images[to_device(host, self.images.device)]
        self.labels, self.is_padding, self.is_synthetic = self.labels[host], self.is_padding[host], self.is_synthetic[host]
        if self.targets is not None:
            self.targets = self.targets[to_device(host, self.targets.device)]
        order = host.tolist()
        self.keys = [self.keys[i] for i in order]
        self.urls = [self.urls[i] for i in order]
        self.provenance = [self.provenance[i] for i in order]
