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

    param_names = (*MixOp.param_names, "box")

    def checked_replay(self, params: Params, n: int, height: int, width: int) -> Params:
        """As :meth:`MixOp.checked_replay`, and ``box`` rows ``(y0, y1, x0, x1)`` inside this
        batch's ``height × width`` (a box drawn for a larger image would paste a clipped area
        but weigh the label by the unclipped one)."""
        params = super().checked_replay(params, n, height, width)
        box = params["box"]
        if box.shape != (n, 4) or box.is_floating_point() or box.dtype == torch.bool:
            raise ValueError(f"CutMix params['box'] must be {n} integer rows (y0, y1, x0, x1), got {box.dtype} "
                             f"{tuple(box.shape)}")
        y0, y1, x0, x1 = box.long().unbind(1)
        outside = ~((0 <= y0) & (y0 <= y1) & (y1 <= height) & (0 <= x0) & (x0 <= x1) & (x1 <= width))
        if bool(outside.any()):
            row = int(outside.nonzero()[0])
            raise ValueError(f"CutMix params['box'][{row}] = {box[row].tolist()} is not a box (y0, y1, x0, x1) inside "
                             f"these {height}x{width} images: were the params drawn for images of another size?")
        return {**params, "box": box.long()}

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
