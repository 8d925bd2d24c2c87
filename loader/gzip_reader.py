"""Gzip shards (``.tar.gz``, ``.tgz``, or gzip bytes under any name) inflated in small steps,
so a member passed over unread costs its inflation and no more; read by :mod:`.tar_members`."""
from __future__ import annotations

import struct
import zlib

GZIP_MAGIC = b"\x1f\x8b"
_FHCRC, _FEXTRA, _FNAME, _FCOMMENT, _RESERVED = 2, 4, 8, 16, 0xE0


class GzipDataError(zlib.error):
    """The gzip data itself is wrong: its header, its deflate stream, or the CRC-32 and length
    each member ends with."""


class GzipReader:
    """A gzip stream inflated ``STEP`` bytes at a time. ``tarfile``'s own gzip stream inflates
    whole input chunks at once and re-slices its buffer on every read, so passing over a
    1.5 GiB member of a 1.5 MiB gzip took minutes. Concatenated gzip members are read in turn.

    What inflated before a corrupt or missing part is handed on, and the error is raised by
    the read after it, whatever sizes the reader asks for: so the ustar reader (64 KiB reads)
    and tarfile (10 KiB reads) get the same bytes, and bytes after the archive's end that
    neither reads (trailing zeros after the gzip) are never an error.

    Each member is inflated as raw deflate and its header and trailer are checked here, not by
    zlib's gzip mode, which drops what the step that meets a bad checksum inflated: every byte
    of a member whose CRC-32 fails is handed on, and the failure comes after them, whatever the
    member's size. An error of the data itself (:class:`GzipDataError`, or the stream ending
    inside a member) is marked ``in_gzip_data``; bytes after a member that start no other
    (zeros) fail unmarked, so the reader past a tar's end can tell them apart."""

    STEP = 1 << 14

    def __init__(self, raw, first: bytes):
        self.raw, self.pending = raw, first
        self.inflate = None                            # the current member's, once its header is read
        self.out, self.failed = bytearray(), None
        self.members, self.crc, self.size = 0, 0, 0
        self.started = False                           # a member's magic was read: what follows is its data

    def _more(self) -> bytes:
        data, self.pending = self.pending or self.raw.read(1 << 16), b""
        return data

    def _take(self, n: int, what: str) -> bytes:
        """``n`` bytes of the raw stream (after what a member's inflation left unused)."""
        buf = self.pending
        while len(buf) < n:
            more = self.raw.read(1 << 16)
            if not more:
                self.pending = buf
                raise EOFError(f"gzip stream ends inside a member's {what}")
            buf += more
        self.pending = buf[n:]
        return buf[:n]

    def _until_zero(self, what: str) -> bytes:
        got = b""
        while True:
            buf = self.pending or self.raw.read(1 << 16)
            if not buf:
                raise EOFError(f"gzip stream ends inside a member's {what}")
            at = buf.find(b"\0")
            self.pending = buf[at + 1:] if at >= 0 else b""
            got += buf[:at + 1] if at >= 0 else buf
            if at >= 0:
                return got

    def _header(self) -> bool:
        """Read a member's header (RFC 1952 2.3); False where the stream ends cleanly between
        members. Bytes that do not start with the gzip magic start no member: that error is
        not marked (zeros after the last member are passed over); from the magic on, a
        member has begun, and a header that is wrong or cut is its data's error."""
        if not self.pending:
            self.pending = self.raw.read(1 << 16)
        if not self.pending:
            return False
        try:
            magic = self._take(2, "header")
        except EOFError:
            raise zlib.error(f"bytes after gzip member {self.members} start no gzip member (1 byte)") from None
        if magic != GZIP_MAGIC:
            raise zlib.error(f"bytes after gzip member {self.members} start no gzip member "
                             f"(incorrect header check: {magic.hex()})")
        self.started = True
        head = magic + self._take(8, "header")
        if head[2] != 8 or head[3] & _RESERVED:
            raise GzipDataError(f"gzip member {self.members + 1}'s header is invalid (method {head[2]}, "
                                f"flags {head[3]:#04x})")
        flags, seen = head[3], [head]
        if flags & _FEXTRA:
            seen.append(self._take(2, "header"))
            seen.append(self._take(struct.unpack("<H", seen[-1])[0], "header"))
        if flags & _FNAME:
            seen.append(self._until_zero("header"))
        if flags & _FCOMMENT:
            seen.append(self._until_zero("header"))
        if flags & _FHCRC:
            want = struct.unpack("<H", self._take(2, "header"))[0]
            if zlib.crc32(b"".join(seen)) & 0xFFFF != want:
                raise GzipDataError(f"gzip member {self.members + 1}'s header fails its CRC-16")
        self.inflate, self.crc, self.size = zlib.decompressobj(-zlib.MAX_WBITS), 0, 0
        self.members += 1
        return True

    def _trailer(self) -> None:
        self.pending, self.inflate = self.inflate.unused_data + self.pending, None
        crc, size = struct.unpack("<II", self._take(8, "trailer"))
        if crc != self.crc or size != self.size & 0xFFFFFFFF:
            raise GzipDataError(f"gzip member {self.members} fails its check: CRC-32 {self.crc:08x} and length "
                                f"{self.size} inflated, its trailer says {crc:08x} and {size}")
        self.started = False                           # the member is whole

    def _step(self) -> bool:
        """Inflate up to STEP more bytes into ``out``; False at the clean end of the last member."""
        if self.inflate is None:
            if not self._header():
                return False
        elif self.inflate.eof:
            self._trailer()
            return True
        data = self.inflate.unconsumed_tail or self._more()
        if not data:
            raise EOFError("gzip stream ends before its end marker")
        try:
            more = self.inflate.decompress(data, self.STEP)
        except zlib.error as e:
            raise GzipDataError(f"gzip member {self.members}'s data does not inflate: {e}") from None
        self.crc, self.size = zlib.crc32(more, self.crc), self.size + len(more)
        self.out += more
        return True

    def read(self, n: int) -> bytes:
        while len(self.out) < n and self.failed is None:
            try:
                if not self._step():
                    break
            except Exception as e:          # zlib.error, EOFError, or the raw stream's own error
                if isinstance(e, (zlib.error, EOFError)) and (self.started or self.members == 0):
                    e.in_gzip_data = True   # (not bytes after a member that start no other)
                self.failed = e
        if not self.out and self.failed is not None:
            raise self.failed
        out = bytes(self.out[:n])
        del self.out[:n]
        return out
