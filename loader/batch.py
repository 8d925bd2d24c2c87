"""What the loader yields: ``(images, targets)`` plus per-row metadata.

A plain dataclass, not a tuple subclass, so that the frameworks a DataLoader is
plugged into can move and copy it: Lightning's ``move_data_to_device`` rebuilds
dataclasses field by field, accelerate's ``send_to_device`` calls ``.to()``,
and ``copy.deepcopy`` / ``pickle`` work on any dataclass. It still unpacks like a
DataLoader batch: ``images, targets = batch``; ``batch[0]``, ``batch[1]``,
``len(batch) == 2``.

``targets`` are what a loss takes: int64 class indices, or float soft targets
``(N, num_classes)`` once ``mixup=`` (MixUp/CutMix) is on. Metrics such as
``torchmetrics.Accuracy`` need class indices: use ``batch.hard_labels`` (always
int64 ``(N,)``, each row's class before mixing), never soft targets (an argmax of
a mixed target is the larger share, not the row's class).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch


@dataclass
class Batch:
    """One batch. ``images``: NCHW (uint8 by default; see ``StreamLoader(dtype=, normalize=)``).

    Row metadata: ``keys`` (sample keys; ``synthetic:<key>`` for SMOTE rows, ``padding``
    for repeats), ``is_synthetic`` and ``is_padding`` (bool), ``provenance`` (per
    synthetic row: seed key, neighbour key, ``u``), ``hard_labels`` (int64) and the
    batch's position in its epoch, ``batch_id``.
    """

    images: torch.Tensor
    targets: torch.Tensor
    hard_labels: torch.Tensor | None = None
    keys: list[str] = field(default_factory=list)
    is_synthetic: torch.Tensor | None = None
    is_padding: torch.Tensor | None = None
    provenance: list = field(default_factory=list)
    batch_id: int = -1

    def __iter__(self):
        yield self.images
        yield self.targets

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i):
        return (self.images, self.targets)[i]

    @property
    def labels(self) -> torch.Tensor:
        """Class indices for metrics: ``hard_labels`` (same as ``targets`` without mixup)."""
        return self.hard_labels if self.hard_labels is not None else self.targets

    def to(self, *args, **kwargs) -> "Batch":
        """Move every tensor field (``Tensor.to``'s arguments, e.g. ``device, non_blocking=True``)."""
        moved = {f.name: getattr(self, f.name).to(*args, **kwargs) for f in fields(self)
                 if isinstance(getattr(self, f.name), torch.Tensor) and f.name != "images"}
        images = self.images.to(*args, **kwargs)
        for name in ("hard_labels", "is_synthetic", "is_padding"):   # keep int/bool dtypes under .to(dtype)
            value = getattr(self, name)
            if name in moved and value is not None:
                moved[name] = moved[name].to(dtype=value.dtype)
        if "targets" in moved and not self.targets.is_floating_point():
            moved["targets"] = moved["targets"].to(dtype=self.targets.dtype)
        return replace(self, images=images, **moved)

    def pin_memory(self) -> "Batch":
        return replace(self, **{f.name: getattr(self, f.name).pin_memory() for f in fields(self)
                                if isinstance(getattr(self, f.name), torch.Tensor)})
