"""Tar members and samples of one shard, read with every size and end checked.

Python's ``tarfile`` (stream mode, so plain and gzip tars from pipes and http
work) parses the headers, pax and GNU long names included. What it does not do,
and webdataset's ``tar_file_expander`` (which reads every member whole) does not
either, is done here:

* a member's size is checked from its header **before** its bytes are read:
  over ``max_member_bytes`` (a sparse 2 GiB member in a 10 KiB tar, a 1.5 GiB
  member in a small gzip) it is a ``member_too_large`` error and its data is
  passed over in chunks, never held; pax and GNU long-name headers over 1 MiB are
  refused the same way;
* the archive must end with its end-of-archive marker (a zero block): a stream
  that stops at a member boundary, mid-header or mid-member is a
  ``truncated_shard`` error, and the sample being read when it stopped is lost
  with it, never yielded half-built;
* samples are grouped by key as webdataset does (``base_plus_ext``), but a
  duplicate loses only itself: a repeated ``key.ext`` inside a sample, or a key
  seen earlier in the shard, is a ``duplicate_key`` error naming it, and the
  stream goes on.

Errors that spoil one member or sample are passed to ``handle`` (raise or count);
errors that end the shard are raised for the caller.
"""
from __future__ import annotations

import tarfile
from collections.abc import Iterator

from webdataset.tariterators import base_plus_ext

from .decode_limits import DecodeLimits
from .errors import ErrorHandler, StreamError

MAX_META_BYTES = 1 << 20        # pax / GNU long-name header data


class _CheckedTarInfo(tarfile.TarInfo):
    """Records how the archive ended, and refuses huge pax/long-name headers before reading them."""

    @classmethod
    def fromtarfile(cls, tar):
        try:
            return super().fromtarfile(tar)
        except tarfile.EOFHeaderError:
            tar.end_seen = "marker"
            raise
        except tarfile.EmptyHeaderError:
            tar.end_seen = "the stream ended with no end-of-archive marker"
            raise
        except tarfile.TruncatedHeaderError:
            tar.end_seen = "the stream ended inside a member header"
            raise
        except tarfile.InvalidHeaderError as e:
            tar.end_seen = f"a member header is invalid ({e})"
            raise

    def _check_meta(self, tar):
        if self.size > MAX_META_BYTES:
            raise StreamError("member_too_large", f"tar {self.type!r} metadata header claims {self.size} bytes, "
                              f"over {MAX_META_BYTES}", shard=getattr(tar, "shard_url", None), value=self.size)

    def _proc_pax(self, tar):
        self._check_meta(tar)
        return super()._proc_pax(tar)

    def _proc_gnulong(self, tar):
        self._check_meta(tar)
        return super()._proc_gnulong(tar)


def _truncated(url: str, why: str, key: str | None, value) -> StreamError:
    return StreamError("truncated_shard", f"tar stream is corrupt or truncated: {why}", shard=url, key=key,
                       value=value)


def tar_members(url: str, stream, limits: DecodeLimits, handle: ErrorHandler) -> Iterator[tuple[str, bytes | None]]:
    """``(name, bytes)`` of each regular file; ``(name, None)`` for one refused (already handled).
    Raises :class:`StreamError` when the archive as a whole is broken or truncated."""
    try:
        tar = tarfile.open(fileobj=stream, mode="r|*", tarinfo=_CheckedTarInfo)
    except StreamError:
        raise
    except Exception as e:
        raise StreamError("corrupt_shard", f"tar stream is corrupt or truncated: not a tar archive "
                          f"({type(e).__name__}: {e})", shard=url, value=0) from None
    tar.shard_url, tar.end_seen = url, None
    name, count = None, 0
    try:
        while True:
            info = tar.next()
            if info is None:
                break
            tar.members = []                          # stream mode keeps every TarInfo otherwise
            name = info.name
            if not info.isreg():
                continue
            if info.size > limits.max_member_bytes or info.issparse():
                kind = "sparse member" if info.issparse() else "member"
                handle(StreamError("member_too_large", f"tar {kind} is {info.size} bytes, over max_member_bytes="
                                   f"{limits.max_member_bytes} (raise it with StreamLoader(max_member_bytes=...))"
                                   if info.size > limits.max_member_bytes else "tar sparse members are not read",
                                   shard=url, key=name, value=info.size))
                yield name, None
                continue
            data = tar.extractfile(info).read()
            if len(data) != info.size:
                raise _truncated(url, f"member {name!r} has {len(data)} of {info.size} bytes", name, len(data))
            count += 1
            yield name, data
    except StreamError:
        raise
    except (tarfile.TarError, EOFError, OSError) as e:
        raise _truncated(url, f"after member {name!r}: {type(e).__name__}: {e}", name, count) from None
    except Exception as e:                            # zlib/gzip errors surface as assorted types
        raise StreamError("corrupt_shard", f"tar stream is corrupt or truncated after member {name!r}: "
                          f"{type(e).__name__}: {e}", shard=url, key=name, value=count) from None
    if tar.end_seen != "marker":
        if count == 0 and tar.end_seen and "invalid" in tar.end_seen:
            raise StreamError("corrupt_shard", f"tar stream is corrupt or truncated: {tar.end_seen}",
                              shard=url, value=0)
        raise _truncated(url, tar.end_seen or "the stream ended with no end-of-archive marker", name, count)
    stream.drain()                                    # a pipe's exit status is checked after its output


def group_samples(url: str, members: Iterator[tuple[str, bytes | None]], handle: ErrorHandler) -> Iterator[dict]:
    """Group members into samples by key. Keys starting with ``__`` or ``.`` and names without
    an extension are ignored, as webdataset does. A sample with a refused member is dropped
    (its error was counted already)."""
    seen: set[str] = set()
    current: dict | None = None
    spoiled = False
    for name, data in members:
        key, ext = base_plus_ext(name)
        if key is None or key.rsplit("/", 1)[-1].startswith(("__", ".")):
            continue
        ext = ext.lower()
        if current is None or key != current["__key__"]:
            if current is not None and not spoiled:
                yield current
            current, spoiled = None, False
            if key in seen:
                handle(StreamError("duplicate_key", "key appeared earlier in this shard; this later sample is "
                                   "dropped, the first one kept", shard=url, key=key, value=name))
                current, spoiled = {"__key__": key}, True
                continue
            seen.add(key)
            current = {"__key__": key, "__url__": url}
        if spoiled:
            continue
        if data is None:
            spoiled = True
            continue
        if ext in current:
            handle(StreamError("duplicate_key", f"member .{ext} appears twice in one sample; the second copy is "
                               "dropped", shard=url, key=key, value=name))
            continue
        current[ext] = data
    if current is not None and not spoiled:
        yield current


def shard_samples(url: str, stream, limits: DecodeLimits, handle: ErrorHandler) -> Iterator[dict]:
    """Samples of one shard. A sample is yielded only once the next key starts or the archive
    has ended cleanly, so a truncation never hands on the sample it cut."""
    return group_samples(url, tar_members(url, stream, limits, handle), handle)
