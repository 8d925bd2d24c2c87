"""Plain tar headers read without ``tarfile``, for the headers shards are made of.

``tarfile`` parses each 512-byte header field by field in Python, the largest share
of a 32×32 npy worker batch (``python -m streamaug.benchmarks.batch_profile --kind
npy32``; reading alone, ``python -m streamaug.benchmarks.tar_read`` compares the
two readers side by side). Shards are nearly always
plain ustar members (regular files, sometimes directories), each perhaps after a
pax ``x`` header: webdataset's own ``TarWriter`` writes one per member for its
float mtime. :class:`UstarReader` reads those itself and decides nothing else:

* a header is read here only where ``tarfile`` would read it with the same name,
  size and type: the unsigned checksum matches, every number is plain octal, and
  the type is a regular file (``0``, NUL, ``7``), a directory, a link, a device
  or a fifo (``1``-``6``, which tarfile reads with no data after them);
* a pax ``x`` header is read here when its records tile its data exactly, none is
  ``hdrcharset`` or ``GNU.sparse.*``, its size is at most 20 plain digits, and the header
  after it is one read here;
* every other header (GNU long names, sparse members, global pax headers,
  base-256 numbers, a signed checksum) is **handed over**: ``next()`` returns
  :data:`HAND_OVER` and :meth:`UstarReader.rest` gives the stream from that
  header on, for ``tarfile`` to read to the end (:mod:`.tar_members`); so a
  short, invalid or truncated header is ``tarfile``'s to judge, in its own words.

``tests/test_ustar_reader.py`` checks members and errors against ``tarfile`` alone
on tars from several writers, cut at every block and with corrupted headers.
"""
from __future__ import annotations

import re
import tarfile
import zlib

BLOCK = 512
CHUNK = 1 << 16                    # bytes read from the source at a time
MAX_READ = 1 << 20                 # ... and at most, for a big member (a header may lie about its size)
MAX_PAX_BYTES = 1 << 13            # a bigger pax header is handed over (tarfile checks MAX_META_BYTES)
HAND_OVER = object()

_REGULAR = frozenset(b"0\x007")    # REGTYPE, AREGTYPE, CONTTYPE: tarfile's isreg() (sparse is handed over)
_NO_DATA = frozenset(b"123456")    # links, devices, directory, fifo: tarfile skips no data after them
_HARD_LINK, _SYMLINK = ord("1"), ord("2")
_DIRECTORY = ord("5")
_PAX = ord("x")
_OCTAL_BYTES = b"01234567 \x00"
_DIGIT_SPACE_DIGIT = re.compile(rb"[0-7] +[0-7]")
_PAX_RECORD = re.compile(rb"(\d+) ([^=\n]+)=")

def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def _plain_numbers(block: bytes) -> bool:
    """Every number field (mode to checksum, device numbers) holds only octal digits, spaces
    and NULs, with no space between two digits: then ``tarfile.nti`` reads each as octal
    (this is stricter than nti; base-256 numbers start with 0x80 or 0xff and are refused)."""
    numbers, devices = block[100:156], block[329:345]
    return not numbers.translate(None, _OCTAL_BYTES) and not devices.translate(None, _OCTAL_BYTES) \
        and _DIGIT_SPACE_DIGIT.search(numbers) is None and _DIGIT_SPACE_DIGIT.search(devices) is None


def _octal(field: bytes) -> int:
    """``tarfile.nti``'s value of a field that ``_plain_numbers`` accepted."""
    return int(field.partition(b"\x00")[0].strip() or b"0", 8)


def _text(field: bytes) -> str:
    return field.split(b"\x00", 1)[0].decode(tarfile.ENCODING, "surrogateescape")   # as TarFile's defaults


def _pax_text(value: bytes) -> str:
    try:                                             # as tarfile's _decode_pax_field
        return value.decode("utf-8", "strict")
    except UnicodeDecodeError:
        return value.decode(tarfile.ENCODING, "surrogateescape")


class Member:
    """What tar_members asks of a ``TarInfo``."""
    __slots__ = ("name", "size", "regular", "kind", "linkname")

    def __init__(self, name: str, size: int, regular: bool, kind: int = 0, linkname: str = ""):
        self.name, self.size, self.regular, self.kind, self.linkname = name, size, regular, kind, linkname

    def isreg(self) -> bool:
        return self.regular

    def issparse(self) -> bool:
        return False

    def islnk(self) -> bool:
        return self.kind == _HARD_LINK

    def issym(self) -> bool:
        return self.kind == _SYMLINK


def parse_header(block: bytes) -> Member | int | None:
    """A member's header as a Member; a pax header as its data size (int);
    None for a header handed over to ``tarfile``."""
    kind = block[156]
    if kind not in _REGULAR and kind not in _NO_DATA and kind != _PAX:
        return None
    if not _plain_numbers(block):
        return None
    size, checksum = _octal(block[124:136]), _octal(block[148:156])
    if checksum != sum(block.translate(None, b"\x00")) - sum(block[148:156]) + 256:   # unsigned; NULs add 0
        return None
    if kind == _PAX:
        return size
    name = _text(block[0:100])
    directory = kind == _DIRECTORY or (kind == 0 and name.endswith("/"))     # V7 directory
    if directory:
        name = name.rstrip("/")
    prefix = _text(block[345:500])
    if prefix:
        name = f"{prefix}/{name}".rstrip("/") if directory else f"{prefix}/{name}"
    return Member(name, size, kind in _REGULAR and not directory, kind, _text(block[157:257]))


def parse_pax(data: bytes) -> dict[str, bytes] | None:
    """The records of a pax ``x`` header, or None where ``tarfile`` may read them otherwise."""
    records, pos = {}, 0
    while pos < len(data):
        match = _PAX_RECORD.match(data, pos)
        if match is None:
            return None
        end = pos + int(match[1])
        if end > len(data) or end <= match.end() or data[end - 1] != 0x0A:
            return None
        keyword = match[2].decode("utf-8", "surrogateescape")
        if keyword == "hdrcharset" or keyword.startswith("GNU.sparse"):
            return None
        records[keyword] = data[match.end():end - 1]
        pos = end
    if b"hdrcharset=" in data:       # tarfile searches the whole header for it
        return None
    return records


class UstarReader:
    """Members of a plain tar stream, read from ``source.read`` in large chunks.

    ``next()`` returns a :class:`Member`, None at the end (``end_seen`` says why:
    ``"marker"`` for a clean end), or :data:`HAND_OVER`. ``read(member.size)``
    returns a regular member's bytes; what ``next()`` does not ask for is skipped."""

    def __init__(self, source):
        self.source = source
        self.buf, self.pos, self.base = b"", 0, 0        # buf[0] is at stream offset base
        self.next_at = 0                                  # stream offset of the next header
        self.end_seen: str | None = None

    def _fill(self, n: int) -> int:
        """Make ``n`` bytes from ``pos`` available where the stream has them; returns how many are."""
        held = len(self.buf) - self.pos
        if held < n:
            self.base += self.pos
            parts = [self.buf[self.pos:]]
            while held < n:           # (at most 1 MiB a read: a file's read(n) allocates n first)
                chunk = self.source.read(min(max(CHUNK, n - held), MAX_READ))
                if not chunk:
                    break
                parts.append(chunk)
                held += len(chunk)
            self.buf, self.pos = b"".join(parts), 0
        return min(held, n)

    def _skip_to(self, offset: int) -> None:
        while self.base + self.pos < offset:
            want = offset - self.base - self.pos
            if want <= len(self.buf) - self.pos:
                self.pos += want
                return
            self.base, self.buf, self.pos = self.base + len(self.buf), b"", 0
            chunk = self.source.read(min(want, CHUNK))
            if not chunk:                                # as tarfile's next() says it
                raise tarfile.ReadError("unexpected end of data")
            self.buf = chunk

    def read(self, n: int) -> bytes:
        got = self._fill(n)
        out = self.buf[self.pos:self.pos + got]
        self.pos += got
        return out

    def rest(self):
        """The stream from the header ``next()`` handed over."""
        return Prefixed(self.source, self.buf[self.pos:])

    @property
    def offset(self) -> int:
        """Stream offset of the next unread byte (of the header handed over, after HAND_OVER)."""
        return self.base + self.pos

    def next(self):
        try:
            return self._next()
        except zlib.error as e:                          # as tarfile's next() words it
            raise tarfile.ReadError(f"zlib error: {e}") from None

    def _next(self):
        self._skip_to(self.next_at)
        held = self._fill(BLOCK)
        block = self.buf[self.pos:self.pos + held]
        if held == BLOCK and block.count(0) == BLOCK:
            self.end_seen = "marker"
            return None
        header = parse_header(block) if held == BLOCK else None
        if isinstance(header, int):
            return self._pax_member(header)
        return HAND_OVER if header is None else self._take(BLOCK, header)

    def _pax_member(self, pax_size: int):
        """A pax x header of ``pax_size`` bytes, its records and the header they apply to, or HAND_OVER."""
        data_end = BLOCK + _padded(pax_size)
        if pax_size > MAX_PAX_BYTES or self._fill(data_end + BLOCK) < data_end + BLOCK:
            return HAND_OVER
        window = self.buf[self.pos:self.pos + data_end + BLOCK]
        if window[BLOCK + pax_size:data_end].count(0) != data_end - BLOCK - pax_size:
            return HAND_OVER                             # tarfile parses the padding too
        records = parse_pax(window[BLOCK:BLOCK + pax_size])
        member = parse_header(window[data_end:])
        if records is None or not isinstance(member, Member) or not _apply_pax(member, records):
            return HAND_OVER
        return self._take(data_end + BLOCK, member)

    def _take(self, header_bytes: int, member: Member) -> Member:
        self.pos += header_bytes
        self.next_at = self.base + self.pos + (_padded(member.size) if member.regular else 0)
        return member


def _apply_pax(member: Member, records: dict[str, bytes]) -> bool:
    size = records.get("size")
    if size is not None:
        if not size.isdigit() or len(size) > 20:      # tarfile: int() refuses over 4,300 digits
            return False
        member.size = int(size)
    path = records.get("path")
    if path is not None:
        member.name = _pax_text(path).rstrip("/")
    linkpath = records.get("linkpath")
    if linkpath is not None:
        member.linkname = _pax_text(linkpath)
    return True


class Prefixed:
    """A stream with its first bytes put back. Where the stream fails after them, they are
    handed on first and the error is raised by the next read."""

    def __init__(self, raw, head: bytes):
        self.raw, self.head, self.failed = raw, head, None

    def read(self, n: int) -> bytes:
        if not self.head:
            if self.failed is not None:
                raise self.failed
            return self.raw.read(n)
        out, self.head = self.head[:n], self.head[n:]
        if len(out) < n:
            try:
                out += self.raw.read(n - len(out))
            except Exception as e:
                self.failed = e
        return out
