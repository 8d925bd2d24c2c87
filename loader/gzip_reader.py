"""Gzip shards (``.tar.gz``, ``.tgz``, or gzip bytes under any name) inflated in small steps,
so a member passed over unread costs its inflation and no more; read by :mod:`.tar_members`."""
from __future__ import annotations

import zlib

GZIP_MAGIC = b"\x1f\x8b"


class GzipReader:
    """A gzip stream inflated ``STEP`` bytes at a time. ``tarfile``'s own gzip stream inflates
    whole input chunks at once and re-slices its buffer on every read, so passing over a
    1.5 GiB member of a 1.5 MiB gzip took minutes. Concatenated gzip members are read in turn.

    What inflated before a corrupt or missing part is handed on, and the error is raised by
    the read after it, whatever sizes the reader asks for: so the ustar reader (64 KiB reads)
    and tarfile (10 KiB reads) get the same bytes, and bytes after the archive's end that
    neither reads (trailing zeros after the gzip) are never an error."""

    STEP = 1 << 14

    def __init__(self, raw, first: bytes):
        self.raw, self.pending = raw, first
        self.inflate = zlib.decompressobj(31)
        self.out, self.failed = bytearray(), None

    def _input(self) -> bytes:
        if self.inflate.unconsumed_tail:
            return self.inflate.unconsumed_tail
        data, self.pending = self.pending or self.raw.read(1 << 16), b""
        return data

    def _step(self) -> bool:
        """Inflate up to STEP more bytes into ``out``; False at the clean end of the last member."""
        if self.inflate.eof:
            rest = self.inflate.unused_data or self.raw.read(1 << 16)
            if not rest:
                return False
            self.inflate, self.pending = zlib.decompressobj(31), rest
        data = self._input()
        if not data:
            raise EOFError("gzip stream ends before its end marker")
        self.out += self.inflate.decompress(data, self.STEP)
        return True

    def read(self, n: int) -> bytes:
        while len(self.out) < n and self.failed is None:
            try:
                if not self._step():
                    break
            except Exception as e:          # zlib.error, EOFError, or the raw stream's own error
                self.failed = e
        if not self.out and self.failed is not None:
            raise self.failed
        out = bytes(self.out[:n])
        del self.out[:n]
        return out
