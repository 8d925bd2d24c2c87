"""ADASYN (He et al. 2008) over the class reservoirs."""
from __future__ import annotations

import numpy as np

from .neighbour_tables import other_class_share
from .synthesizer import Synthesizer, positive_int


class ADASYN(Synthesizer):
    """Seeds drawn with weight ∝ the share of other-class points among each sample's
    ``n_neighbors`` nearest (all classes, in the reservoirs): harder samples seed
    more. Partners are same-class k nearest, ``u ~ U[0, 1)``. When no sample of the
    class has an other-class neighbour, seeds are uniform (imbalanced-learn raises
    there; the stream must still meet its target). A class held as a subset counts for
    the samples it stands for (see ``neighbour_tables.other_class_share``)."""

    uses_all_classes = True        # looks at other classes' samples: the reservoir fills every class

    def __init__(self, k_neighbors: int = 5, n_neighbors: int = 5):
        super().__init__(k_neighbors)
        self.n_neighbors = positive_int("n_neighbors", n_neighbors)

    def weights(self, reservoir, c: int, flat) -> np.ndarray:
        m = min(self.n_neighbors, int(reservoir.size.sum()) - 1)
        ratio = other_class_share(reservoir, c, self.pool_neighbours(reservoir, c, m, None))
        total = ratio.sum()
        return ratio / total if total > 0 else np.full(len(ratio), 1.0 / len(ratio))

    def prepare(self, reservoir, classes: list[int]) -> None:
        """Also the seed weights' neighbour tables, for a fixed reservoir."""
        super().prepare(reservoir, classes)
        if reservoir.fixed and reservoir.size.sum() > 1:
            for c in classes:
                if reservoir.size[c]:
                    self.weights(reservoir, c, None)

    def choose(self, reservoir, c, flat, k, count, rng):
        seeds = rng.choice(len(flat), size=count, p=self.weights(reservoir, c, flat))
        return self.same_class_choice(reservoir, c, flat, seeds, k, rng, rng.random(count))

    def __repr__(self) -> str:
        return f"ADASYN(k_neighbors={self.k_neighbors}, n_neighbors={self.n_neighbors})"
