"""MixUp (Zhang et al. 2018): blend each row with a partner, and blend the targets alike."""
from __future__ import annotations

import torch

from streamaug.core.row_blend import opencv_blend
from streamaug.core.transfer import to_device

from ..base import Params, from_float, to_float
from .mix_base import MixOp


class MixUp(MixOp):
    """``x_i ← λ_i x_i + (1 − λ_i) x_{π(i)}`` with ``λ_i ~ Beta(α, α)`` per row and ``π``
    a random permutation; targets become ``λ_i·onehot(y_i) + (1 − λ_i)·onehot(y_{π(i)})``.
    A row is mixed with probability ``p`` (else λ = 1: the row is returned unchanged).

    DALI has no mixup operator; on both backends this op runs in torch after the
    backend's augmentation, on the same device, so the pairing and λ are the
    same for pixels and targets by construction.

    Balance-aware options (``partners="balanced"``, ``label_rule="remix"`` with
    ``kappa``, ``tau``, ``class_counts``): see :class:`~streamaug.ops.mix.mix_base.MixOp`.

    >>> MixUp(0.2, partners="balanced")                                 # Balanced-MixUp
    MixUp(alpha=0.2, p=1.0, partners='balanced')
    >>> MixUp(1.0, label_rule="remix", class_counts=[500, 50])          # Remix, κ=3, τ=0.5
    MixUp(alpha=1.0, p=1.0, label_rule='remix', kappa=3.0, tau=0.5)
    """

    def __init__(self, alpha: float = 0.2, p: float = 1.0, num_classes: int | None = None, seed: int | None = None,
                 **balance):
        super().__init__(alpha, p, num_classes, seed, **balance)

    def mix_images(self, images: torch.Tensor, params: Params) -> tuple[torch.Tensor, torch.Tensor]:
        lam = self.row_lambda(params)
        if images.dtype == torch.uint8 and images.device.type == "cpu":
            return mix_uint8_rows(images, params["perm"], lam), lam
        x = to_float(images)
        partner = x[to_device(params["perm"], x.device)]
        # λ·x + (1 − λ)·partner, written into x in one pass
        torch.lerp(partner, x, to_device(lam.to(x.dtype), x.device).view(-1, 1, 1, 1), out=x)
        return from_float(x, images), lam


CHUNK_ROWS = 8


def mix_uint8_rows(images: torch.Tensor, perm: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """uint8 CPU images: ``round(λ·x + (1 − λ)·x[perm])`` on the 0..255 scale, with no float
    copy of the batch: one OpenCV pass per row where OpenCV is installed
    (``core.row_blend``), else in torch a few rows at a time, so the float intermediates
    stay in cache. Both agree with the float path's rounding up to one level at exact ties."""
    blend = opencv_blend()
    if blend is not None:
        return blend(images.contiguous(), range(len(images)), perm.tolist(), lam.double().tolist())
    return mix_uint8_rows_torch(images, perm, lam)


def mix_uint8_rows_torch(images: torch.Tensor, perm: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """``mix_uint8_rows`` without OpenCV: torch, ``CHUNK_ROWS`` rows at a time."""
    out = torch.empty_like(images)
    weight = lam.to(torch.float32).view(-1, 1, 1, 1)
    perm = perm.to(torch.int64)
    for start in range(0, len(images), CHUNK_ROWS):
        rows = slice(start, start + CHUNK_ROWS)
        mixed = images[rows].float()
        torch.lerp(images[perm[rows]].float(), mixed, weight[rows], out=mixed)
        out[rows] = mixed.round_()         # half to even, as OpenCV; λ in [0, 1] keeps the value in [0, 255]
    return out

