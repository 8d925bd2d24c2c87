"""What the loader yields: a 2-tuple ``(images, targets)`` that also carries metadata."""
from __future__ import annotations

import torch


class Batch(tuple):
    """Unpacks like a DataLoader batch, ``images, labels = batch``.

    Attributes: ``keys`` (sample keys), ``is_synthetic`` and ``is_padding``
    (bool tensors), ``provenance`` (per synthetic row: seed key, neighbour
    key, ``u``), ``hard_labels`` (int64 labels before mixup) and ``batch_id``.
    """

    def __new__(cls, images: torch.Tensor, targets: torch.Tensor, **meta):
        self = super().__new__(cls, (images, targets))
        self.__dict__.update(meta)
        return self

    @property
    def images(self) -> torch.Tensor:
        return self[0]

    @property
    def targets(self) -> torch.Tensor:
        return self[1]
