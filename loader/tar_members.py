"""Tar members and samples of one shard, read with every size and end checked.

Plain ustar headers (and webdataset's per-member pax headers) are parsed by
:class:`.UstarReader`; from the first header it does not read, Python's ``tarfile``
(stream mode, so plain and gzip tars from pipes and http work) parses the rest,
GNU long names, sparse members and global pax headers included. Both give the same
members and errors (``tests/test_ustar_reader.py``). What they do not do,
and webdataset's ``tar_file_expander`` (which reads every member whole) does not
either, is done here:

* a member's size is checked from its header **before** its bytes are read:
  over ``max_member_bytes`` (a sparse 2 GiB member in a 10 KiB tar, a 1.5 GiB
  member in a small gzip) it is a ``member_too_large`` error and its data is
  passed over in chunks, never held, and a stream that ends first is a truncation
  at once (tarfile's own pass-over did not notice the end: a header claiming
  2**80 bytes kept it reading nothing for ever); pax and GNU long-name headers
  over 1 MiB are refused the same way;
* the archive must end with its end-of-archive marker (a zero block): a stream
  that stops at a member boundary, mid-header or mid-member is a
  ``truncated_shard`` error, and the sample being read when it stopped is lost
  with it, never yielded half-built;
* samples are grouped by key as webdataset does (``base_plus_ext``), but a
  duplicate loses only itself: a repeated ``key.ext`` inside a sample, or a key
  seen earlier in the shard, is a ``duplicate_key`` error naming it, and the
  stream goes on.

Errors that spoil one member or sample are passed to ``handle`` (raise or count), once
the sample before it has been handed on, so a reader that counts samples knows whose
they are; a lost sample is counted once, however many of its members were refused.
Members that are no sample's field (no extension, a ``__``/``.`` key) are never refused.
Errors that end the shard are raised for the caller, after the sample before the one
they cut when that one had ended.
"""
from __future__ import annotations

import tarfile
from collections.abc import Iterator

from webdataset.tariterators import base_plus_ext

from .decode_limits import DecodeLimits
from .errors import LOST, ErrorHandler, StreamError
from .gzip_reader import GZIP_MAGIC, GzipReader
from .image_codec import IMAGE_EXTS, TEXT_LABEL_FIELDS
from .ustar_reader import BLOCK, HAND_OVER, Prefixed, UstarReader

MAX_META_BYTES = 1 << 20        # pax / GNU long-name header data
# the fields a sample is read for; the data of the others (captions, metadata, other images'
# masks...) is not held while the sample is grouped, so their count and size cost no memory
HELD_FIELDS = frozenset(IMAGE_EXTS) | frozenset(TEXT_LABEL_FIELDS) | {"json"}


# Why an archive ended (tarfile's header error), in the words tar_members reports.
END_REASONS = {
    tarfile.EOFHeaderError: "marker",
    tarfile.EmptyHeaderError: "the stream ended with no end-of-archive marker",
    tarfile.TruncatedHeaderError: "the stream ended inside a member header",
}


def end_reason(error: tarfile.HeaderError) -> str:
    for kind, reason in END_REASONS.items():
        if isinstance(error, kind):
            return reason
    return f"a member header is invalid ({error})"


class _CheckedTarInfo(tarfile.TarInfo):
    """Records how the archive ended, and refuses huge pax/long-name headers before reading them."""

    @classmethod
    def fromtarfile(cls, tar):
        try:
            return super().fromtarfile(tar)
        except tarfile.HeaderError as e:
            if not isinstance(e, tarfile.SubsequentHeaderError):
                tar.end_seen = end_reason(e)
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


def _open_tarfile(source, mode: str = "r|"):
    return tarfile.open(fileobj=source, mode=mode, tarinfo=_CheckedTarInfo)


_PLACEHOLDER = tarfile.TarInfo("placeholder").tobuf(tarfile.USTAR_FORMAT)


def _hand_over(url: str, reader: UstarReader):
    """tarfile for the rest of a stream the reader read part of. A placeholder member goes
    first: tarfile treats a bad first header as "not a tar archive", and mid-stream it must
    judge it as it would have mid-stream (an invalid header ends the archive, named)."""
    shift = reader.offset - len(_PLACEHOLDER)         # tarfile's offsets made the stream's own
    tar = _open_tarfile(Prefixed(reader.rest(), _PLACEHOLDER))
    tar.shard_url = url
    tar.next()                                        # the placeholder, read by open()
    tar.fileobj.pos += shift
    tar.offset += shift
    return tar


def _open(url: str, stream, fast: bool):
    """``(reader, first, tar)``: the fast reader with its first member, or a tarfile from the start."""
    try:
        first = stream.read(2)
        if first == GZIP_MAGIC:   # inflated here (GzipReader), for both readers
            source, mode = GzipReader(stream, first), "r|"
        else:                     # plain; bz2/xz are left to tarfile (10 KiB of input per inflate)
            source = Prefixed(stream, first)
            head = source.read(6)
            source = Prefixed(stream, head)
            mode = "r|*" if head.startswith((b"BZh", b"\xfd7zXZ")) else "r|"
        if fast and mode == "r|":
            reader = UstarReader(source)
            member = reader.next()
            if member is not HAND_OVER:
                return reader, member, None
            source = reader.rest()                    # its first header: tarfile reads it all
        tar = _open_tarfile(source, mode)
    except StreamError as e:
        raise e if e.shard else e.at_shard(url) from None
    except Exception as e:
        raise StreamError("corrupt_shard", f"tar stream is corrupt or truncated: not a tar archive "
                          f"({type(e).__name__}: {e})", shard=url, value=0) from None
    tar.shard_url = url              # (an empty archive has met its end marker inside open())
    return None, None, tar


def _next_tarinfo(tar):
    """``tar.next()``, having passed over the last member's data ourselves. tarfile's stream
    seeks forward one 10 KiB record at a time without noticing the end, so a header that
    claimed 2**80 bytes kept it reading nothing for ever; here the end is an error at once."""
    left = 0 if tar.firstmember is not None else tar.offset - tar.fileobj.tell()   # (read by open())
    while left > 0:
        chunk = tar.fileobj.read(min(left, 1 << 20))
        if not chunk:                                 # tarfile's own words for it
            raise tarfile.ReadError("unexpected end of data")
        left -= len(chunk)
    return tar.next()


def tar_members(url: str, stream, limits: DecodeLimits, handle: ErrorHandler,
                fast: bool = True) -> Iterator[tuple[str, bytes | None]]:
    """``(name, bytes)`` of each regular file; ``(name, None)`` for one refused (already handled).
    Raises :class:`StreamError` when the archive as a whole is broken or truncated.

    Plain ustar headers are read by :class:`.UstarReader`; from the first header it hands
    over (or throughout, with ``fast=False``) ``tarfile`` reads the rest."""
    reader, info, tar = _open(url, stream, fast)
    name, count, first = None, 0, True
    try:
        while True:
            if reader is not None:
                if not first:
                    info = reader.next()
                first = False
                if info is HAND_OVER:
                    tar, reader = _hand_over(url, reader), None
                    info = _next_tarinfo(tar)
                elif info is None:
                    break
            else:
                info = _next_tarinfo(tar)
            if info is None:
                break
            if tar is not None:
                tar.members = []                      # stream mode keeps every TarInfo otherwise
            name = info.name
            if not info.isreg():
                if (info.islnk() or info.issym()) and read_field(name):      # (a link no one reads loses nothing)
                    kind = "hard link" if info.islnk() else "symbolic link"
                    handle(StreamError("link_member", f"tar member is a {kind} to {info.linkname!r}, not a file: "
                                       "streamaug reads a sample's files from the shard itself (write the shard "
                                       "with tar --hard-dereference, or -h for symbolic links)",
                                       shard=url, key=name, value=info.linkname))
                    yield name, None
                continue                                  # (directories, devices, fifos: no sample's field)
            if (info.size > limits.max_member_bytes or info.issparse()) and not read_field(name):
                yield name, None if ignored_name(name) else b""    # not read, and not used: nothing is lost
                continue
            if info.size > limits.max_member_bytes or info.issparse():
                kind = "sparse member" if info.issparse() else "member"
                handle(StreamError("member_too_large", f"tar {kind} is {info.size} bytes, over max_member_bytes="
                                   f"{limits.max_member_bytes} (raise it with StreamLoader(max_member_bytes=...), or "
                                   "streamaug index --max-member-bytes)"
                                   if info.size > limits.max_member_bytes else "tar sparse members are not read",
                                   shard=url, key=name, value=info.size))
                yield name, None
                continue
            if reader is not None:
                data = reader.read(info.size)
                if len(data) != info.size:                # what tarfile's extractfile raises
                    raise tarfile.ReadError("unexpected end of data")
            else:
                data = tar.extractfile(info).read()
            if len(data) != info.size:
                raise _truncated(url, f"member {name!r} has {len(data)} of {info.size} bytes", name, len(data))
            count += 1
            yield name, data
    except StreamError as e:
        raise e if e.shard else e.at_shard(url) from None
    except (tarfile.TarError, EOFError, OSError) as e:
        raise _truncated(url, f"at or after member {name!r}, with {count} members read whole: "
                         f"{type(e).__name__}: {e}", name, count) from None
    except Exception as e:                            # zlib/gzip errors surface as assorted types
        raise StreamError("corrupt_shard", f"tar stream is corrupt or truncated at or after member {name!r}, "
                          f"with {count} members read whole: {type(e).__name__}: {e}", shard=url, key=name,
                          value=count) from None
    end_seen = reader.end_seen if reader is not None else getattr(tar, "end_seen", None)
    if end_seen != "marker":
        if count == 0 and end_seen and "invalid" in end_seen:
            raise StreamError("corrupt_shard", f"tar stream is corrupt or truncated: {end_seen}",
                              shard=url, value=0)
        raise _truncated(url, f"{end_seen or 'the stream ended with no end-of-archive marker'}, with {count} "
                         "members read whole", name, count)
    try:
        _check_after_marker(url, reader.read if reader is not None else tar.fileobj.read, count)
        stream.drain()                                # a pipe's exit status is checked after its output
    except StreamError as e:
        e = e if e.shard else e.at_shard(url)
        e.after_end = True                            # every member before the marker was read whole
        raise e from None


def _check_after_marker(url: str, read, count: int, limit: int = 1 << 20) -> None:
    """What follows the end-of-archive marker is tar's zero padding. A second archive joined on
    (``cat a.tar b.tar``, ``pipe:cat dir/*.tar``) would go unread, as tarfile and webdataset leave
    it, and its samples be lost silently: a tar header (or a gzip stream) past the marker is an
    error. Other bytes
    there are passed over, as tar and tarfile pass them. Checked up to ``limit`` bytes past it
    (``read`` starts at a block boundary: the marker, or the block after it)."""
    held, seen, ended = b"", 0, False
    while not ended:
        try:
            chunk = read(min(1 << 16, limit - seen)) if seen < limit else b""
        except StreamError:               # (a command's exit status)
            raise
        except Exception as e:
            if getattr(e, "in_gzip_data", False):
                raise StreamError("gzip_check_failed", f"the gzip stream fails past the archive's end marker, "
                                  f"after {count} members were read whole ({type(e).__name__}: {e}): their bytes "
                                  "are not known to be right (a shard corrupted or cut after it was written)",
                                  shard=url, value=str(e), lost=0) from None
            return                        # (zeros after a gzip stream are no gzip member): the archive
                                          # itself was whole, and nothing past it reads as a tar
        ended = not chunk
        held, seen = held + chunk, seen + len(chunk)
        if held.count(0) == len(held):
            held = held[len(held) - len(held) % BLOCK:]          # whole zero blocks: passed
            continue
        at = next(i for i, b in enumerate(held) if b) // BLOCK * BLOCK
        if len(held) < at + BLOCK and not ended:
            continue                                             # the block is not all here yet
        if held[at:at + 2] != GZIP_MAGIC:                        # (a .tar.gz joined on to a plain tar)
            try:
                tarfile.TarInfo.frombuf(held[at:at + BLOCK], "utf-8", "surrogateescape")
            except tarfile.HeaderError:
                return                                           # not a tar header: passed over
        raise StreamError("trailing_data", f"a second archive (a tar header or a gzip stream) follows the end-of-"
                          f"archive marker ({count} members read whole before it): a tar joined on with cat is not "
                          "read. Give each tar as its own shard, or join them with tar --concatenate", shard=url,
                          value=seen - len(held) + at)


def ignored_name(name: str) -> bool:
    """Members that are no sample's field, as webdataset has it: no extension, or a key whose
    last part starts with ``__`` or ``.``."""
    key, _ = base_plus_ext(name)
    return key is None or key.rsplit("/", 1)[-1].startswith(("__", "."))


def read_field(name: str) -> bool:
    """A member a sample is read for: an image or label field (not ignored, in :data:`HELD_FIELDS`)."""
    return not ignored_name(name) and base_plus_ext(name)[1].lower() in HELD_FIELDS


def group_samples(url: str, members: Iterator[tuple[str, bytes | None]], handle: ErrorHandler,
                  keep_places: bool = False, deferred: list[StreamError] | None = None) -> Iterator:
    """Group members into samples by key. Keys starting with ``__`` or ``.`` and names without
    an extension are ignored, as webdataset does. A sample with a refused member, or a later
    one with a key already seen, is dropped; with ``keep_places`` :data:`~.errors.LOST` takes
    its place.

    A sample's errors are handed to ``handle`` once the sample before it has been yielded, so
    a reader counting samples knows whose they are, and a lost sample is counted once (its
    further errors carry ``lost=0``). ``deferred``: where ``members`` puts the errors of the
    members it refuses, to be handled so. When the archive breaks inside a member of the
    next sample, the sample before it is complete and is yielded before the error."""
    deferred = deferred if deferred is not None else []
    seen: set[str] = set()
    current: dict | None = None
    spoiled = False

    def flush() -> None:
        while deferred:
            err = deferred.pop(0)
            if spoiled:                    # the sample is lost already, and counted
                err.lost = 0
            handle(err)

    try:
        for name, data in members:
            key, ext = base_plus_ext(name)
            if ignored_name(name):
                flush()
                continue
            ext = ext.lower()
            if current is None or key != current["__key__"]:
                if current is not None and (keep_places or not spoiled):
                    yield LOST if spoiled else current
                current, spoiled = None, False
                if key in seen:
                    flush()
                    handle(StreamError("duplicate_key", "key appeared earlier in this shard; this later sample is "
                                       "dropped, the first one kept (a tar not written in name order splits "
                                       "samples so: write it with tar --sort=name)", shard=url, key=key, value=name))
                    current, spoiled = {"__key__": key}, True
                    continue
                seen.add(key)
                current = {"__key__": key, "__url__": url}
            flush()
            if spoiled:
                continue
            if data is None:
                spoiled = True
                continue
            if ext in current:
                handle(StreamError("duplicate_key", f"member .{ext} appears twice in one sample; the second copy is "
                                   "dropped", shard=url, key=key, value=name))
                continue
            current[ext] = data if ext in HELD_FIELDS else None      # (named in messages; never read)
    except StreamError as e:
        broke_in = base_plus_ext(e.key)[0] if isinstance(e.key, str) else None
        complete = getattr(e, "after_end", False) or (broke_in is not None and broke_in != current["__key__"]) \
            if current is not None else False
        if current is not None and not spoiled and complete:
            yield current                  # the next sample's header was read whole, or the archive ended cleanly
        raise
    flush()
    if current is not None and (keep_places or not spoiled):
        yield LOST if spoiled else current


def shard_samples(url: str, stream, limits: DecodeLimits, handle: ErrorHandler, fast: bool = True,
                  keep_places: bool = False) -> Iterator:
    """Samples of one shard. A sample is yielded only once the next key starts or the archive
    has ended cleanly, so a truncation never hands on the sample it cut. ``fast``: see
    :func:`tar_members`; ``keep_places``: see :func:`group_samples`."""
    deferred: list[StreamError] = []
    return group_samples(url, tar_members(url, stream, limits, deferred.append, fast), handle, keep_places, deferred)
