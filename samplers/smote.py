"""Streaming SMOTE (Chawla et al. 2002) over a class reservoir.

Each synthetic point is ``x_new = x_i + u·(x_j − x_i)`` with ``x_i`` a seed drawn
uniformly from the class's reservoir, ``x_j`` one of its ``k`` nearest
same-class neighbours there (``torch.cdist``), and ``u ~ U[0, 1)``. The label is
the seed's class.

``SMOTE(neighbour_space="thumbnail" | "projection" | NeighbourSpace | callable)``
finds the ``k`` nearest in that embedding instead of in pixels; the new row is
still interpolated between the full-resolution pixels of the pair.
"""
from __future__ import annotations

from .synthesizer import Synthesizer


class SMOTE(Synthesizer):
    """Seeds uniform over the class reservoir; partner among its k nearest same-class points
    (in ``neighbour_space`` when given, else in pixels)."""

    def choose(self, reservoir, c, flat, k, count, rng):
        seeds = rng.integers(0, len(flat), count)
        return self.same_class_choice(reservoir, c, flat, seeds, k, rng, rng.random(count))
