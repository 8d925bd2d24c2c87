"""The fast ustar reader against ``tarfile`` alone.

``tar_members(fast=True)`` must yield the same members and end with the same error
as ``tar_members(fast=False)`` (``tarfile`` throughout) on tars written by several
writers (tarfile's three formats, webdataset, GNU tar, streamaug), whole, cut at
every block and around it, and with each header field corrupted. And it must
actually read the shards people write without handing them to ``tarfile``.
"""
from __future__ import annotations

import gzip
import io
import os
import shutil
import subprocess
import struct
import tarfile
import zlib

import numpy as np
import pytest
import webdataset as wds

from streamaug.loader import ustar_reader
from streamaug.loader.decode_limits import DecodeLimits
from streamaug.loader.errors import StreamError
from streamaug.loader.shard_stream import FileStream
from streamaug.loader.shard_writer import UstarShardWriter
from streamaug.loader.tar_members import tar_members

BLOCK = 512
SIZES = (3000, 0, 1, 511, 512, 513)      # the first member has data: tarfile.open reads its header


def _files() -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(0)
    out = [(f"d/s_{i:03d}.{ext}", rng.integers(0, 256, n, dtype=np.uint8).tobytes())
           for i, n in enumerate(SIZES) for ext in ("bin", "cls")]
    out.append(("p" * 90 + "/" + "q" * 60 + ".bin", b"long name, split into prefix"))
    out.append(("ünï/cödé.txt", b"non-ascii name"))
    return out


def _tarfile_bytes(fmt: int, float_mtime: bool = False, extras: bool = True) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        if extras:
            d = tarfile.TarInfo("d/")
            d.type = tarfile.DIRTYPE
            tar.addfile(d)
        for name, data in _files():
            if fmt == tarfile.USTAR_FORMAT and not name.isascii():
                continue
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_700_000_000.5 if float_mtime else 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
        if extras:
            link = tarfile.TarInfo("d/link")
            link.type, link.linkname = tarfile.SYMTYPE, "s_000.bin"
            tar.addfile(link)
            hard = tarfile.TarInfo("d/hard")
            hard.type, hard.linkname = tarfile.LNKTYPE, "d/s_001.bin"
            tar.addfile(hard)
    return buf.getvalue()


def _webdataset_bytes(tmp, writer=wds.ShardWriter) -> bytes:
    with writer(os.path.join(tmp, "w-%03d.tar"), maxcount=100) as sink:
        for i, n in enumerate(SIZES):
            sink.write({"__key__": f"s_{i:03d}", "bin": bytes(range(256)) * (n // 256) + b"x" * (n % 256),
                        "cls": str(i).encode()})
    return open(os.path.join(tmp, "w-000.tar"), "rb").read()


def _gnu_tar_bytes(tmp, fmt: str) -> bytes:
    root = os.path.join(tmp, f"tree-{fmt}")
    for name, data in _files():
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "wb").write(data)
    out = os.path.join(tmp, f"{fmt}.tar")
    subprocess.run(["tar", f"--format={fmt}", "-cf", out, "-C", root, "."], check=True)
    return open(out, "rb").read()


def _without_end(data: bytes) -> bytes:
    """A tar's members without its end-of-archive blocks."""
    end = len(data)
    while end >= BLOCK and data[end - BLOCK:end].count(0) == BLOCK:
        end -= BLOCK
    return data[:end]


def _writers(tmp) -> dict[str, bytes]:
    tars = {
        "tarfile-ustar": _tarfile_bytes(tarfile.USTAR_FORMAT),
        "tarfile-gnu": _tarfile_bytes(tarfile.GNU_FORMAT),
        "tarfile-pax": _tarfile_bytes(tarfile.PAX_FORMAT, float_mtime=True),
        "webdataset": _webdataset_bytes(tmp),
        "streamaug": _webdataset_bytes(tmp, UstarShardWriter),
        # plain members, then a GNU long name mid-shard: the reader hands the rest over
        "ustar-then-gnu": _without_end(_tarfile_bytes(tarfile.USTAR_FORMAT, extras=False))
        + _tarfile_bytes(tarfile.GNU_FORMAT, extras=False),
    }
    if shutil.which("tar"):
        for fmt in ("gnu", "ustar", "pax"):
            tars[f"gnu-tar-{fmt}"] = _gnu_tar_bytes(tmp, fmt)
    return tars


def _read(data: bytes, fast: bool, max_member_bytes: int = 1 << 20):
    """Members, errors handled on the way, and the error that ended the archive."""
    handled = []
    members = []
    limits = DecodeLimits(max_member_bytes=max_member_bytes)
    try:
        for name, body in tar_members("u.tar", FileStream(io.BytesIO(data)), limits, handled.append, fast=fast):
            members.append((name, body))
        ended = None
    except StreamError as e:
        ended = (e.reason, str(e), e.key, e.value)
    return members, [(e.reason, str(e)) for e in handled], ended


def _same(data: bytes, **kw):
    fast, slow = _read(data, True, **kw), _read(data, False, **kw)
    assert fast == slow


@pytest.fixture(scope="module")
def tars(tmp_path_factory):
    return _writers(str(tmp_path_factory.mktemp("tars")))


def test_whole_tars_read_the_same(tars):
    for name, data in tars.items():
        members, handled, ended = _read(data, True)
        assert ended is None and not handled, name
        assert len(members) >= 2 * len(SIZES), name
        _same(data)
        _same(data, max_member_bytes=600)          # some members refused from their header
        _same(gzip.compress(data))


def test_cut_anywhere_reads_the_same(tars):
    for data in tars.values():
        cuts = {c for b in range(0, len(data), BLOCK) for c in (b - 1, b, b + 1, b + 100, b + 156, b + 300)}
        for cut in sorted(c for c in cuts if 0 <= c < len(data)):
            _same(data[:cut])


@pytest.mark.parametrize("offset, value", [
    (0, b"\x00"), (0, b"z"), (99, b"/"),                     # name
    (100, b"9"), (100, b"\x80"), (108, b" "), (116, b"+"),   # mode, uid, gid
    (124, b"8"), (124, b"\x80"), (130, b"7"), (135, b" "),   # size: not octal, base-256, another size
    (136, b"x"), (148, b"0"), (154, b"\x00"),                # mtime, checksum
    (156, b"L"), (156, b"g"), (156, b"S"), (156, b"V"), (156, b"5"), (156, b"\x00"), (156, b"1"),
    (257, b"x"), (345, b"pre"), (329, b"9"),                 # magic, prefix, devmajor
])
def test_corrupt_header_field_reads_the_same(tars, offset, value):
    """Each header (checksum fixed up, and not) with one field changed."""
    for data in tars.values():
        for block in range(0, len(data) - BLOCK, BLOCK):
            if data[block:block + BLOCK].count(0) == BLOCK or data[block + 257:block + 262] != b"ustar":
                continue                                     # data blocks and end blocks
            for fix_checksum in (False, True):
                header = bytearray(data[block:block + BLOCK])
                header[offset:offset + len(value)] = value
                if fix_checksum:
                    header[148:156] = b"%06o\x00 " % (sum(header[:148]) + sum(header[156:]) + 256)
                _same(data[:block] + bytes(header) + data[block + BLOCK:])


@pytest.mark.parametrize("member", [0, 3], ids=["first-member", "mid-shard"])
@pytest.mark.parametrize("records", [
    b"30 path=caf\xc3\xa9/renamed.bin\n",
    b"11 size=12\n",                      # larger than the data: the next header is read from the data
    b"10 size=x\n", b"9 size=\n", b"13 size=+012\n",
    b"20 hdrcharset=BINARY\n", b"22 GNU.sparse.major=1\n",
    b"16 comment=a\nb=c\n", b"99 path=a\n", b"0 path=a\n", b"7 a=bc\n", b"path=a\n",
    b"12 path=a/b/\n" + b"13 mtime=1.25\n",
])
def test_pax_records_read_the_same(tars, records, member):
    """webdataset's pax headers, one member's records replaced: at the shard's start, where
    tarfile.open reads the first header, and mid-shard, where the reader hands over."""
    data = tars["webdataset"]
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        at = tar.getmembers()[member].offset                 # its pax header
    assert data[at + 156:at + 157] == b"x"
    size = int(data[at + 124:at + 136].rstrip(b"\x00 "), 8)
    header = bytearray(data[at:at + BLOCK])
    header[124:136] = b"%011o\x00" % len(records)
    header[148:156] = b"%06o\x00 " % (sum(header[:148]) + sum(header[156:]) + 256)
    padded = records + b"\x00" * (-len(records) % BLOCK)
    _same(data[:at] + bytes(header) + padded + data[at + BLOCK + -(-size // BLOCK) * BLOCK:])


def test_empty_and_zero_archives_read_the_same():
    for data in (b"", bytes(100), bytes(BLOCK), bytes(2 * BLOCK), bytes(20 * BLOCK), b"not a tar" * 100):
        _same(data)


def test_shards_people_write_are_read_without_tarfile(tars, monkeypatch):
    """The reason the reader exists: tarfile parses no header of these."""
    def refuse(*args, **kw):
        raise AssertionError("tarfile parsed a header")
    monkeypatch.setattr(tarfile.TarInfo, "fromtarfile", classmethod(refuse))
    for name in ("webdataset", "streamaug", "tarfile-ustar", "tarfile-pax", "gnu-tar-ustar", "gnu-tar-pax"):
        if name in tars:
            members, handled, ended = _read(tars[name], True)
            assert ended is None and handled == [] and members, name


def test_hand_over_goes_on_with_tarfile(tars, monkeypatch):
    """A GNU long name mid-shard: every member before it and after it, once, in order, and
    tarfile read the headers from there on."""
    parsed = []
    fromtarfile = tarfile.TarInfo.fromtarfile.__func__
    monkeypatch.setattr(tarfile.TarInfo, "fromtarfile",
                        classmethod(lambda cls, tar: parsed.append(1) or fromtarfile(cls, tar)))
    members, handled, ended = _read(tars["ustar-then-gnu"], True)
    names = [name for name, _ in _files()]
    assert ended is None and handled == []
    assert [n for n, _ in members] == [n for n in names if n.isascii()] + names
    assert 0 < len(parsed) <= len(names) + 2               # the GNU half's headers (and its long name)


def test_reader_reads_big_members_across_chunks():
    data = np.random.default_rng(1).integers(0, 256, 3 * ustar_reader.CHUNK + 7, dtype=np.uint8).tobytes()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, body in (("a.bin", data), ("b.bin", data[:100]), ("c.bin", data)):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    members, handled, ended = _read(buf.getvalue(), True, max_member_bytes=1 << 30)
    assert ended is None and [len(b) for _, b in members] == [len(data), 100, len(data)]
    assert members[0][1] == data and members[2][1] == data
    _same(buf.getvalue(), max_member_bytes=2 * ustar_reader.CHUNK)   # skipped across chunks


def _pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    n = len(body) + 1
    while len(str(n).encode()) + len(body) != n:
        n = len(str(n).encode()) + len(body)
    return str(n).encode() + body


@pytest.mark.parametrize("first", [True, False], ids=["first-member", "mid-shard"])
def test_pax_size_of_4401_digits_reads_the_same(first):
    """tarfile's int() refuses over 4,300 digits and it takes the size as 0; the reader hands over."""
    records = _pax_record(b"size", b"0" * 4400 + b"5")
    pax = tarfile.TarInfo("././@PaxHeader")
    pax.type, pax.size = tarfile.XHDTYPE, len(records)
    member = tarfile.TarInfo("b.bin")
    member.size = 5
    body = pax.tobuf(tarfile.USTAR_FORMAT) + records + b"\0" * (-len(records) % BLOCK) \
        + member.tobuf(tarfile.USTAR_FORMAT) + b"hello" + bytes(507) + bytes(1024)
    before = b"" if first else _without_end(_tarfile_bytes(tarfile.USTAR_FORMAT, extras=False))
    _same(before + body)


def test_gzip_with_trailing_zeros_reads_whole():
    """gzip, then zeros: neither reader reads past the end marker, so nothing is an error
    (the ustar reader's 64 KiB read-ahead once made this 'not a tar archive')."""
    data = _tarfile_bytes(tarfile.USTAR_FORMAT)
    members, handled, ended = _read(gzip.compress(data) + bytes(16), True)
    assert ended is None and len(members) == len(_read(data, True)[0])
    _same(gzip.compress(data) + bytes(16))


def test_corrupt_and_cut_gzip_reads_the_same(tars):
    """A flipped CRC, a flipped byte mid-stream, and cuts every 97 bytes, also where the reader
    hands over to tarfile mid-shard (GNU long names): the same members before the damage."""
    for name in ("tarfile-ustar", "ustar-then-gnu", "tarfile-gnu"):
        gz = gzip.compress(tars[name], compresslevel=0)
        _same(gz[:-8] + bytes([gz[-8] ^ 1]) + gz[-7:])
        for cut in range(20, len(gz), 97):
            _same(gz[:cut])
        gz = gzip.compress(tars[name])
        mid = len(gz) // 2
        _same(gz[:mid] + bytes([gz[mid] ^ 0xFF]) + gz[mid + 1:])


@pytest.mark.parametrize("damage", ["crc flipped", "length flipped", "trailer cut", "stored byte flipped"])
@pytest.mark.parametrize("name", ["tarfile-ustar", "tarfile-gnu"])
def test_a_gzip_failing_its_check_hands_on_every_member_then_fails(tars, name, damage):
    """Fuzz s41: a CRC-32 that fails was swallowed past the end marker for most shard sizes
    (every sample read as good), and for others it dropped the last 16 KiB inflated, as zlib's
    gzip mode discards the step that meets it. Now every member comes, then gzip_check_failed."""
    whole = _read(tars[name], True)[0]
    gz = bytearray(gzip.compress(tars[name], compresslevel=0 if damage == "stored byte flipped" else 6, mtime=0))
    if damage == "crc flipped":
        gz[-8] ^= 1
    elif damage == "length flipped":
        gz[-1] ^= 1
    elif damage == "trailer cut":
        gz = gz[:-3]
    else:                                           # inside the last member's data, as stored
        with tarfile.open(fileobj=io.BytesIO(tars[name])) as tar:
            at = [m for m in tar.getmembers() if m.isreg() and m.size][-1].offset_data
        assert at < 65530, "in the first stored block: 10 header bytes, then 5 of the block's"
        gz[10 + 5 + at] ^= 0x10
    for fast in (True, False):
        members, handled, ended = _read(bytes(gz), fast)
        assert ended is not None and ended[0] == "gzip_check_failed", (fast, ended)
        assert "fails past the archive's end marker" in ended[1] and "u.tar" in ended[1]
        assert [m for m, _ in members] == [m for m, _ in whole] and not handled
        assert (members == whole) == (damage != "stored byte flipped"), "the flipped byte is handed on, then named"
    _same(bytes(gz))


def test_concatenated_gzip_members_and_zeros_after_them_read_whole(tars):
    data = tars["tarfile-ustar"]
    joined = gzip.compress(data[:3000]) + gzip.compress(data[3000:], mtime=0)
    for tail in (b"", bytes(100)):
        members, handled, ended = _read(joined + tail, True)
        assert ended is None and not handled and members == _read(data, True)[0]
        _same(joined + tail)


def test_a_second_gzip_member_cut_anywhere_after_its_magic_fails_its_check(tars):
    """Review s41: a member cut inside its header passed as the end of the stream. A tar gzipped
    as two members (the archive, then its padding, as some writers split it), cut at every offset
    of the second: from its 2-byte magic on it is a member, and a cut fails the check."""
    data = tars["tarfile-ustar"]
    end = len(data) - 1024
    second = gzip.compress(data[end:], mtime=0)
    for cut in range(len(second) + 1):
        members, handled, ended = _read(gzip.compress(data[:end], mtime=0) + second[:cut], True)
        assert members == _read(data, True)[0] and not handled
        if cut < 2 or cut == len(second):
            assert ended is None, cut
        else:
            assert ended is not None and ended[0] == "gzip_check_failed", cut


@pytest.mark.parametrize("header, message", [
    (b"\x1f\x8b\x08\x02" + bytes(6) + b"\x00\x00", "header fails its CRC-16"),      # FHCRC, wrong
    (b"\x1f\x8b\x08\x20" + bytes(6), r"header is invalid \(method 8, flags 0x20\)"),  # a reserved flag
    (b"\x1f\x8b\x07\x00" + bytes(6), r"header is invalid \(method 7"),
])
def test_a_gzip_header_rfc_1952_refuses_is_refused(tars, header, message):
    """Review s41: zlib's gzip mode refused these; the hand-read header took them."""
    from streamaug.loader.gzip_reader import GzipReader

    body = gzip.compress(tars["tarfile-ustar"], mtime=0)[10:]
    raw = io.BytesIO(header + body)
    with pytest.raises(zlib.error, match=message):
        GzipReader(raw, raw.read(2)).read(1 << 20)
    good = b"\x1f\x8b\x08\x02" + bytes(6) + struct.pack("<H", zlib.crc32(b"\x1f\x8b\x08\x02" + bytes(6)) & 0xFFFF)
    raw = io.BytesIO(good + body)
    assert GzipReader(raw, raw.read(2)).read(1 << 20) == tars["tarfile-ustar"][:1 << 20]


def test_failed_pipe_hands_on_every_member_then_fails(tmp_path):
    """A command that writes a whole tar and exits 1: both readers yield every member, then
    pipe_failed (the read that met the end used to drop what it had read, 64 KiB here)."""
    from streamaug.loader.shard_stream import CommandStream

    rng = np.random.default_rng(2)
    for n in (48, 55):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(n):
                info = tarfile.TarInfo(f"s_{i:03d}.bin")
                info.size = 2000
                tar.addfile(info, io.BytesIO(rng.integers(0, 256, 2000, dtype=np.uint8).tobytes()))
        (tmp_path / "p.tar").write_bytes(buf.getvalue())
        cmd = f"cat {tmp_path / 'p.tar'}; exit 1"
        for fast in (True, False):
            names, ended = [], None
            try:
                for name, _ in tar_members("pipe:" + cmd, CommandStream(cmd, "pipe:" + cmd, 10.0, shell=True),
                                           DecodeLimits(), [].append, fast=fast):
                    names.append(name)
            except StreamError as e:
                ended = e
            assert len(names) == n and ended.reason == "pipe_failed" and ended.value == 1, (n, fast)
