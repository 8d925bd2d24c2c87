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
* Before the first batch, the per-class reservoirs (on the loader's device) are
  filled once, identically on every rank, by a label-only pass over the shards
  that then decodes only the chosen samples (see :meth:`ClassBalancer._fill`).
  Real samples pass through unchanged; each slot is filled by the synthesizer
  (random oversampling by default, or SMOTE and its variants) from its class's
  reservoir, and the batch's rows are permuted so synthetic ones are interleaved.
* A slot whose class has no readable sample at all is filled with a repeat of a
  real sample, flagged ``is_padding`` and counted in
  ``loader.stats.skipped["balance_shortfall"]``.
* The loader reseeds the balancer for every batch from ``(seed, epoch, rank,
  batch)`` and tells it where the batch's slots start, so with an index the
  state is the loader's position alone: rank 0's saved state resumes rank 1
  exactly. Only ``stratified=True`` (slots chosen from the labels seen so far)
  and index-free streams (reservoirs fed by this rank's stream) keep per-rank
  state; loading another rank's state there is an error, never silent.
* Like imbalanced-learn's estimators, what fitting learns ends in ``_``
  (``targets_``, ``class_counts_``, ``reservoir_``) and exists only after
  :meth:`fit` (or binding to a loader); using the balancer before raises
  :class:`NotFittedError`.
* Without an index (``StreamLoader(index=False, num_classes=C)``) counts are
  estimated online (see ``_online_classes``): batches top classes up towards
  imbalanced-learn's target for the counts seen so far, and the epoch's last
  batch takes the rest. Epoch totals then equal ``fit_resample``'s on the
  epoch's labels; batch sizes vary.
"""
from __future__ import annotations

import numbers
import warnings

import numpy as np
import torch

from streamaug.core.flight import BatchInFlight
from streamaug.core.plugin import BindContext
from streamaug.core.seeding import derive_seed

from .class_reservoir import ClassReservoir
from .online_balancing import OnlineBalancing
from .reservoir_fill import fill_reservoirs, needed_classes
from .sampling_strategy import check_strategy_form, synthetic_targets
from .stable_name import stable_name
from .slot_schedule import max_rank_slots, rank_slots, stratified_choice
from .random_oversampler import RandomOversampler
from .synthesizer import Synthesizer, class_label
from .synthetic_rows import append_synthetic_rows

_UNSET = object()


class NotFittedError(ValueError, AttributeError):
    """A fitted-only attribute or method was used before ``fit`` (as in scikit-learn)."""


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


class ClassBalancer(OnlineBalancing):
    """Stream stage that adds synthetic samples so each epoch meets ``sampling_strategy``.

    Args:
        sampling_strategy: imbalanced-learn's: a float (binary only), ``"auto"``,
            ``"not majority"``, ``"minority"``, ``"not minority"``, ``"all"``, a dict of
            final per-class counts, or a callable ``y -> dict``.
        synthesizer: random oversampling (default, also ``None``), ``SMOTE()``,
            ``BorderlineSMOTE`` or ``ADASYN``. Random oversampling is the default because
            the demo's evidence found SMOTE no better with augmentation on (docs/demo.md, "Which
            setting when"); ``SMOTE(neighbour_space="thumbnail")`` is the SMOTE to pick.
        random_state: seed; ``None`` takes the loader's derived seed.
        reservoir_size: samples kept per class (memory is O(this × classes)).
        feature_fn: optional ``images -> (N, D)`` embedding; the balancer then keeps
            and emits features instead of pixels (DeepSMOTE-style, for heads trained
            on embeddings); the loader's ``augment=`` must then be ``None``.
        shuffle_within_batch: permute each batch so synthetic rows are interleaved.
        stratified: give each batch's synthetic slots to the classes furthest below their
            target share of that batch (its real rows counted), one at a time, so the budgeted
            classes' total shortfall is the least the batch's slots allow; per-epoch totals
            stay exact. Rows can only be added, so a class over-represented by real rows
            stays so, and the others may then be short by more than rounding. Default: an
            evenly interleaved, precomputed sequence.
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
        synthesizer = RandomOversampler() if synthesizer is _UNSET else synthesizer
        for name, (ok, expected) in self._parameter_constraints.items():
            value = locals()[name]
            if not ok(value):
                raise ValueError(f"{name} must be {expected}, got {value!r}")
        check_strategy_form(sampling_strategy)
        self.sampling_strategy = sampling_strategy
        self.synthesizer = synthesizer if synthesizer is not None else RandomOversampler()
        self.seed = random_state
        self.reservoir_size, self.feature_fn = reservoir_size, feature_fn
        self.shuffle_within_batch, self.stratified = shuffle_within_batch, stratified
        self.rng = np.random.Generator(np.random.PCG64(derive_seed(random_state or 0, "balance")))
        self._rows, self._stats = None, None      # set by bind(): what the loader lends
        self._fill_counted = False                # the fill's skips are in the loader's stats already
        self._fill_skips: list[tuple[str, int, str]] = []    # what the fill skipped (reason, count, example)
        self._fill_seed = random_state or 0

    # ------------------------------------------------------------------ setup
    def _check_fitted(self) -> None:
        if not hasattr(self, "targets_"):
            raise NotFittedError("this ClassBalancer is not fitted yet: pass it to StreamLoader(balance=...) "
                                 "or call fit(class_counts) first")

    def manual_seed(self, seed: int) -> None:
        self.rng = np.random.Generator(np.random.PCG64(derive_seed(seed, "balance")))

    def bind(self, context: BindContext) -> None:
        """Resolve targets from the loader's class counts and set up this rank's slots."""
        if self.feature_fn is not None and context.augmented:
            raise ValueError("feature_fn makes the balancer emit features, so augment= must be None")
        self._rows, self._stats = context.rows, context.stats
        self.synthesizer.class_names = getattr(context, "class_names", None)    # (its messages name classes)
        self._fill_seed = self.seed if self.seed is not None else context.seed
        if context.class_counts is None:
            self.fit_online(context.num_classes, context.world_size, context.rank)
        else:
            self.fit(context.class_counts, context.world_size, context.rank)

    def _class(self, c: int) -> str:
        return class_label(c, getattr(self.synthesizer, "class_names", None))

    def fit(self, class_counts: list[int], world_size: int = 1, rank: int = 0) -> "ClassBalancer":
        """Validate ``sampling_strategy`` against the counts and plan the slots (template method)."""
        self.targets_ = synthetic_targets(self.sampling_strategy, class_counts)
        self.online_ = False
        self.class_counts_ = list(class_counts)
        self.world_size_, self.rank_ = world_size, rank
        self._total_slots = sum(self.targets_.values())
        self.reservoir_ = ClassReservoir(len(class_counts), self.reservoir_size)
        self._filled = False
        self._start_epoch()
        return self

    def final_counts(self) -> list[int]:
        """Per-class counts of one epoch (all ranks): real plus synthetic."""
        self._check_fitted()
        return [n + self.targets_.get(c, 0) for c, n in enumerate(self.class_counts_)]

    def synthetic_counts(self) -> tuple[int, int]:
        """(synthetic samples on this rank per epoch, the most on any rank)."""
        self._check_fitted()
        if self.online_:
            return 0, 0
        return len(rank_slots(self.targets_, self.world_size_, self.rank_)), \
            max_rank_slots(self._total_slots, self.world_size_)

    def __getattr__(self, name: str):
        # Deprecated names of the fitted attributes (they exist only after fitting).
        if name in ("targets", "class_counts", "reservoir", "online"):
            warnings.warn(f"ClassBalancer.{name} is deprecated; use {name}_ (set by fit)", DeprecationWarning,
                          stacklevel=2)
            return getattr(self, name + "_")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _fill(self) -> None:
        """Fill the reservoirs once, identically on every rank, before the first batch (see
        :mod:`.reservoir_fill`): a pure function of the data and the seed, so the balancer's
        state is its position alone (see :meth:`state_dict`)."""
        self._filled = True
        if self._rows is None:
            return
        needed = needed_classes(self.class_counts_, self.targets_,
                                getattr(self.synthesizer, "uses_all_classes", False))
        self._fill_skips = fill_reservoirs(self._rows, self.reservoir_, needed, self.reservoir_size,
                                           self._fill_seed, self.feature_fn, self._class)
        if not self._fill_counted:
            for skip in self._fill_skips:
                self._count_skip(*skip)

    def restore_fill_counts(self, counted: bool, stats) -> None:
        """The loader restored its ``stats``; ``counted``: they count what filling the reservoirs
        skipped. A fill still to come then counts nothing (a resumed loader fills again); a fill
        already done here adds its counts when the restored stats lack them."""
        if getattr(self, "_filled", False):
            if not counted:
                for reason, n, example in self._fill_skips:
                    stats.count_skip(reason, n, example)
        else:
            self._fill_counted = counted

    def _start_epoch(self) -> None:
        self._slots = rank_slots(self.targets_, self.world_size_, self.rank_)
        self._cursor = 0
        self._budget = np.bincount(self._slots, minlength=len(self.class_counts_))
        self._planned = self._budget.copy()      # (the epoch's budget, for stratified ties; the slots change)
        self._seen_epoch = np.zeros(len(self.class_counts_), dtype=np.int64)
        self._made_epoch = np.zeros(len(self.class_counts_), dtype=np.int64)
        self._held_back = np.zeros(0, dtype=np.int64)

    def _count_skip(self, reason: str, n: int, example: str) -> None:
        if self._stats is not None:
            self._stats.count_skip(reason, n, example)

    def _stratified_slots(self, labels: torch.Tensor, count: int) -> None:
        chosen = stratified_choice(self.final_counts(), self._budget, self._planned, self.reservoir_.size,
                                   labels.numpy(), count)
        self._slots[self._cursor:self._cursor + count] = chosen

    # ------------------------------------------------------------------ stream
    def __call__(self, batch: BatchInFlight, n_synthetic: int | None = None, *,
                 max_rows: int | None = None) -> BatchInFlight:
        """Balance one batch: ``n_synthetic`` planned slots starting at ``batch.slot_offset``
        (indexed mode; without an offset, where the previous batch's ended), or, without an
        index, as many as the counts seen so far call for (``batch.last`` flushes the epoch).

        Without an index, with ``max_rows``, the batch grows to at most ``max_rows`` rows and
        the rest of its synthetic rows is held back for :meth:`held_back_parts`: what is due
        can be many batches' worth of rows (the epoch's end; any batch under a large
        imbalance), never made as one tensor."""
        self._check_fitted()
        if max_rows is not None and max_rows < 1:
            raise ValueError(f"max_rows must be a positive number of rows, got {max_rows!r}")
        if batch.batch_id == 0:
            self._start_epoch()
        if not self.online_:
            if not self._filled:
                self._fill()
            if batch.slot_offset is not None:
                self._cursor = batch.slot_offset
            if not 0 <= n_synthetic <= len(self._slots) - self._cursor:
                raise ValueError(f"batch asks for {n_synthetic} synthetic samples, {len(self._slots) - self._cursor} "
                                 "slots are left this epoch")
        return self._balance(batch, n_synthetic, max_rows)

    def _balance(self, batch: BatchInFlight, n_synthetic: int | None, max_rows: int | None) -> BatchInFlight:
        rows = self.feature_fn(batch.images) if self.feature_fn is not None else batch.images
        keep = batch.real.nonzero().squeeze(1)                # host indices
        batch.images = rows
        if self._stream_fed:
            self._balance_stream_fed(batch, rows, keep, max_rows)
        elif n_synthetic:
            self._append_synthetic(batch, n_synthetic)
        if self.shuffle_within_batch and len(batch) > 1:
            batch.permute(self.rng.permutation(len(batch)))
        return batch

    def _synthesize_into(self, batch: BatchInFlight, classes: np.ndarray, permute: bool = True) -> None:
        """Append a synthetic row of each class in ``classes`` (``permute``: then shuffle the
        batch's rows with ``shuffle_within_batch``)."""
        if len(classes):
            self._synthesize(batch, classes)
        if permute and self.shuffle_within_batch and len(batch) > 1:
            batch.permute(self.rng.permutation(len(batch)))

    def _append_synthetic(self, batch: BatchInFlight, count: int) -> None:
        if self.stratified:     # classes are chosen per batch from its real rows
            self._stratified_slots(batch.labels[~batch.is_padding], count)
        classes = self._slots[self._cursor:self._cursor + count].copy()
        self._cursor += count
        self._synthesize(batch, classes)

    def _synthesize(self, batch: BatchInFlight, classes: np.ndarray) -> None:
        """Append one synthetic row per entry of ``classes`` (:mod:`.synthetic_rows`), counting
        each slot filled with a flagged repeat, its class having no sample anywhere yet."""
        for c in append_synthetic_rows(batch, classes, self.synthesizer, self.reservoir_, self.rng):
            self._count_skip("balance_shortfall", 1, f"class {c} has no samples "
                             f"on rank {self.rank_}; a real sample was repeated instead")

    # ------------------------------------------------------------------ in the reading workers
    def worker_blocker(self, indexed: bool) -> str | None:
        """Why this balancer cannot run in the loader's reading workers (``None``: it can; see
        ``streamaug.loader.worker_stages``). It can when each batch is a pure function of the
        reservoirs, filled once before the first batch, and the batch's position."""
        if not indexed:
            return "balance= without an index feeds its reservoirs from the stream in the main process"
        if self.stratified:
            return "balance= with stratified=True picks each batch's slots from the batches before it"
        if self.feature_fn is not None:
            return "balance= with feature_fn= emits features, made in the main process"
        return None

    def prepare(self) -> None:
        """Fill the reservoirs and build the synthesizer's neighbour tables now (otherwise done at
        the first batch), so that workers started after this share them copy-on-write."""
        self._check_fitted()
        if self.online_:
            return
        if not self._filled:
            self._fill()
        self.synthesizer.prepare(self.reservoir_, sorted(c for c, n in self.targets_.items() if n))

    def count_into(self, stats) -> None:
        """Count what the balancer could not do into ``stats`` (a worker's own counters,
        shipped with each batch) instead of the sink it was bound to."""
        self._stats = stats

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict:
        """Empty with an index (the loader's position is the state), unless ``stratified``
        (the slot budget left) or without an index (reservoir membership as keys and the
        counts seen): those are this rank's and say so."""
        self._check_fitted()
        state = {}
        if self._stream_fed:
            state.update(seen_epoch=self._seen_epoch.tolist(), made_epoch=self._made_epoch.tolist(),
                         reservoir=self.reservoir_.state_dict())
        if self.stratified and not self.online_:
            state.update(budget=self._budget.tolist(), slots=self._slots.tolist())
        return {"rank": self.rank_, **state} if state else {}

    def load_state_dict(self, state: dict) -> None:
        self._check_fitted()
        if not state:
            return
        if state.get("rank", self.rank_) != self.rank_:
            why = ("without an index the reservoirs hold what this rank's stream has shown" if self._stream_fed
                   else "stratified=True chooses slots from the labels this rank has seen")
            raise ValueError(f"balancer state was saved on rank {state['rank']} and cannot resume rank {self.rank_}: "
                             f"{why}. Save each rank's state_dict(), or use an index (streamaug index) and "
                             "stratified=False for rank-portable state")
        if "reservoir" in state:
            self._seen_epoch = np.asarray(state["seen_epoch"], dtype=np.int64)
            self._made_epoch = np.asarray(state["made_epoch"], dtype=np.int64)
            self._held_back = np.zeros(0, dtype=np.int64)
            self.reservoir_.load_state_dict(state["reservoir"], lambda pairs: self._rows.fetch(pairs, self.feature_fn))
        if "budget" in state:
            self._budget = np.asarray(state["budget"], dtype=np.int64)
            self._slots = np.asarray(state["slots"], dtype=self._slots.dtype)

    def __repr__(self) -> str:
        """Every setting that changes the batches (the loader state's fingerprint holds it, so a
        state is refused by a balancer configured otherwise), each written the same in any process."""
        feature = None if self.feature_fn is None else stable_name(self.feature_fn)
        return (f"ClassBalancer(sampling_strategy={stable_name(self.sampling_strategy)}, "
                f"synthesizer={self.synthesizer!r}, random_state={self.seed!r}, "
                f"reservoir_size={self.reservoir_size!r}, feature_fn={feature}, "
                f"shuffle_within_batch={self.shuffle_within_batch!r}, stratified={self.stratified!r})")
