"""Horizontal and vertical flips."""
from __future__ import annotations

import numpy as np

from ..base import GeometricOp, Params
from .affine_matrix import scaling, translation


class Flip(GeometricOp):
    """Mirror rows with probability ``p``: ``horizontal`` swaps left and right
    (``x.flip(-1)``), ``vertical`` swaps top and bottom (``x.flip(-2)``).

    >>> import torch
    >>> from streamaug.ops import Compose
    >>> x = torch.arange(6, dtype=torch.uint8).view(1, 1, 2, 3)
    >>> Compose([Flip(p=1.0)], seed=0)(x).tolist()
    [[[[2, 1, 0], [5, 4, 3]]]]
    """

    def __init__(self, horizontal: bool = True, vertical: bool = False, p: float = 0.5, seed: int | None = None):
        super().__init__(p, seed)
        for name, flag in (("horizontal", horizontal), ("vertical", vertical)):
            if not isinstance(flag, (bool, np.bool_)):
                raise ValueError(f"Flip's {name} must be a bool, got {flag!r}")
        if not (horizontal or vertical):
            raise ValueError("Flip needs horizontal=True or vertical=True, got both False")
        self.horizontal, self.vertical = bool(horizontal), bool(vertical)

    def _matrices(self, params: Params, height: int, width: int) -> np.ndarray:
        sx, tx = (-1.0, width - 1.0) if self.horizontal else (1.0, 0.0)
        sy, ty = (-1.0, height - 1.0) if self.vertical else (1.0, 0.0)
        n = len(params["apply"])
        return translation(np.full(n, tx), np.full(n, ty)) @ scaling(np.full(n, sx), np.full(n, sy))
