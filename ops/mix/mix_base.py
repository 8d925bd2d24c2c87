"""What MixUp and CutMix share: λ ~ Beta(α, α) per row, a partner permutation,
per-row probability ``p``, and soft targets mixed with the same λ and pairing
as the pixels."""
from __future__ import annotations

import numbers

import torch

from streamaug.core.transfer import to_device

from ..base import Op, Params, check_images


def one_hot(labels: torch.Tensor, num_classes: int | None) -> torch.Tensor:
    if labels.ndim == 2:
        return labels.float()
    if labels.ndim != 1 or labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f"labels must be int (N,) or soft (N, C) targets, got {labels.dtype} {tuple(labels.shape)}")
    if num_classes is None:
        raise ValueError("num_classes is needed to turn int labels into soft targets (the loader passes it)")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes}), got range "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    return torch.nn.functional.one_hot(labels.long(), num_classes).float()


class MixOp(Op):
    kind = "mix"

    def __init__(self, alpha: float, p: float = 1.0, num_classes: int | None = None, seed: int | None = None):
        super().__init__(p, seed)
        if not isinstance(alpha, numbers.Real) or alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {alpha!r}")
        self.alpha = float(alpha)
        self.num_classes = num_classes

    def _draw(self, n: int, height: int, width: int) -> Params:
        return {"lam": torch.from_numpy(self.rng.beta(self.alpha, self.alpha, n)).float(),
                "perm": torch.from_numpy(self.rng.permutation(n))}

    def row_lambda(self, params: Params) -> torch.Tensor:
        """λ actually used for the targets (1 where the row is not mixed)."""
        return torch.where(params["apply"], params["lam"], torch.ones_like(params["lam"]))

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None,
                 params: Params | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        check_images(images)
        if labels.shape[0] != images.shape[0]:
            raise ValueError(f"labels have {labels.shape[0]} rows but images have {images.shape[0]}")
        targets = to_device(one_hot(labels, num_classes or self.num_classes), images.device)
        n, _, h, w = images.shape
        if params is None:
            params = self.generate_parameters(n, h, w)
        self.last_params = params
        mixed, lam = self.mix_images(images, params)
        lam = to_device(lam, images.device).view(-1, 1)
        perm = to_device(params["perm"], images.device)
        return mixed, lam * targets + (1 - lam) * targets[perm]

    def mix_images(self, images: torch.Tensor, params: Params) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


