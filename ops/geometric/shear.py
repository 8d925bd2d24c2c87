"""Shear about the image centre, in degrees, along x and y."""
from __future__ import annotations

import numpy as np
import torch

from ..base import GeometricOp, Params, check_range
from .affine_matrix import about_center, shear


class Shear(GeometricOp):
    """``x' = x + tan(sx)·(y - cy)``, then ``y' = y + tan(sy)·(x - cx)``; ``sx`` from
    ``U(x)``, ``sy`` from ``U(y)`` (a number ``d`` means ``(-d, d)``), in degrees."""

    def __init__(self, x=15.0, y=0.0, p: float = 1.0, seed: int | None = None):
        super().__init__(p, seed)
        self.x = check_range("shear x", x, symmetric=True)
        self.y = check_range("shear y", y, symmetric=True)
        for name, (lo, hi) in (("x", self.x), ("y", self.y)):
            if max(abs(lo), abs(hi)) >= 90:
                raise ValueError(f"shear {name} must be within (-90, 90) degrees, got {(lo, hi)}")

    def _draw(self, n: int, height: int, width: int) -> Params:
        return {"shear_x": torch.from_numpy(self.rng.uniform(*self.x, n)),
                "shear_y": torch.from_numpy(self.rng.uniform(*self.y, n))}

    def _matrices(self, params: Params, height: int, width: int) -> np.ndarray:
        return about_center(shear(params["shear_x"], params["shear_y"]), height, width)
