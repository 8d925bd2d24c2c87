"""Stream samples from planned shard segments.

URLs are opened by :func:`.shard_stream.open_shard` (read timeout, exit status of
``pipe:``/http commands checked) and members read by :mod:`.tar_members` (sizes
checked from headers, end-of-archive marker required, duplicates dropped one by
one). This stage adds reading only a segment of a shard, checking the shard
against its index entry (sample count and per-class counts), and turning every
failure into a :class:`StreamError` that names the shard and key.
"""
from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence

from .decode_limits import DecodeLimits
from .epoch_plan import Segment
from .errors import LOST, ErrorHandler, StreamError
from .shard_stream import open_shard
from .tar_members import shard_samples


UNKNOWN = -1        # shard_count of a shard streamed without an index: read to its end, check nothing


def whole_shard(url: str) -> Segment:
    """A segment covering a shard of unknown length."""
    return Segment(url, 0, 1 << 62, UNKNOWN)


# what every index_mismatch says to do
REINDEX = " (the shard changed after it was indexed? run streamaug index over the shards again)"


def _class_count_error(seg: Segment, found: Counter) -> StreamError | None:
    claimed = list(seg.class_counts)
    held = [found.get(c, 0) for c in range(len(claimed))]
    if held == claimed and sum(found.values()) == sum(held):
        return None
    diff = {c: (claimed[c], held[c]) for c in range(len(claimed)) if claimed[c] != held[c]}
    err = StreamError("index_mismatch", f"index's per-class counts {claimed} differ from the shard's {held} "
                      f"(class: (index, shard) {diff}); balancing targets built on them would be wrong{REINDEX}",
                      shard=seg.url, value=held, lost=0)
    err.kept = sum(max(0, h - c) for c, h in zip(claimed, held))    # handed on, in classes the index did not count
    return err


def handed_on(err: StreamError, read: int) -> StreamError:
    """An error met past the archive's end marker (a failed gzip check, a command's exit status
    or silence): the ``read`` samples were read whole and are handed on, so under "skip" they
    are counted as kept, none as skipped. A second archive joined on (``trailing_data``) loses
    its own samples, unknown, counted as one."""
    if err.reason != "trailing_data":
        err.lost, err.kept = 0, read
    return err


def _key_of(sample) -> str | None:
    return None if sample is LOST else sample["__key__"]


def _read_past_count(samples: Iterator, url: str, count: int) -> tuple[StreamError | None, StreamError | None]:
    """Read a shard past its index's ``count`` to its end: the error for the samples it holds
    beyond the count (or None), and the error met past the end marker (or None; see
    :func:`handed_on`). A shard cut inside those extras is reported in the first: the extras
    are not in the plan, and the planned samples before them were read whole."""
    first, extras, after = None, 0, None
    try:
        for extra in samples:
            first, extras = first or _key_of(extra), extras + 1
    except Exception as e:
        if not getattr(e, "after_end", False):
            met = e.detail if isinstance(e, StreamError) else f"{type(e).__name__}: {str(e).split(' @ ')[0]}"
            return StreamError("index_mismatch", f"shard holds more samples than the index count {count} and is "
                               f"cut inside them ({met}); under on_error='skip' the extras are passed over"
                               f"{REINDEX}", shard=url, key=first or getattr(e, "key", None),
                               value=count + extras + 1, lost=extras + 1), None
        after = e
    if not extras:
        return None, after
    return StreamError("index_mismatch", f"shard holds {extras} more samples than the index count {count}; "
                       f"under on_error='skip' the extras are passed over{REINDEX}", shard=url, key=first,
                       value=count + extras, lost=extras), after


def read_segment(seg: Segment, handle: ErrorHandler, limits: DecodeLimits | None = None,
                 label_of: Callable[[dict], int | None] | None = None, keep_places: bool = False) -> Iterator:
    """Yield raw samples ``seg.start..seg.stop`` of one shard (dicts of bytes); see :func:`read_run`."""
    return read_run((seg,), handle, limits, label_of, keep_places)


def shard_runs(segments: Iterable[Segment]) -> Iterator[list[Segment]]:
    """Consecutive segments of one indexed shard, each starting at or after the last one's
    stop, grouped to be read in one pass (a worker reading its batches in dataset order has
    one segment per batch in each shard)."""
    run: list[Segment] = []
    for seg in segments:
        if run and seg.url == run[-1].url and seg.shard_count == run[-1].shard_count > 0 \
                and seg.start >= run[-1].stop:
            run.append(seg)
            continue
        if run:
            yield run
        run = [seg]
    if run:
        yield run


def read_run(run: Sequence[Segment], handle: ErrorHandler, limits: DecodeLimits | None = None,
             label_of: Callable[[dict], int | None] | None = None, keep_places: bool = False) -> Iterator:
    """Yield the raw samples of ``run``, segments of one shard in increasing, disjoint order
    (:func:`shard_runs`), in one pass over the shard; samples outside them are passed over.

    The reader of a shard's last planned segment has read the whole shard (tar is
    sequential), so with ``label_of`` it checks the index's per-class counts too.

    With ``keep_places`` (an index's planned segments), a sample the reader drops (a refused
    member, a repeated key) and the samples a missing, corrupt or short shard did not hold
    are :data:`~.errors.LOST` in their places, so the run yields exactly its segments' sizes
    and every later sample keeps its planned position.

    An error about a sample is handled (raised or counted) only by the reader whose segment
    holds the sample: a reader passes over the samples outside its segments, and samples no
    segment plans (``drop_last``) are never used. A wrap-around ``padding`` segment re-reads
    samples another reader reads: under ``"skip"`` what it loses is not counted."""
    limits = limits or DecodeLimits()
    url, count, final = run[0].url, run[0].shard_count, run[-1]
    pos, key, r = 0, None, 0                 # r: the segment that holds or follows ``pos``
    good = 0                                 # samples read whole (``pos`` less the LOST places)
    known = count != UNKNOWN
    raising = handle.on_error == "raise"
    check_classes = label_of is not None and final.class_counts is not None and not final.padding \
        and final.stop == count and known
    found: Counter = Counter()

    def counted(seg: Segment) -> bool:
        return raising or not seg.padding

    def left(only_counted: bool) -> int:             # places of the run not read yet
        return sum(max(0, s.stop - max(pos, s.start)) for s in run[r:] if counted(s) or not only_counted)

    def owned(err: StreamError) -> None:          # about the sample at ``pos``
        seg = run[r]
        if counted(seg) and (not known or seg.start <= pos < seg.stop):
            handle(err)

    def report(err: StreamError) -> None:          # an error about this reader's own part
        if any(counted(s) for s in run[r:]):
            handle(err)

    def unread() -> int:                            # samples an error loses: without an index, unknown,
        return left(True) if known else 1           # counted as one, as a cut shard's tail is

    def lost_places() -> Iterator:
        if keep_places and known:
            yield from itertools.repeat(LOST, left(False))

    try:
        stream = open_shard(url, limits.read_timeout)
    except FileNotFoundError:
        report(StreamError("missing_shard", "shard does not exist", shard=url, value=url, lost=unread()))
        yield from lost_places()
        return
    except Exception as e:
        report(StreamError("unreadable_shard", f"shard cannot be opened: {e}", shard=url, value=url,
                           lost=unread()))
        yield from lost_places()
        return
    try:
        samples = shard_samples(url, stream, limits, owned, keep_places=keep_places and known)
        if count == 0:                              # listed as empty: read it to make sure
            if (extra := next(samples, None)) is not None:
                report(StreamError("index_mismatch", f"index says the shard holds 0 samples; they are ignored{REINDEX}",
                                   shard=url, key=_key_of(extra), value=1 + sum(1 for _ in samples)))
            return
        for sample in samples:
            key = _key_of(sample) or key
            if check_classes:
                found[None if sample is LOST else label_of(sample)] += 1    # a lost one: counts unknown
            seg = run[r]
            in_range = pos >= seg.start
            pos, good = pos + 1, good + (sample is not LOST)
            last = pos == final.stop
            after = None
            if last and final.stop == count and known:
                extras, after = _read_past_count(samples, url, count)
                if extras:          # raised (or counted) before the last planned sample is handed on; the
                    report(extras)  # extras are not in the plan, so under "skip" they are counted and ignored
            if last and check_classes and None not in found and (err := _class_count_error(final, found)):
                report(err)
            if in_range:
                if seg.padding and sample is not LOST:
                    sample["__padding__"] = True
                yield sample
            if after is not None:   # met past the end marker: after every sample
                report(handed_on(after, good))
            if last:
                return
            if pos == seg.stop:
                r += 1
    except StreamError as e:
        if e.shard is None:
            e = e.at_shard(url)
        if not getattr(e, "after_end", False):
            if known:                           # an index says how much is lost
                e.lost = unread()
            report(e)
            yield from lost_places()
            return
        report(handed_on(e, good))              # every sample was read; an index may say more (below)
    except Exception as e:
        report(StreamError("corrupt_shard", f"tar stream is corrupt or truncated after {pos} samples: "
                           f"{type(e).__name__}: {str(e).split(' @ ')[0]}", shard=url, key=key,
                           value=pos, lost=unread()))
        yield from lost_places()
        return
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            try:
                close()
            except Exception:  # a pipe: closed early reports SIGPIPE; the data we used was complete
                pass
    if pos < final.stop and known:
        report(StreamError("index_mismatch", f"index says the shard holds {count} samples, "
                           f"the stream ended after {pos}{REINDEX}", shard=url, key=key, value=pos,
                           lost=left(True)))
        yield from lost_places()


def read_segments(segments: Iterable[Segment], handle: ErrorHandler, limits: DecodeLimits | None = None,
                  label_of: Callable[[dict], int | None] | None = None, keep_places: bool = False) -> Iterator:
    for run in shard_runs(segments):
        yield from read_run(run, handle, limits, label_of, keep_places)
