"""Random erasing: fill one box per row with a constant."""
from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from streamaug.core.transfer import to_device

from ..base import IntensityOp, Params, check_range


class RandomErasing(IntensityOp):
    """Erase a box of area ``U(scale)·H·W`` and log-uniform aspect ``ratio`` with ``value``
    (on the [0, 1] scale), placed uniformly inside the image (Zhong et al. 2017)."""

    def __init__(self, scale=(0.02, 0.33), ratio=(0.3, 3.3), value: float = 0.0, p: float = 0.5,
                 seed: int | None = None):
        super().__init__(p, seed)
        self.scale = check_range("scale", scale, low=0.0)
        self.ratio = check_range("ratio", ratio, low=1e-6)
        if self.scale[1] > 1:
            raise ValueError(f"scale must lie in [0, 1], got {scale!r}")
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value <= 1.0:
            raise ValueError(f"value must be a number in [0, 1], got {value!r}")
        self.value = float(value)

    def _draw(self, n: int, height: int, width: int) -> Params:
        area = self.rng.uniform(*self.scale, n) * height * width
        aspect = np.exp(self.rng.uniform(math.log(self.ratio[0]), math.log(self.ratio[1]), n))
        # (a box that rounds to no row or column erases nothing, as torchvision's: scale=(0, 0) is a no-op)
        h = np.clip(np.round(np.sqrt(area / aspect)), 0, height).astype(np.int64)
        w = np.clip(np.round(np.sqrt(area * aspect)), 0, width).astype(np.int64)
        y = (self.rng.random(n) * (height - h + 1)).astype(np.int64)
        x = (self.rng.random(n) * (width - w + 1)).astype(np.int64)
        return {"box": torch.from_numpy(np.stack([y, x, h, w], -1))}     # top, left, height, width

    def boxes(self, params: Params) -> torch.Tensor:
        box = params["box"].clone()
        box[~params["apply"], 2:] = 0
        return box

    def apply_torch(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        box = to_device(self.boxes(params), x.device)
        h, w = x.shape[-2:]
        ys = torch.arange(h, device=x.device).view(1, h, 1)
        xs = torch.arange(w, device=x.device).view(1, 1, w)
        top, left, bh, bw = (box[:, i].view(-1, 1, 1) for i in range(4))
        inside = (ys >= top) & (ys < top + bh) & (xs >= left) & (xs < left + bw)
        return x.masked_fill(inside.unsqueeze(1), self.value)

    dali_argument_names = ("anchor", "shape")

    def dali_arguments(self, params: Params) -> dict[str, list[np.ndarray]]:
        box = self.boxes(params).numpy()
        return {"anchor": [b[:2].astype(np.float32) for b in box], "shape": [b[2:].astype(np.float32) for b in box]}

    dali_keeps_dtype = True

    def dali_apply(self, fn, images, arguments: dict, uint8: bool):
        return fn.erase(images, anchor=arguments["anchor"], shape=arguments["shape"], axis_names="HW",
                        fill_value=float(np.floor(self.value * 255.0 + 0.5)) if uint8 else self.value)   # from_float's rounding
