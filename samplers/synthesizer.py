"""The synthesizer contract: choose seeds and partners in a class reservoir, then
interpolate ``x_new = x_i + u·(x_j − x_i)`` on the reservoir's device.

For ``count`` new rows of class ``c``, a synthesizer's ``choose`` picks the seed rows
``x_i``, the partner rows ``x_j`` and ``u``; :meth:`Synthesizer.synthesize` does the
arithmetic and records provenance (seed and partner ``(shard, key)``, ``u``).

Neighbour space: ``neighbour_space=`` (see ``neighbour_space``) makes the partner
search run in an embedding (a thumbnail, a random projection or an encoder)
while ``x_i``, ``x_j`` and the new row stay full-resolution pixels; the pixel
float copy and pixel distance matrix of the reservoir are then never built.

Few samples: with ``n`` samples of a class and ``n ≤ k``, ``k`` drops to ``n − 1``
(a warning, once per class); with ``n = 1`` the sample is repeated, since there is
no segment to draw from.
"""
from __future__ import annotations

import numbers
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from streamaug.core.row_blend import opencv_blend
from streamaug.core.transfer import to_device

from .class_reservoir import ClassReservoir
from .neighbour_space import EmbeddingCache, resolve_space
from .neighbour_tables import NeighbourTables, pool_search, same_class_search

Entry = tuple[str, str]          # (shard url, sample key)


@dataclass
class Choice:
    """Seeds and partners chosen for ``count`` new rows: their row numbers in ``source``
    (the class's or the pool's rows, flattened), read where they are by ``interpolate``."""
    source: torch.Tensor
    seeds: np.ndarray
    partners: np.ndarray
    u: np.ndarray
    seed_entries: list[Entry]
    partner_entries: list[Entry | None]


@dataclass
class Synthetic:
    values: torch.Tensor                  # (count, *shape), float32 or uint8 (see ``synthesize``)
    seed_entries: list[Entry]
    partner_entries: list[Entry | None]   # None: a plain repeat of the seed
    u: np.ndarray


INTERPOLATE_ROWS = 8          # rows interpolated at a time on the CPU: their float temporaries stay in cache


SYNTHETIC_DTYPES = (torch.float32, torch.uint8)


def as_dtype(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``values`` in ``dtype`` (one of ``SYNTHETIC_DTYPES``); floats become uint8 rounded and
    clamped to 0..255."""
    if dtype not in SYNTHETIC_DTYPES:
        raise ValueError(f"synthetic rows are made as torch.float32 or torch.uint8, got dtype={dtype!r}")
    if dtype == torch.uint8 and values.is_floating_point():
        return values.round().clamp_(0, 255).to(torch.uint8)
    return values.to(dtype)


def interpolate(source: torch.Tensor, seeds: np.ndarray, partners: np.ndarray, u: np.ndarray,
                dtype: torch.dtype) -> torch.Tensor:
    """``x_i + u·(x_j − x_i)`` per row, ``x_i = source[seeds]``, ``x_j = source[partners]``,
    returned in ``dtype`` (see :func:`as_dtype`). uint8 rows into uint8 on the CPU: one
    OpenCV pass per row where OpenCV imports (``core.row_blend``; it rounds
    ``(1 − u)·x_i + u·x_j`` summed in float, so a tie can round one level the other way).
    Otherwise in float32 arithmetic, ``INTERPOLATE_ROWS`` rows at a time on the CPU, so a
    224² batch's float temporaries stay in cache; the numbers are the whole-tensor formula's."""
    as_dtype(source[:0], dtype)                                   # refuses a dtype it cannot make
    if dtype == torch.uint8 and source.dtype == torch.uint8 and source.device.type == "cpu":
        blend = opencv_blend()
        if blend is not None:
            return blend(source.contiguous(), seeds.tolist(), partners.tolist(), (1.0 - np.asarray(u)).tolist())
    ut = to_device(torch.from_numpy(np.asarray(u, dtype=np.float32)), source.device).view(-1, 1)
    rows_i, rows_j = (to_device(torch.from_numpy(np.asarray(r, dtype=np.int64)), source.device)
                      for r in (seeds, partners))
    out = torch.empty((len(rows_i), *source.shape[1:]), dtype=dtype, device=source.device)
    step = INTERPOLATE_ROWS if source.device.type == "cpu" else max(1, len(rows_i))
    for a in range(0, len(rows_i), step):
        lo = source[rows_i[a:a + step]].float()
        out[a:a + step] = as_dtype(lo.add_(ut[a:a + step] * (source[rows_j[a:a + step]].float() - lo)), dtype)
    return out


def take(members: torch.Tensor, entries: list[Entry], idx: np.ndarray) -> tuple[torch.Tensor, list[Entry]]:
    return members[to_device(torch.from_numpy(idx), members.device)], [entries[i] for i in idx.tolist()]


def positive_int(name: str, value) -> int:
    """``value`` as an int >= 1 (numpy integers too, as imbalanced-learn takes them), else refused naming it."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return int(value)



def class_label(c: int, names: list[str] | None) -> str:
    """``class 3`` or, with the index's names (and not just the id again), ``class 3 ('dog')``."""
    return f"class {c} ({names[c]!r})" if names and c < len(names) and names[c] != str(c) else f"class {c}"

class Synthesizer:
    """Base: ``choose`` seeds and partners for class ``c``; ``synthesize`` interpolates."""

    uses_all_classes = False       # True: choose() reads other classes' samples (reservoir.pool())
    class_names: list[str] | None = None   # set when bound to a loader with an index (for messages)

    def __init__(self, k_neighbors: int = 5, neighbour_space=None):
        self.k_neighbors = positive_int("k_neighbors", k_neighbors)
        self.neighbour_space = resolve_space(neighbour_space)
        self._embeddings = EmbeddingCache(self.neighbour_space) if self.neighbour_space is not None else None
        self._tables = NeighbourTables()
        self._warned: set[tuple[str, int]] = set()

    def effective_k(self, n: int, c: int) -> int:
        if n <= self.k_neighbors and ("k", c) not in self._warned:
            self._warned.add(("k", c))
            warnings.warn(f"{class_label(c, self.class_names)} has {n} samples in the reservoir, fewer than k_neighbors+1="
                          f"{self.k_neighbors + 1}; using k={n - 1}"
                          + (" (the single sample is repeated)" if n == 1 else ""), RuntimeWarning, stacklevel=3)
        return min(self.k_neighbors, n - 1)

    def prepare(self, reservoir: ClassReservoir, classes: list[int]) -> None:
        """Build what ``classes`` need (neighbour tables of a fixed reservoir, else embeddings
        or pixel distances) now; it is otherwise built when a class is first synthesized. A
        class with too few samples for ``k_neighbors`` is warned about here, once, not in
        every worker."""
        for c in classes:
            n = int(reservoir.size[c])
            if n:
                k = self.effective_k(n, c)
                if k and reservoir.fixed:
                    self.same_class_neighbours(reservoir, c, k, np.zeros(0, dtype=np.int64))
                elif n > 1:
                    if self._embeddings is not None:
                        self._embeddings.embeddings(reservoir, c)
                    else:
                        reservoir.distances(c)

    def synthesize(self, reservoir: ClassReservoir, c: int, count: int, rng: np.random.Generator,
                   dtype: torch.dtype = torch.float32) -> Synthetic:
        """``count`` new rows of class ``c`` in ``dtype`` (float32, or uint8 rounded and clamped)."""
        members = reservoir.members(c)
        n = len(members)
        if n == 0:
            raise ValueError(f"{class_label(c, self.class_names)} has no samples in the reservoir yet; nothing to "
                             "synthesize from")
        # rows are taken from the stored (uint8) members and made float a few at a time (interpolate):
        # no float copy of the class (in pixel space, the distance table keeps its own, when it fits)
        flat = members.flatten(1)
        k = self.effective_k(n, c)
        if k == 0:
            rows, entries = take(flat, reservoir.entries[c], np.zeros(count, dtype=np.int64))
            return Synthetic(as_dtype(rows, dtype).view(count, *members.shape[1:]), entries, [None] * count,
                             np.zeros(count))
        ch = self.choose(reservoir, c, flat, k, count, rng)
        values = interpolate(ch.source, ch.seeds, ch.partners, ch.u, dtype)
        return Synthetic(values.view(count, *members.shape[1:]), ch.seed_entries, ch.partner_entries, ch.u)

    def choose(self, reservoir: ClassReservoir, c: int, flat: torch.Tensor, k: int, count: int,
               rng: np.random.Generator) -> Choice:
        raise NotImplementedError

    def same_class_neighbours(self, reservoir: ClassReservoir, c: int, k: int, seeds: np.ndarray) -> np.ndarray:
        """(len(seeds), k) class-local indices of each seed's k nearest same-class members, in
        the neighbour space when one is set, else in pixels (see ``neighbour_tables``)."""
        if reservoir.fixed:
            table = self._tables.lookup(("same", c, k), reservoir.version[c],
                                        lambda: same_class_search(reservoir, c, k, None, self._embeddings))
            return table[seeds]
        return same_class_search(reservoir, c, k, seeds, self._embeddings)

    def pool_neighbours(self, reservoir: ClassReservoir, c: int, m: int, rows: np.ndarray | None) -> np.ndarray:
        """(len(rows), m) indices into ``reservoir.pool()`` of the m nearest points of any class
        to class ``c``'s members ``rows`` (all for ``None``), each member itself excluded.
        A table of all members is kept until the reservoir changes, fed from the stream too:
        the calls between two writes (a batch's parts) share it."""
        if reservoir.fixed or rows is None:
            table = self._tables.lookup(("pool", c, m), reservoir.pool_version(),
                                        lambda: pool_search(reservoir, c, m, None))
            return table if rows is None else table[rows]
        return pool_search(reservoir, c, m, rows)

    def same_class_choice(self, reservoir, c, flat, seeds: np.ndarray, k: int, rng, u: np.ndarray) -> Choice:
        """Partners: one of each seed's k nearest same-class reservoir points."""
        knn = self.same_class_neighbours(reservoir, c, k, seeds)
        partners = knn[np.arange(len(seeds)), rng.integers(0, k, len(seeds))]
        entries = reservoir.entries[c]
        return Choice(flat, seeds, partners, u, [entries[i] for i in seeds.tolist()],
                      [entries[i] for i in partners.tolist()])

    def __repr__(self) -> str:
        space = f", neighbour_space={self.neighbour_space!r}" if self.neighbour_space is not None else ""
        return f"{type(self).__name__}(k_neighbors={self.k_neighbors}{space})"
