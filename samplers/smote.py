"""Streaming SMOTE (Chawla et al. 2002) over a class reservoir.

Each synthetic point is ``x_new = x_i + u·(x_j − x_i)`` with ``x_i`` a seed drawn
uniformly from the class's reservoir, ``x_j`` one of its ``k`` nearest
same-class neighbours there (``torch.cdist``), and ``u ~ U[0, 1)``. The label is
the seed's class.
"""
from __future__ import annotations

from .synthesizer import Synthesizer


class SMOTE(Synthesizer):
    """Seeds uniform over the class reservoir; partner among its k nearest same-class points."""

    def choose(self, reservoir, c, flat, k, count, rng):
        seeds = rng.integers(0, len(flat), count)
        return self.same_class_choice(reservoir, c, flat, seeds, k, rng, rng.random(count))
