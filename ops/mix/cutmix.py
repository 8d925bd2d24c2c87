"""CutMix (Yun et al. 2019): paste a partner's box; the label weight is the pasted area."""
from __future__ import annotations

import numpy as np
import torch

from streamaug.core.transfer import to_device

from ..base import Params
from .mix_base import MixOp


class CutMix(MixOp):
    """Paste a box of ``π(i)`` into row ``i``. The box has side ``sqrt(1 − λ)`` of the
    image, ``λ ~ Beta(α, α)``, and a uniformly drawn centre; it is clipped to the
    image, and the target weight is the area actually pasted: ``λ' = 1 − box/(H·W)``.
    ``partners=``, ``label_rule=``, ``kappa=``, ``tau=``, ``class_counts=``: see
    :class:`~streamaug.ops.mix.mix_base.MixOp` (Balanced-MixUp partners, Remix labels;
    Remix uses the pasted-area ``λ'``)."""

    def __init__(self, alpha: float = 1.0, p: float = 1.0, num_classes: int | None = None, seed: int | None = None,
                 **balance):
        super().__init__(alpha, p, num_classes, seed, **balance)

    def _draw(self, n: int, height: int, width: int, labels: torch.Tensor | None = None) -> Params:
        params = super()._draw(n, height, width, labels)
        cut = np.sqrt(1.0 - params["lam"].double().numpy())
        cy, cx = self.rng.random(n) * height, self.rng.random(n) * width
        bh, bw = cut * height, cut * width
        y0 = np.clip(np.round(cy - bh / 2), 0, height).astype(np.int64)
        y1 = np.clip(np.round(cy + bh / 2), 0, height).astype(np.int64)
        x0 = np.clip(np.round(cx - bw / 2), 0, width).astype(np.int64)
        x1 = np.clip(np.round(cx + bw / 2), 0, width).astype(np.int64)
        params["box"] = torch.from_numpy(np.stack([y0, y1, x0, x1], -1))
        return params

    def mix_images(self, images: torch.Tensor, params: Params) -> tuple[torch.Tensor, torch.Tensor]:
        n, _, h, w = images.shape
        box = params["box"] * params["apply"].view(-1, 1)             # rows not mixed paste nothing
        y0, y1, x0, x1 = to_device(box, images.device).view(n, 4, 1, 1).unbind(1)
        ys = torch.arange(h, device=images.device).view(1, h, 1)
        xs = torch.arange(w, device=images.device).view(1, 1, w)
        inside = (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)
        mixed = torch.where(inside.unsqueeze(1), images[to_device(params["perm"], images.device)], images)
        # the pasted area, from the box on the host (the same count as ``inside``, no device read-back)
        area = (box[:, 1] - box[:, 0]) * (box[:, 3] - box[:, 2])
        return mixed, 1.0 - area.float() / float(h * w)
