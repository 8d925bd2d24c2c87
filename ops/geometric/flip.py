"""Horizontal and vertical flips."""
from __future__ import annotations

import torch

from ..base import GeometricOp, Params


class Flip(GeometricOp):
    """Mirror rows with probability ``p``: ``horizontal`` swaps left and right
    (``x.flip(-1)``), ``vertical`` swaps top and bottom (``x.flip(-2)``).

    >>> import torch
    >>> x = torch.arange(6, dtype=torch.uint8).view(1, 1, 2, 3)
    >>> Compose([Flip(p=1.0)], seed=0)(x).tolist()   # doctest: +SKIP
    [[[[2, 1, 0], [5, 4, 3]]]]
    """

    def __init__(self, horizontal: bool = True, vertical: bool = False, p: float = 0.5, seed: int | None = None):
        super().__init__(p, seed)
        if not (horizontal or vertical):
            raise ValueError("Flip needs horizontal=True or vertical=True, got both False")
        self.horizontal, self.vertical = bool(horizontal), bool(vertical)

    def _matrices(self, params: Params, height: int, width: int) -> torch.Tensor:
        n = params["apply"].shape[0]
        m = torch.eye(3, dtype=torch.float64).repeat(n, 1, 1)
        if self.horizontal:
            m[:, 0, 0], m[:, 0, 2] = -1.0, width - 1.0
        if self.vertical:
            m[:, 1, 1], m[:, 1, 2] = -1.0, height - 1.0
        return m
