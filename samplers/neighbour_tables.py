"""Nearest-neighbour indices for the synthesizers, kept on the host.

With an index the balancer fills its reservoirs once and marks them ``fixed``
(:class:`~streamaug.samplers.class_reservoir.ClassReservoir`), so a class's neighbours
never change. They are then searched once, for every member, on the reservoir's device
(``torch.cdist`` and ``topk``, see :mod:`.neighbours`), and kept as NumPy arrays keyed by
the reservoir's version: a batch's partners are a host lookup, and synthesizing on a GPU
sends indices to the device without ever reading device data back, so the loader never
waits for the training step queued before it. (Before, every batch searched its seeds'
neighbours on the device and read them back: one wait for the device per class and batch.)

A streamed reservoir (no index) changes with every batch, so there the search runs for the
batch's seeds only and its result is read back.

The two paths never mix for one reservoir, so a run and its resume choose the same
neighbours. Ties between equally distant points go the way ``topk`` breaks them.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from streamaug.core.transfer import to_device

from .neighbours import nearest, nearest_by_distance


class NeighbourTables:
    """Tables by name, each rebuilt when the version it was built for is no longer current."""

    def __init__(self):
        self._tables: dict[tuple, tuple[object, np.ndarray]] = {}

    def lookup(self, name: tuple, version, build: Callable[[], np.ndarray]) -> np.ndarray:
        hit = self._tables.get(name)
        if hit is None or hit[0] != version:
            hit = self._tables[name] = (version, build())
        return hit[1]


def same_class_search(reservoir, c: int, k: int, rows: np.ndarray | None, embeddings=None) -> np.ndarray:
    """(len(rows), k) class-local indices of the ``k`` nearest members of class ``c`` to its
    members ``rows`` (all of them for ``None``), each row's own excluded; in ``embeddings``
    (an ``EmbeddingCache``) when given, else by pixel distance."""
    n = int(reservoir.size[c])
    host = torch.from_numpy(np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64))
    if embeddings is None:
        dist = reservoir.distances(c)
        q = to_device(host, dist.device)
        return nearest_by_distance(dist[q], k, exclude=q).cpu().numpy()
    emb = embeddings.embeddings(reservoir, c)
    q = to_device(host, emb.device)
    return nearest(emb[q], emb, k, exclude=q).cpu().numpy()


def pool_search(reservoir, c: int, m: int, rows: np.ndarray | None) -> np.ndarray:
    """(len(rows), m) indices into ``reservoir.pool()`` of the ``m`` nearest points of any
    class to class ``c``'s members ``rows`` (all for ``None``), each member itself excluded."""
    pool, _ = reservoir.pool()
    n = int(reservoir.size[c])
    local = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
    own = to_device(torch.from_numpy(local + reservoir.pool_offset(c)), pool.device)
    return nearest(pool[own], pool, m, exclude=own).cpu().numpy()


def pool_labels(reservoir) -> np.ndarray:
    """The class of every row of ``reservoir.pool()``, on the host."""
    return np.repeat(np.arange(reservoir.num_classes), reservoir.size)


def other_class_share(reservoir, c: int, neighbours: np.ndarray) -> np.ndarray:
    """For each row of ``neighbours`` (class ``c``'s members' m nearest pool rows, nearest
    first), the share of its m nearest *samples* that are of other classes. A class the
    reservoir holds a subset of stands for more samples than it holds: each member counts
    ``represents / size`` (1 for a class held whole), and the nearest members are taken until they
    stand for m samples (``reservoir.represents``: the class's count from an index, else the most
    of it one epoch of the stream held). Counting members alone, a majority class cut to ``reservoir_size``
    thinned every neighbourhood, and Borderline-SMOTE's danger set and ADASYN's weights
    drifted from imbalanced-learn's (30 danger samples against its 71, 17 in common, for a
    majority of 3,000 kept at 512)."""
    m = neighbours.shape[1]
    if m == 0:
        return np.zeros(len(neighbours))
    held = np.maximum(reservoir.size, 1)
    stands_for = np.repeat(np.maximum(reservoir.represents, reservoir.size) / held, reservoir.size)[neighbours]
    before = np.cumsum(stands_for, axis=1) - stands_for
    counted = np.clip(m - before, 0.0, stands_for)       # each counts until m samples are stood for
    other = pool_labels(reservoir)[neighbours] != c
    return (counted * other).sum(1) / m
