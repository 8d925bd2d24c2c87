"""A pass without an index: nothing is planned, so a resume replays the epoch's prefix
and the last batch is known only when the input ends."""
from __future__ import annotations

from collections.abc import Iterator

from streamaug.core.flight import BatchInFlight


def drop_batches(batches: Iterator[BatchInFlight], n: int) -> Iterator[BatchInFlight]:
    """Skip the first ``n`` batches (their counts are already in the restored ``stats``)."""
    for i, batch in enumerate(batches):
        if i >= n:
            yield batch


def mark_last(batches: Iterator[BatchInFlight]) -> Iterator[BatchInFlight]:
    """Mark each batch ``last`` or not, one batch of look-ahead."""
    pending = next(batches, None)
    for batch in batches:
        pending.last = False
        yield pending
        pending = batch
    if pending is not None:
        pending.last = True
        yield pending
