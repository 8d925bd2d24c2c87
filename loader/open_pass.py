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
    0, 1, ...; the last is shorter, or dropped with ``drop_last``; so is what is held when reading
    the next part fails, before the error. A batch cut from a part of
    more than twice ``batch_size`` rows (the epoch's end) is a copy, so it does not keep the
    whole part alive."""
    pending: list[BatchInFlight] = []
    held, made = 0, 0
    parts = iter(parts)
    while True:
        try:
            part = next(parts, None)
        except Exception:               # (on_error="raise") the rows before the error come first, as a
            if pending and not drop_last:   # DataLoader hands on every batch before the one that failed
                yield BatchInFlight.joined(pending, made)
            raise
        if part is None:
            break
        if not len(part):
            continue
        pending.append(part)
        held += len(part)
        if held < batch_size:
            continue
        whole = BatchInFlight.joined(pending, made)
        full, large = held // batch_size, held > 2 * batch_size
        for i in range(full):
            piece = whole.rows(i * batch_size, (i + 1) * batch_size, copy=large)
            piece.batch_id = made
            made += 1
            yield piece
        rest = whole.rows(full * batch_size, held, copy=True) if held % batch_size else None
        pending, held = ([rest] if rest is not None else []), held % batch_size
    if pending and not drop_last:
        yield BatchInFlight.joined(pending, made)


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
