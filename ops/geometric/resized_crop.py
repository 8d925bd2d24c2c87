"""Random resized crop, as an affine map, so it fuses with the other geometric ops."""
from __future__ import annotations

import math

import numpy as np
import torch

from ..base import GeometricOp, Params, check_range
from .affine_matrix import scaling, translation


class RandomResizedCrop(GeometricOp):
    """Crop a box of area ``U(scale)·H·W`` and aspect ratio log-uniform in ``ratio``,
    then stretch it to the full (unchanged) output size. Boxes are drawn as in
    torchvision: up to 10 tries, then a centre crop of the clamped ratio."""

    def __init__(self, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), p: float = 1.0, seed: int | None = None):
        super().__init__(p, seed)
        self.scale = check_range("scale", scale, low=0.0)
        self.ratio = check_range("ratio", ratio, low=1e-6)
        if self.scale[1] > 1 or self.scale[0] <= 0:
            raise ValueError(f"scale must lie in (0, 1], got {scale!r}")

    def _box(self, height: int, width: int) -> tuple[float, float, float, float]:
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * self.rng.uniform(*self.scale)
            aspect = math.exp(self.rng.uniform(*log_ratio))
            w, h = math.sqrt(target * aspect), math.sqrt(target / aspect)
            if 1 <= w <= width and 1 <= h <= height:
                return self.rng.uniform(0, width - w), self.rng.uniform(0, height - h), w, h
        aspect = np.clip(width / height, *self.ratio)
        w, h = (width, width / aspect) if width / height < aspect else (height * aspect, height)
        return (width - w) / 2, (height - h) / 2, w, h

    def _draw(self, n: int, height: int, width: int) -> Params:
        boxes = np.array([self._box(height, width) for _ in range(n)], dtype=np.float64).reshape(n, 4)
        return {"box": torch.from_numpy(boxes)}          # x0, y0, w, h in pixels (edges)

    def _matrices(self, params: Params, height: int, width: int) -> torch.Tensor:
        x0, y0, w, h = params["box"].unbind(-1)
        # Edges map to edges: source edge coordinate u = x + 0.5 → (u - x0)·W/w.
        sx, sy = width / w, height / h
        half = torch.full_like(sx, -0.5)
        return translation(half, half) @ scaling(sx, sy) @ translation(0.5 - x0, 0.5 - y0)
