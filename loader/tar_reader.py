"""Stream samples from planned shard segments with webdataset's tar iterators.

Tar parsing, URL opening (local paths, ``pipe:``, http) and grouping files into
samples are webdataset's. This stage adds what it lacks: reading only a
segment of a shard, checking the shard against its index entry, and turning
every failure into a :class:`StreamError` that names the shard and key.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator

from webdataset.gopen import gopen
from webdataset.handlers import reraise_exception
from webdataset.tariterators import group_by_keys, tar_file_expander

from .epoch_plan import Segment
from .errors import ErrorHandler, StreamError


UNKNOWN = -1        # shard_count of a shard streamed without an index: read to its end, check nothing


def whole_shard(url: str) -> Segment:
    """A segment covering a shard of unknown length."""
    return Segment(url, 0, 1 << 62, UNKNOWN)


def _samples(url: str, stream) -> Iterator[dict]:
    files = tar_file_expander([{"url": url, "stream": stream}], handler=reraise_exception)
    return group_by_keys(files, handler=reraise_exception)


def read_segment(seg: Segment, handle: ErrorHandler) -> Iterator[dict]:
    """Yield raw samples ``seg.start..seg.stop`` of one shard (dicts of bytes)."""
    pos, key = 0, None
    try:
        stream = gopen(seg.url)
    except FileNotFoundError:
        handle(StreamError("missing_shard", "shard does not exist", shard=seg.url, value=seg.url, lost=seg.size))
        return
    except Exception as e:
        handle(StreamError("unreadable_shard", f"shard cannot be opened: {e}", shard=seg.url,
                           value=seg.url, lost=seg.size))
        return
    try:
        samples = _samples(seg.url, stream)
        for sample in samples:
            key = sample["__key__"]
            in_range = pos >= seg.start
            pos += 1
            last = pos == seg.stop
            if last and seg.stop == seg.shard_count and seg.shard_count != UNKNOWN and \
                    (extra := next(samples, None)) is not None:
                # Raised (or counted) before the last planned sample is handed on; the
                # extras are not in the plan, so under "skip" they are counted and ignored.
                extras = 1 + sum(1 for _ in samples)
                handle(StreamError("index_mismatch", f"shard holds {extras} more samples than the index count "
                                   f"{seg.shard_count}; extras are ignored", shard=seg.url,
                                   key=extra["__key__"], value=pos + extras, lost=extras))
            if in_range:
                if seg.padding:
                    sample["__padding__"] = True
                yield sample
            if last:
                return
    except StreamError as e:
        handle(e)
        return
    except Exception as e:
        handle(StreamError("corrupt_shard", f"tar stream is corrupt or truncated after {pos} samples: "
                           f"{type(e).__name__}: {str(e).split(' @ ')[0]}", shard=seg.url, key=key,
                           value=pos, lost=max(0, seg.stop - max(pos, seg.start))))
        return
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            try:
                close()
            except Exception:  # a pipe: closed early reports SIGPIPE; the data we used was complete
                pass
    if pos < seg.stop and seg.shard_count != UNKNOWN:
        handle(StreamError("index_mismatch", f"index says the shard holds {seg.shard_count} samples, "
                           f"the stream ended after {pos}", shard=seg.url, key=key, value=pos,
                           lost=seg.stop - max(pos, seg.start)))


def read_segments(segments: Iterable[Segment], handle: ErrorHandler) -> Iterator[dict]:
    for seg in segments:
        yield from read_segment(seg, handle)
