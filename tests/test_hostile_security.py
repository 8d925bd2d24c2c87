"""Issue #14, items 2 and 3: memory bombs refused from headers, formats decided by content.

Every hostile shard is built here, with Python's tarfile, GNU tar, webdataset's
TarWriter or hand-made image headers.
"""
from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
import tarfile
import threading
import zlib

import numpy as np
import pytest
from PIL import EpsImagePlugin, Image

from shard_factory import good_members, npy_bytes, write_tar
from streamaug.loader import StreamError, StreamLoader
from streamaug.loader.decode_limits import MAX_IMAGE_PIXELS, DecodeLimits, check_image
from streamaug.loader.image_codec import decode_image


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def stream(urls, **kw):
    kw.setdefault("batch_size", 4)
    return StreamLoader(urls, index=False, shuffle=0, num_classes=2, device="cpu", **kw)


def keys_of(loader):
    return [k for b in loader for k in b.keys]


def png_header(width: int, height: int, mode: int = 2) -> bytes:
    """A PNG whose IHDR claims ``width x height`` (RGB) with one empty IDAT: tiny, never decodable."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, mode, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real 8x8 JPEG whose SOF0 segment is patched to claim ``width x height``."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def sample(key, image_ext, image_bytes, label=b"0"):
    return [(f"{key}.{image_ext}", image_bytes), (f"{key}.cls", label)]


# --- item 2: member size, checked from the tar header before the bytes are read ---

def test_member_over_the_limit_is_refused_from_its_header_alone(tmp_path):
    # The header claims 3 GiB, but the tar holds none of it: the refusal comes before any read.
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in good_members(2):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        tar.addfile(tarfile.TarInfo("bomb.npy"))
    raw = bytearray(buf.getvalue())
    header = raw.index(b"bomb.npy")
    info = tarfile.TarInfo("bomb.npy")
    info.size = 3 << 30
    raw[header:header + 512] = info.tobuf(tarfile.GNU_FORMAT)
    open("a.tar", "wb").write(bytes(raw))
    with pytest.raises(StreamError) as err:
        list(stream(["a.tar"]))
    assert err.value.reason == "member_too_large" and err.value.shard == "a.tar"
    assert err.value.key == "bomb.npy" and err.value.value == 3 << 30
    assert "max_member_bytes" in str(err.value)


def _meta_header(kind: bytes, size: int) -> bytes:
    """A GNU long-name (``L``) or pax (``x``) header claiming ``size`` bytes of metadata, and no data."""
    info = tarfile.TarInfo("././@LongLink" if kind == b"L" else "././@PaxHeader")
    info.type, info.size = kind, size
    return info.tobuf(tarfile.USTAR_FORMAT if kind == b"x" else tarfile.GNU_FORMAT)


@pytest.mark.parametrize("kind", [b"L", b"x"], ids=["gnu-long-name", "pax"])
@pytest.mark.parametrize("first", [True, False], ids=["first-member", "after-two-samples"])
def test_metadata_header_over_1_mib_is_refused_before_it_is_read(kind, first):
    """The 2 GiB it claims is never read or held; the error names the shard, first member or not."""
    write_tar("good.tar", [] if first else good_members(2))
    raw = open("good.tar", "rb").read().rstrip(b"\0")
    raw = raw + b"\0" * (-len(raw) % 512) + _meta_header(kind, 2 << 30) + bytes(1024)
    open("a.tar", "wb").write(raw)
    with pytest.raises(StreamError) as err:
        list(stream(["a.tar"]))
    assert err.value.reason == "member_too_large" and err.value.value == 2 << 30
    assert err.value.shard == "a.tar" and str(err.value).startswith("shard 'a.tar'")
    loader = stream(["a.tar"], on_error="skip")
    assert keys_of(loader) == ([] if first else ["s_00000"])      # the sample it cut is lost with it
    assert loader.stats.skipped == {"member_too_large": 1}


@pytest.mark.parametrize("fast", [True, False], ids=["ustar-reader", "tarfile"])
def test_header_claiming_2_to_the_80_bytes_in_a_cut_tar_ends_at_once(tmp_path, fast):
    """A base-256 size of 2**80 and no data after it. tarfile's stream passes over data one
    10 KiB record at a time without noticing its end, so this used to read nothing for ever;
    now the refusal is counted and the truncation found at once."""
    from streamaug.loader.tar_members import tar_members
    from streamaug.loader.shard_stream import FileStream

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in good_members(1):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        members_end = tar.offset
    bomb = tarfile.TarInfo("s_00001.npy")
    bomb.size = 1 << 80                           # GNU format writes it base-256
    raw = buf.getvalue()[:members_end] + bomb.tobuf(tarfile.GNU_FORMAT)
    assert raw[-512 + 124] == 0x80
    handled, got, done = [], [], threading.Event()

    def read():
        try:
            got.extend(name for name, _ in tar_members("a.tar", FileStream(io.BytesIO(raw)), DecodeLimits(),
                                                         handled.append, fast=fast))
        except StreamError as e:
            got.append(e)
        done.set()

    threading.Thread(target=read, daemon=True).start()
    assert done.wait(30), "still reading after 30 s"
    assert got[:-1] == ["s_00000.npy", "s_00000.cls", "s_00001.npy"]
    assert [e.reason for e in handled] == ["member_too_large"] and handled[0].value == 1 << 80
    assert got[-1].reason == "truncated_shard" and "unexpected end of data" in str(got[-1])


@pytest.mark.skipif(shutil.which("tar") is None, reason="needs GNU tar to write a sparse member")
def test_sparse_2gib_member_is_refused_without_expanding_it(tmp_path):
    os.mkdir("src")
    for name, data in good_members(3):
        open(f"src/{name}", "wb").write(data)
    with open("src/s_00001.npy", "r+b") as f:      # a 2 GiB file of holes, a few KiB on disk
        f.truncate(2 << 30)
    subprocess.run(["tar", "--sparse", "-cf", "sparse.tar", "-C", "src", "s_00000.npy", "s_00000.cls",
                    "s_00001.npy", "s_00001.cls", "s_00002.npy", "s_00002.cls"], check=True)
    assert os.path.getsize("sparse.tar") < 1 << 20
    with pytest.raises(StreamError) as err:
        list(stream(["sparse.tar"]))
    assert err.value.reason == "member_too_large" and err.value.key == "s_00001.npy"
    loader = stream(["sparse.tar"], on_error="skip")
    assert keys_of(loader) == ["s_00000", "s_00002"], "only the sample holding the bomb is lost"
    assert loader.stats.skipped == {"member_too_large": 1}


def test_gzip_shard_with_a_large_member_is_refused_before_inflating(tmp_path):
    # 64 MiB of zeros gzip to ~64 KiB; with the limit at 1 MiB it is passed over in chunks.
    members = good_members(2)
    with tarfile.open("bomb.tar.gz", "w:gz", compresslevel=1) as tar:
        for name, data in members[:2]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("s_00001.npy")
        info.size = 64 << 20
        tar.addfile(info, io.BytesIO(bytes(64 << 20)))
        tar.addfile(tarfile.TarInfo("s_00001.cls"), io.BytesIO(b""))
    assert os.path.getsize("bomb.tar.gz") < 1 << 20
    loader = stream(["bomb.tar.gz"], on_error="skip", max_member_bytes=1 << 20)
    assert keys_of(loader) == ["s_00000"] and loader.stats.skipped == {"member_too_large": 1}
    with pytest.raises(StreamError, match=r"67108864 bytes, over max_member_bytes=1048576"):
        list(stream(["bomb.tar.gz"], max_member_bytes=1 << 20))


def test_member_limit_can_be_raised_and_is_checked():
    with pytest.raises(ValueError, match="max_member_bytes must be a positive int, got 0"):
        stream(["x.tar"], max_member_bytes=0)
    with pytest.raises(ValueError, match="read_timeout must be a positive number"):
        stream(["x.tar"], read_timeout=-1)


# --- item 2: pixels per image, checked from the image header before decoding ---

@pytest.mark.parametrize("ext,data", [
    ("png", png_header(20000, 20000)),
    ("jpg", jpeg_claiming(20000, 20000)),
    ("npy", np.lib.format.magic(1, 0) + b""),   # replaced below by a header-only npy
])
def test_huge_image_is_refused_from_its_header(tmp_path, ext, data):
    if ext == "npy":   # a header claiming (20000, 20000, 3) uint8 with no data after it
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False,
                                                   "shape": (20000, 20000, 3)})
        data = buf.getvalue()
    write_tar("a.tar", good_members(1) + sample("big", ext, data) + good_members(1, 1))
    with pytest.raises(StreamError) as err:
        list(stream(["a.tar"]))
    assert err.value.reason == "image_too_large" and err.value.key == "big" and err.value.shard == "a.tar"
    assert err.value.value[:2] == (20000, 20000) and "max_image_pixels" in str(err.value)
    loader = stream(["a.tar"], on_error="skip")
    assert keys_of(loader) == ["s_00000", "s_00001"] and loader.stats.skipped == {"image_too_large": 1}


def test_huge_png_never_reaches_dali(tmp_path):
    # The DALI path ships encoded bytes to the main process; the header check runs before that.
    pytest.importorskip("nvidia.dali")
    write_tar("a.tar", good_members(1) + sample("big", "png", png_header(20000, 20000)))
    with pytest.raises(StreamError) as err:
        list(stream(["a.tar"], decode="dali"))
    assert err.value.reason == "image_too_large" and err.value.key == "big"


def test_real_image_over_the_default_limit_and_raising_it(tmp_path):
    side = int(MAX_IMAGE_PIXELS ** 0.5) + 10                 # just over the default pixel count
    buf = io.BytesIO()
    Image.new("L", (side, side)).save(buf, format="PNG")
    write_tar("a.tar", sample("big", "png", buf.getvalue()))
    with pytest.raises(StreamError, match=f"{side} x {side} = {side * side} pixels"):
        list(stream(["a.tar"], batch_size=1))
    (x, _), = list(stream(["a.tar"], batch_size=1, channels=1, max_image_pixels=side * side))
    assert tuple(x.shape) == (1, 1, side, side)


# --- item 3: formats by content ---

def foreign_bytes(fmt: str) -> bytes:
    if fmt == "EPS":
        return (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n"
                b"newpath 0 0 moveto 8 8 lineto stroke\nshowpage\n%%EOF\n")
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["TIFF", "BMP", "EPS", "GIF", "WEBP"])
@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_other_formats_behind_an_image_extension_are_refused(tmp_path, monkeypatch, fmt, ext):
    started = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: started.append(a))
    monkeypatch.setattr(EpsImagePlugin, "has_ghostscript", lambda: started.append("probe") or True)
    write_tar("a.tar", good_members(2) + sample("odd", ext, foreign_bytes(fmt)) + good_members(1, 2))
    with pytest.raises(StreamError) as err:
        list(stream(["a.tar"]))
    assert err.value.reason == "format_mismatch" and err.value.key == "odd" and err.value.shard == "a.tar"
    assert f".{ext} member does not hold" in str(err.value)
    loader = stream(["a.tar"], on_error="skip")
    assert keys_of(loader) == ["s_00000", "s_00001", "s_00002"]
    assert loader.stats.skipped == {"format_mismatch": 1}
    assert started == [], "Ghostscript is never started"


def test_value_names_the_foreign_format(tmp_path):
    write_tar("a.tar", sample("odd", "png", foreign_bytes("TIFF")))
    with pytest.raises(StreamError, match=r"value: .TIFF bytes"):
        list(stream(["a.tar"]))


def test_npy_bytes_behind_png_and_png_behind_npy(tmp_path):
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    write_tar("a.tar", sample("a", "png", npy_bytes(np.zeros((8, 8, 3), np.uint8)))
              + sample("b", "npy", png.getvalue()) + good_members(1))
    loader = stream(["a.tar"], on_error="skip")
    assert keys_of(loader) == ["s_00000"] and loader.stats.skipped == {"format_mismatch": 2}


def test_each_extension_decodes_its_own_format(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    members = []
    for i, fmt in enumerate(["PNG", "JPEG", "WEBP"]):
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
        members += sample(f"k{i}", {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp"}[fmt], buf.getvalue())
    write_tar("a.tar", members)
    (x, y), = list(stream(["a.tar"], batch_size=3))
    assert tuple(x.shape) == (3, 3, 8, 8)
    assert np.array_equal(x[0].permute(1, 2, 0).numpy(), image), "png is lossless"
    assert np.array_equal(x[2].permute(1, 2, 0).numpy(), image), "lossless webp too"


def test_decoder_itself_opens_only_the_named_format():
    # Even called directly, Pillow is told the one format it may use.
    with pytest.raises(Exception, match="cannot identify"):
        decode_image(foreign_bytes("TIFF"), "png")
    with pytest.raises(StreamError, match="format_mismatch|does not hold"):
        check_image(foreign_bytes("BMP"), "jpeg", DecodeLimits(), "u", "k")


@pytest.mark.skipif(shutil.which("tar") is None, reason="needs GNU tar")
@pytest.mark.parametrize("flag,name", [("-czf", "a.tar.gz"), ("-cjf", "a.tar.bz2"), ("-cf", "a.tar")])
def test_compressed_shards_written_by_gnu_tar_stream_whole(tmp_path, flag, name):
    os.mkdir("src")
    for member, data in good_members(5):
        open(f"src/{member}", "wb").write(data)
    subprocess.run(["tar", flag, name, "-C", "src", *sorted(os.listdir("src"))], check=True)
    loader = stream([name], on_error="raise")
    assert keys_of(loader) == [f"s_{i:05d}" for i in range(5)] and loader.stats.skipped == {}
