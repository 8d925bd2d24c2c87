"""Where SMOTE looks for neighbours: an embedding, while the new image is still
interpolated in pixels.

SMOTE's partner for a seed is one of its ``k`` nearest same-class samples. In raw
pixels (150,528 dimensions at 224²) that search is both slow and, for images, a
poor notion of "near". A *neighbour space* maps reservoir rows to a short vector;
the kNN runs there, and the synthetic image is still ``x_i + u·(x_j − x_i)`` of
the full-resolution pixels of the chosen pair.

Spaces (``SMOTE(neighbour_space=...)``):

* ``"thumbnail"`` / :class:`Thumbnail` ``(size)``: area-downsampled images (8×8 by default);
* ``"projection"`` / :class:`RandomProjection` ``(dim, seed)``: a fixed seeded Gaussian
  projection (Johnson-Lindenstrauss: distances kept within a small factor);
* any callable ``images (N, C, H, W) -> (N, d)`` (e.g. a frozen encoder), wrapped in :class:`Encoder`.

>>> from streamaug.samplers import SMOTE
>>> SMOTE(neighbour_space="thumbnail")
SMOTE(k_neighbors=5, neighbour_space=Thumbnail(size=(8, 8)))

Embeddings are cached per reservoir slot and recomputed only for slots whose
``(shard, key)`` changed, so a full reservoir costs a few embeddings per batch.
"""
from __future__ import annotations

import numbers

import torch

from streamaug.core.seeding import torch_generator


class NeighbourSpace:
    """Base: ``embed(rows)`` maps reservoir rows (N, C, H, W) or (N, D), any dtype, to float (N, d)."""

    def embed(self, rows: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class Thumbnail(NeighbourSpace):
    """Area-downsample each image to ``size`` (pixel values scaled to [0, 1]) and flatten."""

    def __init__(self, size: int | tuple[int, int] = 8):
        size = (size, size) if isinstance(size, numbers.Integral) else tuple(size)
        if len(size) != 2 or not all(isinstance(s, numbers.Integral) and s >= 1 for s in size):
            raise ValueError(f"size must be an int >= 1 or an (h, w) pair of them, got {size!r}")
        self.size = (int(size[0]), int(size[1]))

    def embed(self, rows: torch.Tensor) -> torch.Tensor:
        if rows.ndim != 4:
            raise ValueError(f"Thumbnail needs image rows (N, C, H, W), got shape {tuple(rows.shape)}")
        x = rows.float()
        if rows.dtype == torch.uint8:
            x = x.div_(255.0)
        return torch.nn.functional.adaptive_avg_pool2d(x, self.size).flatten(1)

    def __repr__(self) -> str:
        return f"Thumbnail(size={self.size})"


class RandomProjection(NeighbourSpace):
    """``x·R`` with ``R`` (D, dim) ~ N(0, 1/dim), drawn once from ``seed`` (its own
    generator, never the global one) for the first input size seen, on the rows' device."""

    def __init__(self, dim: int = 64, seed: int = 0):
        if not isinstance(dim, numbers.Integral) or isinstance(dim, bool) or dim < 1:
            raise ValueError(f"dim must be an int >= 1, got {dim!r}")
        if not isinstance(seed, numbers.Integral) or isinstance(seed, bool):
            raise ValueError(f"seed must be an int, got {seed!r}")
        self.dim, self.seed = int(dim), int(seed)
        self._matrix: torch.Tensor | None = None

    def matrix(self, features: int, device: torch.device) -> torch.Tensor:
        if self._matrix is None or self._matrix.shape[0] != features:
            gen = torch_generator(self.seed, "neighbour_space", features)
            self._matrix = torch.randn(features, self.dim, generator=gen) / self.dim ** 0.5
        if self._matrix.device != device:
            self._matrix = self._matrix.to(device)
        return self._matrix

    def embed(self, rows: torch.Tensor) -> torch.Tensor:
        flat = rows.flatten(1).float()
        if rows.dtype == torch.uint8:
            flat = flat.div_(255.0)
        return flat @ self.matrix(flat.shape[1], flat.device)

    def __getstate__(self):          # picklable without the (large, re-derivable) matrix
        return {**self.__dict__, "_matrix": None}

    def __repr__(self) -> str:
        return f"RandomProjection(dim={self.dim}, seed={self.seed})"


class Encoder(NeighbourSpace):
    """A user-given ``fn(rows) -> (N, d)``, called without gradients."""

    def __init__(self, fn):
        if not callable(fn):
            raise ValueError(f"an encoder must be callable, got {fn!r}")
        self.fn = fn

    @torch.no_grad()
    def embed(self, rows: torch.Tensor) -> torch.Tensor:
        out = self.fn(rows)
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != rows.shape[0]:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"the neighbour-space encoder must return (N={rows.shape[0]}, d) features, got {got}")
        return out.float()

    def __repr__(self) -> str:
        from .stable_name import stable_name     # stable across processes, and tells encoders apart

        return f"Encoder({stable_name(self.fn)})"


NAMED = {"thumbnail": Thumbnail, "projection": RandomProjection}


def resolve_space(space) -> NeighbourSpace | None:
    """``None`` (pixels), a name in ``NAMED``, a :class:`NeighbourSpace`, or a callable encoder."""
    if space is None or isinstance(space, NeighbourSpace):
        return space
    if isinstance(space, str):
        if space not in NAMED:
            raise ValueError(f"neighbour_space must be None, one of {sorted(NAMED)}, a NeighbourSpace or a "
                             f"callable, got {space!r}")
        return NAMED[space]()
    if callable(space):
        return Encoder(space)
    raise ValueError(f"neighbour_space must be None, one of {sorted(NAMED)}, a NeighbourSpace or a callable, "
                     f"got {space!r}")


class EmbeddingCache:
    """Per-class embeddings of a reservoir's members, kept in step with its ``(shard, key)`` entries."""

    def __init__(self, space: NeighbourSpace):
        self.space = space
        self._owner: int | None = None
        self._rows: dict[int, torch.Tensor] = {}
        self._entries: dict[int, list] = {}

    def embeddings(self, reservoir, c: int) -> torch.Tensor:
        """(n, d) embeddings of class ``c``'s ``n`` members, recomputing only changed slots."""
        if self._owner != id(reservoir):
            self._owner, self._rows, self._entries = id(reservoir), {}, {}
        members = reservoir.members(c)
        n = len(members)
        entries = reservoir.entries[c][:n]
        cached = self._entries.get(c, [])
        changed = [i for i in range(n) if i >= len(cached) or cached[i] != entries[i]]
        if changed:
            new = self.space.embed(members[torch.tensor(changed, device=members.device)])
            table = self._rows.get(c)
            if table is None or table.shape[0] < n or table.shape[1] != new.shape[1]:     # (grows as the class)
                rows = min(reservoir.capacity, max(n, 2 * (0 if table is None else table.shape[0])))
                table = torch.zeros((rows, new.shape[1]), device=new.device, dtype=new.dtype)
                if c in self._rows and self._rows[c].shape[1] == new.shape[1]:
                    table[:len(self._rows[c])] = self._rows[c]
                self._rows[c] = table
            table[torch.tensor(changed, device=table.device)] = new.to(table.device)
            self._entries[c] = list(entries)
        return self._rows[c][:n]
