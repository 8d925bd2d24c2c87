"""Balancing without an index: the reservoirs fed by the stream, targets from the counts seen.

``ClassBalancer`` takes this part from :class:`OnlineBalancing`. It is used where the
loader reads shards with no index (``StreamLoader(index=False, num_classes=C)``), and where
a balancer is used on its own (``fit`` and then calls, with no loader's rows to fill the
reservoirs from). Each batch's real rows join their class's reservoir. The rows due are
those imbalanced-learn's targets call for on the counts seen so far (see
:mod:`.online_counts`), and the epoch's last batch takes the rest. With ``max_rows``, what
does not fit in the batch is held back and handed on by :meth:`OnlineBalancing.held_back_parts`,
``max_rows`` at a time.
"""
from __future__ import annotations

import numbers
from collections.abc import Iterator

import numpy as np
import torch

from streamaug.core.flight import BatchInFlight
from streamaug.core.transfer import to_device

from .online_counts import check_dict_targets, online_due
from .stable_name import stable_name


class OnlineBalancing:
    """The index-free half of ``ClassBalancer`` (a mixin: it uses the balancer's ``fit``,
    ``reservoir_``, ``rng``, ``_synthesize_into`` and ``_count_skip``)."""

    def fit_online(self, num_classes: int, world_size: int = 1, rank: int = 0):
        """No index: estimate class counts from the stream (see ``_online_classes``)."""
        if world_size > 1 and (isinstance(self.sampling_strategy, dict) or callable(self.sampling_strategy)):
            raise ValueError(f"sampling_strategy={stable_name(self.sampling_strategy)} sets counts for the "
                             f"whole dataset, but without an index each of the {world_size} ranks balances only "
                             "the stream it reads; write an index (streamaug index) or use a ratio strategy "
                             "such as 'auto'")
        if self.stratified:          # (it was ignored: the batches were byte for byte stratified=False's)
            raise ValueError("stratified=True plans each batch's synthetic slots against the epoch's class counts, "
                             "which need an index; without one the balancer adds, batch by batch, what the counts "
                             "seen so far call for. Write an index (streamaug index <shards>) or leave "
                             "stratified=False")
        # validates the strategy's form on dummy counts (skewed for a ratio, which imbalanced-learn
        # refuses where the counts already meet it, as [1, 1] does)
        ratio = isinstance(self.sampling_strategy, numbers.Real) and not isinstance(self.sampling_strategy, bool)
        self.fit([1 << 20 if ratio and c == 0 else 1 for c in range(num_classes)], world_size, rank)
        self.online_, self.targets_ = True, {}
        self.class_counts_ = [0] * num_classes
        return self

    @property
    def _stream_fed(self) -> bool:
        """Reservoirs fed by the batches this balancer sees: without an index, or used on its
        own (``fit`` + calls, no loader's row source to fill them from)."""
        return self.online_ or self._rows is None

    def _online_classes(self, real_labels: torch.Tensor, last: bool) -> list[int]:
        """Without an index: see ``online_counts.online_due``."""
        self._seen_epoch += np.bincount(real_labels.numpy(), minlength=len(self._seen_epoch))
        np.maximum(self.reservoir_.represents, self._seen_epoch, out=self.reservoir_.represents)
        check_dict_targets(self.sampling_strategy, self._seen_epoch, self._class)
        classes, overshoot = online_due(self.sampling_strategy, self._seen_epoch, self._made_epoch, last)
        for c, n in overshoot.items():
            self._count_skip("online_overshoot", n, f"{self._class(c)}: {n} more made mid-epoch than its target")
        return classes

    def _balance_stream_fed(self, batch: BatchInFlight, rows: torch.Tensor, keep: torch.Tensor,
                            max_rows: int | None) -> None:
        """Add the batch's real rows (host indices ``keep``) to the reservoirs, then append the
        synthetic rows the counts seen so far call for, holding back what ``max_rows`` leaves no
        room for."""
        self.reservoir_.add(rows[to_device(keep, rows.device)], batch.labels[keep],
                            [batch.keys[i] for i in keep.tolist()], [batch.urls[i] for i in keep.tolist()],
                            self.rng)
        classes = np.asarray(self._online_classes(batch.labels[keep], bool(batch.last)), dtype=np.int64)
        if max_rows is not None and len(batch) + len(classes) > max_rows:
            if self.shuffle_within_batch:       # each held-back part mixes the classes due
                classes = self.rng.permutation(classes)
            now = max(0, max_rows - len(batch))
            classes, self._held_back = classes[:now], classes[now:]
        self._synthesize_into(batch, classes, permute=False)

    def held_back_parts(self, like: BatchInFlight, max_rows: int) -> Iterator[BatchInFlight]:
        """The synthetic rows a ``max_rows`` call held back, made ``max_rows`` at a time as
        batches like ``like`` (its dtype and device), each shuffled within itself with
        ``shuffle_within_batch``. Take them before the next batch is balanced."""
        held, self._held_back = self._held_back, np.zeros(0, dtype=np.int64)
        for start in range(0, len(held), max_rows):
            part = like.rows(0, 0, copy=True)
            self._synthesize_into(part, held[start:start + max_rows])
            yield part
