"""Bounded per-class reservoirs of real samples, kept on the loader's device.

Each class keeps at most ``capacity`` samples, chosen by reservoir sampling
(Algorithm R) from everything seen so far, so memory is O(capacity × classes)
whatever the dataset size. A class's buffers (its samples, their float copy, their
distances) grow with what it holds, doubling up to ``capacity``, so a class of 5
samples costs 5 rows, not ``capacity`` (it cost ``capacity``: 3 GiB of buffers for 6 MiB
of pixels with 99 classes of 5 at 64×64). Entries remember their ``(shard, key)`` so
that the state can be saved as keys, not pixels.

Every write gives the class a new ``version`` (unique across reservoirs), so what is
derived from a class's members (distances, embeddings, neighbour tables) can tell
whether it is still current. A reservoir filled once from an index is marked
``fixed``: nothing is added to it afterwards, so the synthesizers build their
neighbour tables once and look them up on the host for every batch.
"""
from __future__ import annotations

import itertools

import numpy as np
import torch

from streamaug.core.threads import IntraOpThreads
from streamaug.core.transfer import to_device

_VERSIONS = itertools.count(1)

FLOAT_COPY_BYTES = 128 << 20


class ClassReservoir:
    def __init__(self, num_classes: int, capacity: int):
        if capacity < 2:
            raise ValueError(f"reservoir capacity must be >= 2, got {capacity}")
        self.num_classes, self.capacity = num_classes, capacity
        self.storage: dict[int, torch.Tensor] = {}
        self.size = np.zeros(num_classes, dtype=np.int64)
        self.seen = np.zeros(num_classes, dtype=np.int64)
        # how many samples each class's members stand for (other_class_share): the class's count
        # when filled from an index, the most of it one epoch streamed by when fed from the stream
        self.represents = np.zeros(num_classes, dtype=np.int64)
        self.entries: dict[int, list[tuple[str, str]]] = {c: [] for c in range(num_classes)}
        self._members: set[tuple[str, str]] = set()
        self._dist: dict[int, torch.Tensor] = {}
        self._float: dict[int, torch.Tensor] = {}
        self._dirty: dict[int, set[int]] = {}
        self.version = np.zeros(num_classes, dtype=np.int64)
        self.fixed = False               # set by the balancer once it has filled it from an index

    def pool_version(self) -> tuple[int, ...]:
        """Changes whenever any class changes (what tables over :meth:`pool` are keyed by)."""
        return tuple(self.version.tolist())

    def add(self, rows: torch.Tensor, labels: torch.Tensor, keys: list[str], urls: list[str],
            rng: np.random.Generator) -> None:
        """Offer ``rows`` (N, ...) to their classes' reservoirs, in order (Algorithm R)."""
        if self.fixed:
            raise RuntimeError("this reservoir was filled from the index and is fixed; nothing is added to it")
        labels_np = labels.detach().cpu().numpy()
        draws = rng.random(len(labels_np))
        writes: dict[int, dict[int, int]] = {}
        for i, c in enumerate(labels_np.tolist()):
            if (urls[i], keys[i]) in self._members:       # already held (e.g. from the warm-up)
                continue
            self.seen[c] += 1
            if self.size[c] < self.capacity:
                slot = int(self.size[c])
                self.size[c] += 1
                self.entries[c].append((urls[i], keys[i]))
            else:
                slot = int(draws[i] * self.seen[c])
                if slot >= self.capacity:
                    continue
                self._members.discard(self.entries[c][slot])
                self.entries[c][slot] = (urls[i], keys[i])
            self._members.add((urls[i], keys[i]))
            writes.setdefault(c, {})[slot] = i
        for c, slot_rows in writes.items():
            picked = to_device(torch.tensor(list(slot_rows.values()), dtype=torch.int64), rows.device)
            self._write(c, list(slot_rows), rows[picked])

    def fill(self, c: int, rows: torch.Tensor, entries: list[tuple[str, str]], represents: int | None = None) -> None:
        """Set class ``c``'s members to ``rows`` (at most ``capacity``), named by ``entries``,
        a subset of ``represents`` samples (the rows alone when not given)."""
        if len(rows) > self.capacity or len(rows) != len(entries):
            raise ValueError(f"fill needs as many entries as rows, at most {self.capacity}; "
                             f"got {len(rows)} rows and {len(entries)} entries")
        self._members.difference_update(self.entries[c])
        self.entries[c] = [tuple(e) for e in entries]
        self._members.update(self.entries[c])
        self.size[c] = self.seen[c] = len(rows)
        self.represents[c] = len(rows) if represents is None else max(int(represents), len(rows))
        self.version[c] = next(_VERSIONS)
        self._float.pop(c, None)
        self._dist.pop(c, None)
        if len(rows):
            self._write(c, list(range(len(rows))), rows)

    def _write(self, c: int, slots: list[int], values: torch.Tensor) -> None:
        self._reserve(c, max(slots) + 1, values)
        index = to_device(torch.tensor(slots, dtype=torch.int64), values.device)
        self.storage[c][index] = values
        self.version[c] = next(_VERSIONS)
        if c in self._float:
            self._float[c][index] = values.flatten(1).float()
        self._dirty.setdefault(c, set()).update(slots)

    def _reserve(self, c: int, rows: int, like: torch.Tensor) -> None:
        """Room for ``rows`` rows in class ``c``'s buffers: at least double what they had, at most
        ``capacity`` (a fill from an index asks for its rows at once, and gets just those)."""
        held = self.storage.get(c)
        if held is not None and len(held) >= rows:
            return
        size = min(self.capacity, max(rows, 2 * len(held))) if held is not None else rows
        storage = torch.empty((size, *like.shape[1:]), dtype=like.dtype, device=like.device)
        if held is not None:
            storage[:len(held)] = held
        self.storage[c] = storage
        if c in self._float:
            flat = torch.zeros((size, self._float[c].shape[1]), device=self._float[c].device)
            flat[:len(self._float[c])] = self._float[c]
            self._float[c] = flat
        if c in self._dist:
            dist, old = torch.zeros((size, size), device=self._dist[c].device), self._dist[c]
            dist[:len(old), :len(old)] = old
            self._dist[c] = dist

    def flat_members(self, c: int) -> torch.Tensor:
        """Class ``c``'s members as float rows (n, D). A float copy is kept once asked for,
        when it fits ``FLOAT_COPY_BYTES`` per class; larger samples are converted on demand."""
        n = int(self.size[c])
        row = self.storage[c][0].numel()
        if c not in self._float and self.capacity * row * 4 > FLOAT_COPY_BYTES:
            return self.members(c).flatten(1).float()
        if c not in self._float:
            self._float[c] = torch.zeros((len(self.storage[c]), row), device=self.storage[c].device)
            self._float[c][:n] = self.members(c).flatten(1).float()
        return self._float[c][:n]

    def distances(self, c: int) -> torch.Tensor:
        """Pairwise Euclidean distances between class ``c``'s members, (n, n).

        Kept per class and brought up to date lazily: only rows of slots written
        since the last call are recomputed (``torch.cdist``), so a full reservoir
        costs O(changed × n) per batch, and classes never synthesized cost nothing.
        """
        n = int(self.size[c])
        dist = self._dist.get(c)
        if dist is None:
            size = len(self.storage[c])
            dist = self._dist[c] = torch.zeros((size, size), device=self.storage[c].device)
            self._dirty[c] = set(range(n))
        dirty = sorted(s for s in self._dirty.pop(c, set()) if s < n)
        if dirty:          # the float rows are only needed (and, when large, only made) for an update
            flat = self.flat_members(c)
            rows = to_device(torch.tensor(dirty, dtype=torch.int64), flat.device)
            with IntraOpThreads(1):       # as in neighbours.nearest: the same numbers in any process
                d = torch.cdist(flat[rows], flat)
            dist[rows, :n] = d
            dist[:n, rows] = d.T
            dist[rows, rows] = 0.0
        return dist[:n, :n]

    def members(self, c: int) -> torch.Tensor:
        return self.storage[c][: self.size[c]] if self.size[c] else torch.empty(0)

    def pool(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All members of all classes, flattened to float features, with their labels."""
        parts = [(self.members(c).flatten(1).float(), c) for c in range(self.num_classes) if self.size[c]]
        feats = torch.cat([p for p, _ in parts])
        labels = torch.cat([torch.full((len(p),), c, dtype=torch.int64, device=p.device) for p, c in parts])
        return feats, labels

    def pool_rows(self, indices: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """Rows ``indices`` of :meth:`pool`, as stored (flattened), without building the pool:
        ``(rows, where)``, the distinct rows in pool order and where each index's row is in them."""
        distinct, where = np.unique(np.asarray(indices, dtype=np.int64), return_inverse=True)
        offsets = np.concatenate([[0], np.cumsum(self.size)])
        owner = np.searchsorted(offsets, distinct, side="right") - 1
        parts = []
        for c in np.unique(owner).tolist():
            local = torch.from_numpy(distinct[owner == c] - offsets[c])
            parts.append(self.members(c)[to_device(local, self.storage[c].device)].flatten(1))
        return torch.cat(parts), where.reshape(-1)

    def pool_offset(self, c: int) -> int:
        """Where class ``c``'s rows start in :meth:`pool` (classes in order)."""
        return int(self.size[:c].sum())

    def pool_entries(self) -> list[tuple[str, str]]:
        """The ``(shard, key)`` of every row of :meth:`pool`, in the same order."""
        return [e for c in range(self.num_classes) for e in self.entries[c][: self.size[c]]]

    def memory_bytes(self) -> int:
        """Bytes held: stored samples plus, for synthesized classes, float copies and distances."""
        return sum(t.numel() * t.element_size() for d in (self.storage, self._float, self._dist) for t in d.values())

    def state_dict(self) -> dict:
        return {"seen": self.seen.tolist(), "represents": self.represents.tolist(),
                "entries": {c: list(e) for c, e in self.entries.items() if e}}

    def load_state_dict(self, state: dict, fetch) -> None:
        """Restore membership from keys; ``fetch(pairs) -> {(url, key): row tensor}`` reads the pixels."""
        self.__init__(self.num_classes, self.capacity)
        self.seen[:] = state["seen"]
        self.represents[:] = state.get("represents", state["seen"])     # (a state from before it was kept)
        entries = {int(c): [tuple(p) for p in e] for c, e in state["entries"].items()}
        rows = fetch([p for e in entries.values() for p in e])
        for c, pairs in entries.items():
            self.entries[c] = pairs
            self._members.update(pairs)
            self.size[c] = len(pairs)
            self._write(c, list(range(len(pairs))), torch.stack([rows[p] for p in pairs]))
