"""Translation by a fraction of the image size."""
from __future__ import annotations

import numpy as np
import torch

from ..base import GeometricOp, Params, check_range
from .affine_matrix import translation


class Translate(GeometricOp):
    """Shift by ``U(x)·W`` pixels right and ``U(y)·H`` down (a number ``t`` means ``(-t, t)``)."""

    def __init__(self, x=0.1, y=0.1, p: float = 1.0, seed: int | None = None):
        super().__init__(p, seed)
        self.x = check_range("translate x", x, symmetric=True)
        self.y = check_range("translate y", y, symmetric=True)

    def _draw(self, n: int, height: int, width: int) -> Params:
        return {"dx": torch.from_numpy(self.rng.uniform(*self.x, n) * width),
                "dy": torch.from_numpy(self.rng.uniform(*self.y, n) * height)}

    def _matrices(self, params: Params, height: int, width: int) -> np.ndarray:
        return translation(params["dx"], params["dy"])
