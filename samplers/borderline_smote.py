"""Borderline-SMOTE (Han et al. 2005), kinds 1 and 2, over the class reservoirs."""
from __future__ import annotations

import numpy as np

from .neighbour_tables import other_class_share, pool_labels
from .synthesizer import Choice, Synthesizer, positive_int


class BorderlineSMOTE(Synthesizer):
    """SMOTE seeded only from *danger* samples: those whose ``m_neighbors`` nearest
    points (all classes, in the reservoirs) are at least half, but not all, from
    other classes (imbalanced-learn's rule). A class held as a subset counts for the
    samples it stands for (see ``neighbour_tables.other_class_share``).

    * ``kind="borderline-1"``: partner among the k nearest same-class points.
    * ``kind="borderline-2"``: partner among the k nearest points of any class;
      an other-class partner gets ``u ~ U[0, 0.5)`` so the point stays nearer its seed.

    The label is always the seed's class. When a class has no danger samples in
    the reservoir, all its members seed (imbalanced-learn would add nothing, but
    the stream must still meet the class's target count).
    """

    uses_all_classes = True        # looks at other classes' samples: the reservoir fills every class

    KINDS = ("borderline-1", "borderline-2")

    def __init__(self, k_neighbors: int = 5, m_neighbors: int = 10, kind: str = "borderline-1"):
        super().__init__(k_neighbors)
        if kind not in self.KINDS:
            raise ValueError(f"kind must be one of {self.KINDS}, got {kind!r}")
        self.m_neighbors, self.kind = positive_int("m_neighbors", m_neighbors), kind

    def danger(self, reservoir, c: int, flat) -> np.ndarray:
        """Class-local indices of danger samples."""
        m = min(self.m_neighbors, int(reservoir.size.sum()) - 1)
        share = other_class_share(reservoir, c, self.pool_neighbours(reservoir, c, m, None))
        return np.flatnonzero((share >= 0.5) & (share < 1.0 - 1e-9))

    def prepare(self, reservoir, classes: list[int]) -> None:
        """Also the danger and (borderline-2) any-class neighbour tables, for a fixed reservoir."""
        super().prepare(reservoir, classes)
        total = int(reservoir.size.sum())
        if reservoir.fixed and total > 1:
            for c in classes:
                if reservoir.size[c]:
                    self.danger(reservoir, c, None)
                if reservoir.size[c] > 1 and self.kind == "borderline-2":
                    k = self.effective_k(int(reservoir.size[c]), c)
                    self.pool_neighbours(reservoir, c, min(k, total - 1), None)

    def choose(self, reservoir, c, flat, k, count, rng):
        candidates = self.danger(reservoir, c, flat)
        if len(candidates) == 0:
            candidates = np.arange(len(flat))
        seeds = candidates[rng.integers(0, len(candidates), count)]
        if self.kind == "borderline-1":
            return self.same_class_choice(reservoir, c, flat, seeds, k, rng, rng.random(count))
        labels = pool_labels(reservoir)
        in_pool = seeds + reservoir.pool_offset(c)
        kk = min(k, len(labels) - 1)
        knn = self.pool_neighbours(reservoir, c, kk, seeds)
        partners = knn[np.arange(count), rng.integers(0, kk, count)]
        same = labels[partners] == c
        u = np.where(same, rng.random(count), 0.5 * rng.random(count))
        entries = reservoir.pool_entries()
        rows, where = reservoir.pool_rows(np.concatenate([in_pool, partners]))    # only the rows used
        return Choice(rows, where[:count], where[count:], u, [entries[i] for i in in_pool.tolist()],
                      [entries[i] for i in partners.tolist()])

    def __repr__(self) -> str:
        return f"BorderlineSMOTE(k_neighbors={self.k_neighbors}, m_neighbors={self.m_neighbors}, kind={self.kind!r})"
