"""Rotation about the image centre; positive degrees turn counter-clockwise."""
from __future__ import annotations

import numpy as np
import torch

from ..base import GeometricOp, Params, check_range
from .affine_matrix import about_center, rotation


class Rotate(GeometricOp):
    """Rotate each row by an angle drawn from ``U(degrees)`` (a number ``d`` means
    ``(-d, d)``). Positive is counter-clockwise on every backend; output size is
    kept, corners fill with 0, resampling is bilinear."""

    def __init__(self, degrees=30.0, p: float = 1.0, seed: int | None = None):
        super().__init__(p, seed)
        self.degrees = check_range("degrees", degrees, symmetric=True)

    def _draw(self, n: int, height: int, width: int) -> Params:
        return {"degrees": torch.from_numpy(self.rng.uniform(*self.degrees, n))}

    def _matrices(self, params: Params, height: int, width: int) -> np.ndarray:
        return about_center(rotation(params["degrees"]), height, width)
