"""Error policy for streaming: one exception type, one handler, named policies.

Every problem found while streaming becomes a :class:`StreamError` that names
the shard URL, the sample key and the offending value. The policy decides what
happens next:

* ``"raise"`` (default): the error propagates to the training loop.
* ``"skip"``: the sample (or the rest of a broken shard) is dropped and counted
  by reason in :class:`LoaderStats`, so nothing is lost silently.
"""
from __future__ import annotations

from collections import Counter
from typing import Any

POLICIES = ("raise", "skip")


class _Lost:
    """The place of a sample lost to a skipped error, kept in an indexed stream so that every
    later sample keeps its planned position (see ``batch_cutting``)."""

    def __repr__(self) -> str:
        return "LOST"

    def __reduce__(self):
        return "LOST"


LOST = _Lost()


SKIP_HINT = "; on_error='skip' skips such samples and counts them in loader.stats"


class StreamError(ValueError):
    """A bad shard or sample. ``reason`` is a short stable tag used for counting."""

    def __init__(self, reason: str, message: str, *, shard: str | None = None,
                 key: str | None = None, value: Any = None, lost: int = 1):
        self.reason = reason
        self.detail = message
        self.shard = shard
        self.key = key
        self.value = value
        self.lost = lost  # samples this error makes unusable (a truncated shard loses its tail)
        where = []
        if shard is not None:
            where.append(f"shard {shard!r}")
        if key is not None:
            where.append(f"key {key!r}")
        shown = repr(value)
        if len(shown) > 200:
            shown = shown[:200] + "..."
        prefix = (", ".join(where) + ": ") if where else ""
        super().__init__(f"{prefix}{message} (value: {shown})")

    def at_shard(self, shard: str) -> "StreamError":
        """This error, its message naming ``shard`` (for one raised where the shard was not known)."""
        detail = getattr(self, "detail", self.args[0])
        return StreamError(self.reason, detail, shard=shard, key=self.key, value=self.value, lost=self.lost)

    def with_skip_hint(self) -> "StreamError":
        """This error, its message ending with how to skip and count such samples instead."""
        if self.args[0].endswith(SKIP_HINT):
            return self
        err = _rebuild(self.reason, self.args[0] + SKIP_HINT, self.shard, self.key, self.value, self.lost)
        err.detail = getattr(self, "detail", self.args[0])
        return err

    def __reduce__(self):  # survives the trip back from DataLoader workers
        return (_rebuild, (self.reason, self.args[0], self.shard, self.key, self.value, self.lost))


def _rebuild(reason, full_message, shard, key, value, lost):
    err = StreamError.__new__(StreamError)
    ValueError.__init__(err, full_message)
    err.reason, err.shard, err.key, err.value, err.lost = reason, shard, key, value, lost
    return err


class WorkerCounts:
    """What a worker yields when its share ended with counts no batch carried (every sample
    of an unindexed share skipped); the loader adds them to the next batch, or to ``stats``."""

    def __init__(self, counts: dict):
        self.counts = counts


class WorkerFailure:
    """What a DataLoader worker yields instead of raising a :class:`StreamError`:
    DataLoader would re-raise it as a ``RuntimeError`` without ``reason``/``key``
    (it rebuilds exceptions from their message), so the loader raises the original."""

    def __init__(self, error: StreamError):
        self.error = error


def check_policy(on_error: str) -> str:
    if on_error not in POLICIES:
        raise ValueError(f"on_error must be one of {POLICIES}, got {on_error!r}")
    return on_error


class ErrorHandler:
    """Applies a policy: raises, or counts the error in ``stats`` and returns."""

    def __init__(self, on_error: str, stats: "LoaderStats", skip_hint: bool = True):
        self.on_error = check_policy(on_error)
        self.stats = stats
        self.skip_hint = skip_hint      # the error says on_error='skip' would skip it (a loader's errors)

    def __call__(self, err: StreamError) -> None:
        if self.on_error == "raise":
            raise err.with_skip_hint() if self.skip_hint else err
        self.stats.count_skip(err.reason, err.lost, example=str(err))
        if getattr(err, "kept", 0):             # (read and handed on all the same: not skipped)
            self.stats.kept[err.reason] += err.kept

    def for_repeat(self) -> "ErrorHandler":
        """The handler for a sample read again as padding (a wrap-around re-read, a repeat filling
        a lost place): it raises as this one does, but counts nothing, since where the sample is
        read as itself its errors are counted."""
        return ErrorHandler(self.on_error, LoaderStats(), self.skip_hint)


class LoaderStats:
    """Counters the user can read as ``loader.stats``.

    ``skipped`` counts dropped samples by reason; ``kept`` counts samples handed on
    although something was wrong (``index_mismatch``: a shard's classes are not the
    ones its index counted); ``padded`` counts samples repeated to keep every rank and
    batch at its planned size; ``synthetic`` counts samples the balancer made;
    ``examples`` keeps the first message seen per reason.
    """

    def __init__(self):
        self.skipped: Counter[str] = Counter()
        self.kept: Counter[str] = Counter()
        self.padded = 0
        self.synthetic = 0
        self.real = 0
        self.examples: dict[str, str] = {}

    def count_skip(self, reason: str, n: int = 1, example: str | None = None) -> None:
        if n:                              # (an error about something already counted: example only)
            self.skipped[reason] += n
        if example is not None:
            self.examples.setdefault(reason, example)

    def merge(self, other: dict) -> None:
        for reason, n in other.get("skipped", {}).items():
            self.skipped[reason] += n
        for reason, n in other.get("kept", {}).items():
            self.kept[reason] += n
        self.padded += other.get("padded", 0)
        for reason, msg in other.get("examples", {}).items():
            self.examples.setdefault(reason, msg)

    def as_dict(self) -> dict:
        return {"skipped": dict(self.skipped), "kept": dict(self.kept), "padded": self.padded,
                "synthetic": self.synthetic,
                "real": self.real, "examples": dict(self.examples)}

    def take(self) -> dict:
        """Return the counts so far and reset (workers ship deltas with each batch)."""
        out = self.as_dict()
        self.__init__()
        return out

    def __repr__(self) -> str:
        return f"LoaderStats({self.as_dict()})"


def add_counts(into: dict, more: dict) -> dict:
    """Add the counts ``more`` (a :meth:`LoaderStats.take`) to those a batch carries, ``into``."""
    for reason, n in more.get("skipped", {}).items():
        into.setdefault("skipped", {})[reason] = into.get("skipped", {}).get(reason, 0) + n
    for reason, n in more.get("kept", {}).items():
        into.setdefault("kept", {})[reason] = into.get("kept", {}).get(reason, 0) + n
    for reason, msg in more.get("examples", {}).items():
        into.setdefault("examples", {}).setdefault(reason, msg)
    into["padded"] = into.get("padded", 0) + more.get("padded", 0)
    return into
