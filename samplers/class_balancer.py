"""``ClassBalancer``: balance classes inside the stream with synthetic samples.

>>> from streamaug.samplers import ClassBalancer, SMOTE
>>> loader = StreamLoader(urls, batch_size=256,                         # doctest: +SKIP
...                       balance=ClassBalancer("auto", SMOTE(k_neighbors=5)))
>>> for images, labels in loader: ...                                  # doctest: +SKIP

How it works
------------
* Targets come from the shard index's class counts and ``sampling_strategy``
  (imbalanced-learn's semantics): ``n_new[c]`` synthetic samples per epoch.
* They become an evenly interleaved sequence of *slots*; rank ``r`` takes every
  ``W``-th. The loader's epoch plan reserves ``plan.synthetic[j]`` slots in
  batch ``j``, so every batch is its planned size and every rank yields the
  same number of batches; per-class totals per epoch are exact.
* Real samples pass through unchanged and feed per-class reservoirs on the
  loader's device; each slot is filled by the synthesizer (SMOTE by default,
  ``None`` for random oversampling) from its class's reservoir, and the batch's
  rows are permuted so synthetic ones are interleaved.
* Before the first batch, a warm-up scan of the shards (decoding only what it
  needs) gives each class to synthesize ``k + 1`` reservoir samples.
* A slot whose class has no sample in the reservoir yet swaps with the nearest
  later slot whose class has one (counts stay exact). If none is left, the slot
  is filled with a repeat of a real sample, flagged ``is_padding`` and counted in
  ``loader.stats.skipped["balance_shortfall"]``.
* Reservoirs persist across epochs. ``state_dict`` holds RNG state, the slot
  cursor and swaps, and reservoir membership as ``(shard, key)`` pairs.
* Without an index (``StreamLoader(index=False, num_classes=C)``) counts are
  estimated online (see ``_online_classes``): batches top classes up towards
  imbalanced-learn's target for the counts seen so far, and the epoch's last
  batch takes the rest. Epoch totals then equal ``fit_resample``'s on the
  epoch's labels; batch sizes vary.
"""
from __future__ import annotations

import numbers
import weakref

import numpy as np
import torch

from streamaug.loader.seeding import derive_seed

from .class_reservoir import ClassReservoir
from .online_counts import online_due
from .sampling_strategy import synthetic_targets
from .slot_schedule import interleaved_slots, max_rank_slots, rank_slots, stratified_choice, take_available
from .smote import SMOTE, RandomOversampler, Synthesizer

_UNSET = object()

def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)

class ClassBalancer:
    """Stream stage that adds synthetic samples so each epoch meets ``sampling_strategy``.

    Args:
        sampling_strategy: imbalanced-learn's: a float (binary only), ``"auto"``,
            ``"not majority"``, ``"minority"``, ``"not minority"``, ``"all"``, a dict of
            final per-class counts, or a callable ``y -> dict``.
        synthesizer: ``SMOTE()`` (default), ``BorderlineSMOTE``, ``ADASYN`` or
            ``None`` for random oversampling.
        random_state: seed; ``None`` takes the loader's derived seed.
        reservoir_size: samples kept per class (memory is O(this × classes)).
        feature_fn: optional ``images -> (N, D)`` embedding; the balancer then keeps
            and emits features instead of pixels (DeepSMOTE-style, for heads trained
            on embeddings); the loader's ``augment=`` must then be ``None``.
        shuffle_within_batch: permute each batch so synthetic rows are interleaved.
        stratified: give each batch's synthetic slots to the classes furthest below their
            target share of that batch (its real rows counted), so no class is
            under-represented by more than rounding while budget lasts; per-epoch totals
            stay exact. Rows can only be added, so a class over-represented by real rows
            stays so. Default: an evenly interleaved, precomputed sequence.
    """

    _parameter_constraints = {
        "synthesizer": (lambda v: v is None or isinstance(v, Synthesizer), "None or a Synthesizer"),
        "random_state": (lambda v: v is None or _is_int(v), "None or an int"),
        "reservoir_size": (lambda v: _is_int(v) and v >= 2, "an int >= 2"),
        "feature_fn": (lambda v: v is None or callable(v), "None or callable"),
        "shuffle_within_batch": (lambda v: isinstance(v, bool), "a bool"),
        "stratified": (lambda v: isinstance(v, bool), "a bool"),
    }

    def __init__(self, sampling_strategy="auto", synthesizer=_UNSET, random_state: int | None = None,
                 reservoir_size: int = 512, feature_fn=None, shuffle_within_batch: bool = True,
                 stratified: bool = False):
        synthesizer = SMOTE() if synthesizer is _UNSET else synthesizer
        for name, (ok, expected) in self._parameter_constraints.items():
            value = locals()[name]
            if not ok(value):
                raise ValueError(f"{name} must be {expected}, got {value!r}")
        self.sampling_strategy = sampling_strategy
        self.synthesizer = synthesizer if synthesizer is not None else RandomOversampler()
        self.seed = random_state
        self.reservoir_size, self.feature_fn = reservoir_size, feature_fn
        self.shuffle_within_batch, self.stratified = shuffle_within_batch, stratified
        self.rng = np.random.Generator(np.random.PCG64(derive_seed(random_state or 0, "balance")))
        self.targets: dict[int, int] | None = None

    # ------------------------------------------------------------------ setup
    @property
    def loader(self):
        ref = getattr(self, "_loader", None)
        return ref() if ref is not None else None

    def manual_seed(self, seed: int) -> None:
        self.rng = np.random.Generator(np.random.PCG64(derive_seed(seed, "balance")))

    def bind(self, loader) -> None:
        """Resolve targets from the loader's index and set up this rank's slots."""
        if self.feature_fn is not None and loader.augment is not None:
            raise ValueError("feature_fn makes the balancer emit features, so augment= must be None")
        self._loader = weakref.ref(loader)    # no cycle: a loader must die by refcount to stop its workers
        if loader.index is None:
            self.fit_online(loader.num_classes, loader.world_size, loader.rank)
        else:
            self.fit(loader.index.class_counts, loader.world_size, loader.rank)

    def fit(self, class_counts: list[int], world_size: int = 1, rank: int = 0) -> "ClassBalancer":
        """Validate ``sampling_strategy`` against the counts and plan the slots (template method)."""
        self.online = False
        self.targets = synthetic_targets(self.sampling_strategy, class_counts)
        self.class_counts = list(class_counts)
        self.world_size, self.rank = world_size, rank
        self._global_slots = interleaved_slots(self.targets)
        self.reservoir = ClassReservoir(len(class_counts), self.reservoir_size)
        self._warm = False
        self._start_epoch()
        return self

    def fit_online(self, num_classes: int, world_size: int = 1, rank: int = 0) -> "ClassBalancer":
        """No index: estimate class counts from the stream (see ``_online_classes``)."""
        self.fit([1] * num_classes, world_size, rank)      # validates the strategy's form on dummy counts
        self.online, self.targets = True, {}
        self.class_counts = [0] * num_classes
        return self

    def final_counts(self) -> list[int]:
        """Per-class counts of one epoch (all ranks): real plus synthetic."""
        return [n + self.targets.get(c, 0) for c, n in enumerate(self.class_counts)]

    def synthetic_counts(self) -> tuple[int, int]:
        """(synthetic samples on this rank per epoch, the most on any rank)."""
        if self.online:
            return 0, 0
        return len(rank_slots(self._global_slots, self.world_size, self.rank)), \
            max_rank_slots(len(self._global_slots), self.world_size)

    def _warm_up(self) -> None:
        """Before the first synthetic slot, make sure every class to synthesize has
        ``k + 1`` reservoir samples (or all it has): scan shards in index order and
        decode only the samples needed. With class-mixed shards (``write_shards``
        shuffles) this reads a fraction of one shard; class-sorted shards may need
        a full pass. Without it, minority slots due before the class's first
        sample arrives could not be filled."""
        self._warm = True
        want = {c: min(self.synthesizer.k_neighbors + 1, self.class_counts[c], self.reservoir_size)
                for c in self.targets}
        want = {c: n - int(self.reservoir.size[c]) for c, n in want.items() if n > self.reservoir.size[c]}
        if not want:
            return
        for url, key, label, row in self.loader.scan_rows(lambda c: want.get(c, 0) > 0):
            if want.get(label, 0) <= 0:
                continue
            rows = self.feature_fn(row[None]) if self.feature_fn is not None else row[None]
            self.reservoir.add(rows, torch.tensor([label]), [key], [url], self.rng)
            want[label] -= 1
            if all(v <= 0 for v in want.values()):
                return

    def _start_epoch(self) -> None:
        self._slots = rank_slots(self._global_slots, self.world_size, self.rank).copy()
        self._cursor, self._swaps = 0, []
        self._budget = np.bincount(self._slots, minlength=len(self.class_counts))
        self._seen_epoch = np.zeros(len(self.class_counts), dtype=np.int64)
        self._made_epoch = np.zeros(len(self.class_counts), dtype=np.int64)

    def _online_classes(self, real_labels: torch.Tensor, last: bool) -> list[int]:
        """Without an index: see ``online_counts.online_due``."""
        self._seen_epoch += np.bincount(real_labels.cpu().numpy(), minlength=len(self._seen_epoch))
        classes, overshoot = online_due(self.sampling_strategy, self._seen_epoch, self._made_epoch, last)
        for c, n in overshoot.items():
            if self.loader is not None:
                self.loader.stats.count_skip("online_overshoot", n, f"class {c}: {n} more made mid-epoch than its target")
        return classes

    def _stratified_slots(self, labels: torch.Tensor, count: int) -> None:
        chosen = stratified_choice(self.final_counts(), self._budget, self.reservoir.size,
                                   labels.cpu().numpy(), count)
        self._slots[self._cursor:self._cursor + count] = chosen

    # ------------------------------------------------------------------ stream
    def __call__(self, batch: dict, n_synthetic: int | None = None, last: bool = False) -> dict:
        """Balance one batch: ``n_synthetic`` planned slots (indexed mode), or, without an
        index, as many as the counts seen so far call for (``last`` flushes the epoch)."""
        if self.targets is None:
            raise RuntimeError("ClassBalancer is not bound: pass it to StreamLoader(balance=...) or call fit()")
        if batch["batch_id"] == 0:
            self._start_epoch()
            if not self._warm and self.loader is not None and not self.online:
                self._warm_up()
        if not self.online and not 0 <= n_synthetic <= len(self._slots) - self._cursor:
            raise ValueError(f"batch asks for {n_synthetic} synthetic samples, {len(self._slots) - self._cursor} "
                             "slots are left this epoch")
        return self._balance(batch, n_synthetic, last)

    def _balance(self, batch: dict, n_synthetic: int | None, last: bool = False) -> dict:
        images, labels = batch["images"], batch["labels"]
        real = ~batch["is_padding"]
        rows = self.feature_fn(images) if self.feature_fn is not None else images
        keep = real.nonzero().squeeze(1)
        self.reservoir.add(rows[keep], labels[keep], [batch["keys"][i] for i in keep.tolist()],
                           [batch["urls"][i] for i in keep.tolist()], self.rng)
        n = len(labels)
        out = {"images": rows, "labels": labels, "keys": list(batch["keys"]), "urls": list(batch["urls"]),
               "is_padding": batch["is_padding"], "batch_id": batch["batch_id"],
               "is_synthetic": torch.zeros(n, dtype=torch.bool, device=labels.device),
               "provenance": [None] * n}
        if self.online:
            classes = self._online_classes(labels[keep], last)
            if classes:
                unfilled = [i for i, c in enumerate(classes) if not self.reservoir.size[c]]
                out = self._synthesize(out, np.asarray(classes), unfilled)
        elif n_synthetic:
            out = self._append_synthetic(out, n_synthetic)
        if self.shuffle_within_batch and len(out["labels"]) > 1:
            perm = self.rng.permutation(len(out["labels"]))
            out = _permute(out, perm)
        return out

    def _append_synthetic(self, out: dict, count: int) -> dict:
        if self.stratified:     # classes are chosen per batch; nothing to swap with later
            self._stratified_slots(out["labels"][~out["is_padding"]], count)
            swaps = []
            unfilled = [p for p in range(self._cursor, self._cursor + count) if not self.reservoir.size[self._slots[p]]]
        else:
            swaps, unfilled = take_available(self._slots, self._cursor, count, lambda c: self.reservoir.size[c] > 0)
        self._swaps += swaps
        classes = self._slots[self._cursor:self._cursor + count].copy()
        unfilled = [p - self._cursor for p in unfilled]
        self._cursor += count
        return self._synthesize(out, classes, unfilled)

    def _synthesize(self, out: dict, classes: np.ndarray, unfilled: list[int]) -> dict:
        """Append one synthetic row per entry of ``classes``; positions in ``unfilled``
        (no sample of that class anywhere yet) become flagged repeats."""
        new_rows, new_labels, prov, padding = [], [], [], []
        for c in sorted(set(classes.tolist())):
            positions = [i for i, v in enumerate(classes.tolist()) if v == c and i not in unfilled]
            if not positions:
                continue
            syn = self.synthesizer.synthesize(self.reservoir, c, len(positions), self.rng)
            new_rows.append(syn.values)
            new_labels += [c] * len(positions)
            prov += [{"seed": s, "neighbour": p, "u": float(u)}
                     for s, p, u in zip(syn.seed_entries, syn.partner_entries, syn.u)]
            padding += [False] * len(positions)
        for p in unfilled:                   # no class left with samples: repeat a real one, flagged
            c = int(np.flatnonzero(self.reservoir.size)[0])
            new_rows.append(self.reservoir.members(c)[:1].float())
            new_labels.append(c)
            prov.append(None)
            padding.append(True)
            if self.loader is not None:
                self.loader.stats.count_skip("balance_shortfall", 1, f"class {int(classes[p])} has no samples "
                                             f"on rank {self.rank}; a real sample was repeated instead")
        values = torch.cat(new_rows)
        like = out["images"]
        values = values.round().clamp_(0, 255).to(like.dtype) if like.dtype == torch.uint8 else values.to(like.dtype)
        dev = out["labels"].device
        out["images"] = torch.cat([like, values.to(like.device)])
        out["labels"] = torch.cat([out["labels"], torch.tensor(new_labels, dtype=torch.int64, device=dev)])
        out["is_synthetic"] = torch.cat([out["is_synthetic"], ~torch.tensor(padding, dtype=torch.bool, device=dev)])
        out["is_padding"] = torch.cat([out["is_padding"], torch.tensor(padding, dtype=torch.bool, device=dev)])
        out["keys"] += [f"synthetic:{p['seed'][1]}" if p else "padding" for p in prov]
        out["urls"] += [p["seed"][0] if p else "" for p in prov]
        out["provenance"] += prov
        return out

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "cursor": self._cursor, "swaps": list(self._swaps),
                "warm": self._warm, "budget": self._budget.tolist(), "seen_epoch": self._seen_epoch.tolist(),
                "made_epoch": self._made_epoch.tolist(), "reservoir": self.reservoir.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self._start_epoch()
        for p, q in state["swaps"]:
            self._slots[p], self._slots[q] = self._slots[q], self._slots[p]
        self._cursor, self._swaps = state["cursor"], [tuple(s) for s in state["swaps"]]
        self._warm, self._budget = state["warm"], np.asarray(state["budget"], dtype=np.int64)
        self._seen_epoch = np.asarray(state["seen_epoch"], dtype=np.int64)
        self._made_epoch = np.asarray(state["made_epoch"], dtype=np.int64)
        transform = self.feature_fn
        self.reservoir.load_state_dict(state["reservoir"], lambda pairs: self.loader.fetch_rows(pairs, transform))

    def __repr__(self) -> str:
        return f"ClassBalancer(sampling_strategy={self.sampling_strategy!r}, synthesizer={self.synthesizer!r})"

def _permute(out: dict, perm: np.ndarray) -> dict:
    idx = torch.from_numpy(perm).to(out["labels"].device)
    for k in ("images", "labels", "is_synthetic", "is_padding"):
        out[k] = out[k][idx]
    for k in ("keys", "urls", "provenance"):
        out[k] = [out[k][i] for i in perm.tolist()]
    return out
