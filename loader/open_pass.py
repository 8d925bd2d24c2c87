"""A pass without an index: nothing is planned, so a resume replays the epoch's prefix
and the last batch is known only when the input ends.

With a balancer (in this process), how many synthetic rows a batch gets is known only
once the batch is read, and the epoch's last batch takes whatever is still due (the
balancer makes what is due ``batch_size`` rows at a time, never as one tensor). The
balanced rows are therefore cut again into batches of exactly ``batch_size``
(:func:`rebatched`), so no batch is larger than asked for. A resume then replays the
epoch from its start through the balancer, restored to its state at that start
(``loader_state``): the cut depends on every batch before it.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from streamaug.core.flight import BatchInFlight

from .batch import Batch
from .plugin_stage import count_rows, finish_batch, seed_plugins


def drop_batches(batches: Iterator[BatchInFlight], n: int) -> Iterator[BatchInFlight]:
    """Skip the first ``n`` batches (their counts are already in the restored ``stats``)."""
    for i, batch in enumerate(batches):
        if i >= n:
            yield batch


def mark_last(batches: Iterator[BatchInFlight]) -> Iterator[BatchInFlight]:
    """Mark each batch ``last`` or not, one batch of look-ahead (an error reading the next
    comes after the batch before it, as DataLoader's would)."""
    batches = iter(batches)
    pending = next(batches, None)
    while pending is not None:
        try:
            batch = next(batches, None)
        except Exception:
            pending.last = False
            yield pending
            raise
        if batch is None:
            break
        pending.last = False
        yield pending
        pending = batch
    if pending is not None:
        pending.last = True
        yield pending


def rebatched(parts: Iterator[BatchInFlight], batch_size: int, drop_last: bool) -> Iterator[BatchInFlight]:
    """The rows of ``parts``, in order, cut into batches of exactly ``batch_size`` numbered
    0, 1, ...; the last is shorter, or, with ``drop_last``, its rows are given up in proportion
    to the epoch's classes (:func:`proportional_cut`); so is what is held when reading the next
    part fails, before the error. A batch cut from a part of more than twice ``batch_size``
    rows (the epoch's end) is a copy, so it does not keep the whole part alive."""
    pending: list[BatchInFlight] = []
    held, made = 0, 0
    last_full: BatchInFlight | None = None    # drop_last: the newest full batch, handed on when the next is cut
    totals = np.zeros(0, dtype=np.int64)     # drop_last: the pass's rows per class
    parts = iter(parts)
    while True:
        try:
            part = next(parts, None)
        except Exception:               # (on_error="raise") the rows before the error come first, as a
            if last_full is not None:   # DataLoader hands on every batch before the one that failed
                yield last_full
            elif pending and not drop_last:
                yield BatchInFlight.joined(pending, made)
            raise
        if part is None:
            break
        if not len(part):
            continue
        pending.append(part)
        held += len(part)
        if drop_last:                   # (only drop_last's last cut reads them)
            totals = add_class_counts(totals, part.labels)
        if held < batch_size:
            continue
        whole = BatchInFlight.joined(pending, made)
        full, large = held // batch_size, held > 2 * batch_size
        for i in range(full):
            piece = whole.rows(i * batch_size, (i + 1) * batch_size, copy=large)
            piece.batch_id = made
            made += 1
            if not drop_last:
                yield piece
                continue
            if last_full is not None:
                yield last_full
            last_full = piece
        rest = whole.rows(full * batch_size, held, copy=True) if held % batch_size else None
        pending, held = ([rest] if rest is not None else []), held % batch_size
    if not drop_last:
        if pending:
            yield BatchInFlight.joined(pending, made)
    elif last_full is not None:
        yield proportional_cut(BatchInFlight.joined([last_full, *pending], last_full.batch_id), batch_size, totals) \
            if pending else last_full


def add_class_counts(totals: np.ndarray, labels) -> np.ndarray:
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(totals))
    counts[:len(totals)] += totals
    return counts


def proportional_cut(window: BatchInFlight, batch_size: int, totals: np.ndarray) -> BatchInFlight:
    """``drop_last``'s last batch: the ``batch_size`` rows of ``window`` (the last full batch and
    the short rest) kept when the rows given up are the epoch's classes in proportion to
    ``totals`` (largest remainder, as far as ``window`` holds each class; its last rows of
    the class go). The balancer's epoch-end rows are what is due to the minority classes, so
    dropping the short rest as it was gave them up (400 rows a batch: [496, 355, 349] rows
    of a [500, 500, 500] epoch; the cut keeps [400, 400, 400]). A class the window does not
    hold (the majority, when the epoch-end rows fill it) gives up nothing."""
    labels = window.labels.numpy()
    present = np.bincount(labels, minlength=len(totals))
    drop_rows, share = len(window) - batch_size, totals / max(totals.sum(), 1)
    drop = np.minimum(np.floor(share * drop_rows).astype(np.int64), present)
    while drop.sum() < drop_rows:         # the remainder: largest shortfall first, where the window has room
        room = present - drop
        c = int(np.argmax(np.where(room > 0, share * drop_rows - drop, -np.inf)))
        drop[c] += 1
    keep = np.ones(len(window), dtype=bool)
    for c in np.flatnonzero(drop):
        rows = np.flatnonzero(labels == c)
        keep[rows[len(rows) - drop[c]:]] = False
    window.permute(np.flatnonzero(keep))
    return window


def balanced_parts(loader, batches: Iterator[BatchInFlight], epoch: int,
                   check: Callable[[], None]) -> Iterator[BatchInFlight]:
    """Each batch read, its counts taken, balanced (the balancer reseeded by the batch's own
    number), then the synthetic rows it held back, ``batch_size`` rows a part: what is due
    can be many batches' worth (the epoch's end; any batch under a large imbalance)."""
    size, parted = loader.batch_size, hasattr(loader.balance, "held_back_parts")   # (optional: core.plugin)
    for batch in batches:
        check()
        loader.stats.merge(batch.stats)
        batch.stats = {}
        with loader._stage_threads:                                     # noqa: SLF001
            seed_plugins(loader, epoch, batch.batch_id, ("balance",))
            balanced = loader.balance(batch, None, max_rows=size) if parted else loader.balance(batch, None)
        yield balanced
        if not parted:
            continue
        parts = loader.balance.held_back_parts(balanced, size)
        while True:
            with loader._stage_threads:                                 # noqa: SLF001
                part = next(parts, None)
            if part is None:
                break
            yield part


def balanced_open_pass(loader, batches: Iterator[BatchInFlight], epoch: int, start: int,
                       check: Callable[[], None]) -> Iterator[tuple[Batch, bool]]:
    """``(batch, is the epoch's last)`` from batch ``start`` on: the batches read (marked
    ``last``) balanced and cut to ``batch_size`` rows, augmented and mixed per cut batch.
    Batches before ``start`` (a resume replays the epoch) are counted, not augmented."""
    pieces = rebatched(balanced_parts(loader, batches, epoch, check), loader.batch_size, loader.drop_last)
    for piece in mark_last(pieces):
        if piece.batch_id < start:
            count_rows(loader, piece)
            continue
        with loader._stage_threads:                                     # noqa: SLF001
            seed_plugins(loader, epoch, piece.batch_id, ("augment", "mixup"))
            out = finish_batch(loader, piece)
        yield out, bool(piece.last)
