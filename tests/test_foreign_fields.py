"""Foreign field names: .jpg/.jpeg/.png/.webp/.npy images, .cls/.label/.txt/.json labels,
grayscale and RGBA converted to ``channels``, unknown fields never decoded."""
from __future__ import annotations

import io
import json
import os
import pickle
import sys

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from shard_factory import npy_bytes
from streamaug.loader import StreamError, StreamLoader, build_index
from streamaug.loader.sample_decoder import convert_channels

LABELS = [0, 1, 2, 1, 0, 2, 2, 1]


def image_bytes(arr: np.ndarray, ext: str) -> bytes:
    if ext == "npy":
        return npy_bytes(arr)
    buf = io.BytesIO()
    fmt = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}[ext]
    Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr).save(buf, format=fmt, **(
        {"lossless": True} if fmt == "WEBP" else {}))
    return buf.getvalue()


def label_field(label: int, field: str) -> tuple[str, bytes]:
    if field.startswith("json:"):
        return "json", json.dumps({"meta": {"y": label}} if field == "json:meta.y" else {"label": label}).encode()
    return field, str(label).encode() + (b"\n" if field == "txt" else b"")


def corpus(folder, ext="png", field="cls", images=None, extra=None):
    rng = np.random.default_rng(0)
    images = images if images is not None else [rng.integers(0, 256, (6, 5, 3), np.uint8) for _ in LABELS]
    os.makedirs(folder, exist_ok=True)
    with wds.TarWriter(os.path.join(folder, "c.tar")) as sink:
        for i, (img, y) in enumerate(zip(images, LABELS)):
            name, data = label_field(y, field)
            sample = {"__key__": f"s{i:03d}", ext: image_bytes(img, ext), name: data, **(extra or {})}
            sink.write(sample)
    return os.path.join(folder, "c.tar"), images


@pytest.mark.parametrize("ext", ["jpg", "jpeg", "png", "webp", "npy"])
@pytest.mark.parametrize("field", ["cls", "label", "txt", "json:label"])
def test_image_and_label_fields_are_detected(tmp_path, ext, field):
    url, images = corpus(tmp_path, ext, field)
    index = build_index(url, progress=False)
    assert index.image_ext == ext and index.class_counts == [2, 3, 3] and index.image_shape == (6, 5, 3)
    assert index.label_key == field                      # (cls too: an index names the field it counted)
    x, y = next(iter(StreamLoader(url, batch_size=8, shuffle=0)))
    assert y.tolist() == LABELS and tuple(x.shape) == (8, 3, 6, 5)
    if ext in ("png", "webp", "npy"):                     # lossless: the very pixels
        assert np.array_equal(x.permute(0, 2, 3, 1).numpy(), np.stack(images))


def test_label_key_is_chosen_by_argument(tmp_path):
    """A .json label that is not under 'label', beside a .txt caption: detection would take the caption."""
    url, _ = corpus(tmp_path, "png", "json:meta.y", extra={"txt": b"a caption"})
    with pytest.raises(StreamError, match="label in 'txt' is not an integer") as info:
        build_index(url, progress=False)
    assert info.value.key == "s000" and info.value.value == b"a caption"
    index = build_index(url, label_key="json:meta.y", progress=False)
    assert index.label_key == "json:meta.y"
    _, y = next(iter(StreamLoader(url, batch_size=8, shuffle=0)))      # the index's label_key is used
    assert y.tolist() == LABELS
    _, y = next(iter(StreamLoader(url, batch_size=8, shuffle=0, index=False, label_key="json:meta.y")))
    assert y.tolist() == LABELS
    with pytest.raises(ValueError, match="label_key must be one of"):
        StreamLoader(url, batch_size=8, label_key="yaml")
    with pytest.raises(StreamError, match=r"no 'cls' label; label_key= may name what it has: txt, json \(json:FIELD for a field of .json\)"):
        list(StreamLoader(url, batch_size=8, shuffle=0, index=False, label_key="cls"))     # says what is there



@pytest.mark.parametrize("workers", [0, 2])
def test_a_sample_missing_the_label_field_is_not_read_from_another_field(tmp_path, workers):
    """Newcomer s32: without an index, a sample that lost its .cls took its label from its .txt
    caption or its .json (webdataset's to_tuple raises; streamaug index refuses the mix)."""
    rng = np.random.default_rng(0)
    with wds.TarWriter(str(tmp_path / "c.tar")) as sink:
        for i, y in enumerate(LABELS):
            sample = {"__key__": f"s{i:03d}", "png": image_bytes(rng.integers(0, 256, (6, 5, 3), np.uint8), "png"),
                      "txt": b"1", "json": json.dumps({"label": 1}).encode()}
            if i != 3:
                sample["cls"] = str(y).encode()
            sink.write(sample)
    url = str(tmp_path / "c.tar")
    with pytest.raises(StreamError, match=r"key 's003': sample has no 'cls' label \(the label field of the samples "
                       r"read before it\); label_key= may name what it has: txt, json"):
        list(StreamLoader(url, batch_size=4, shuffle=0, index=False, num_workers=workers))
    loader = StreamLoader(url, batch_size=4, shuffle=0, index=False, num_workers=workers, on_error="skip")
    assert sorted(y for b in loader for y in b[1].tolist()) == sorted(LABELS[:3] + LABELS[4:])
    assert loader.stats.skipped == {"no_label": 1}


def test_whole_number_json_floats_are_labels_and_words_alone_get_the_class_names_hint(tmp_path):
    from streamaug.loader.image_codec import decode_label, read_label
    assert read_label({"json": b'{"label": 3.0}'}, "json:label") == 3
    with pytest.raises(ValueError, match=r"field 'label' is 1.5, not an integer class"):
        read_label({"json": b'{"label": 1.5}'}, "json:label")
    assert decode_label(b"+3") == 3                     # (as int() reads it, and webdataset with it)
    with pytest.raises(ValueError, match="label is not an integer: '1_0'"):
        decode_label(b"1_0")
    for name, value in (("float", b'{"label": 1.5}'), ("word", b'{"label": "dog"}')):
        with wds.TarWriter(str(tmp_path / f"{name}.tar")) as sink:
            sink.write({"__key__": "x", "png": image_bytes(np.zeros((6, 5, 3), np.uint8), "png"), "json": value})
    errors = {}
    for name in ("float", "word"):
        with pytest.raises(StreamError) as info:
            next(iter(StreamLoader(str(tmp_path / f"{name}.tar"), batch_size=1, index=False, label_key="json:label")))
        errors[name] = str(info.value)
    assert "field 'label' is 1.5, not an integer class" in errors["float"] and "class names" not in errors["float"]
    assert "label is not an integer: 'dog'; labels written as class names are read through an index" in errors["word"]

def test_bad_json_label_names_shard_key_and_value(tmp_path):
    url, _ = corpus(tmp_path, "png", "json:label")
    with pytest.raises(StreamError, match="no field 'y'; its fields there: label") as info:
        list(StreamLoader(url, batch_size=8, shuffle=0, index=False, label_key="json:y"))
    assert (info.value.reason, info.value.key, info.value.shard) == ("bad_label", "s000", url)


@pytest.mark.parametrize("ext", ["png", "npy"])
def test_grayscale_and_rgba_convert_to_the_channels_asked_for(tmp_path, ext):
    rng = np.random.default_rng(3)
    gray = [rng.integers(0, 256, (6, 5, 1), np.uint8) for _ in range(4)]
    rgba = [rng.integers(0, 256, (6, 5, 4), np.uint8) for _ in range(4)]
    url, _ = corpus(tmp_path, ext, images=gray + rgba)
    index = build_index(url, progress=False)
    assert index.image_shape == (6, 5, 3), "mixed gray and colour: the index records 3 channels"
    x, _ = next(iter(StreamLoader(url, batch_size=8, shuffle=0)))
    x = x.permute(0, 2, 3, 1).numpy()
    assert x.shape == (8, 6, 5, 3)
    assert np.array_equal(x[:4], np.repeat(np.stack(gray), 3, axis=3))
    assert np.array_equal(x[4:], np.stack(rgba)[..., :3])
    x1, _ = next(iter(StreamLoader(url, batch_size=8, shuffle=0, channels=1)))
    expected = [np.asarray(Image.fromarray(a[..., :3]).convert("L")) for a in rgba]
    assert x1.shape == (8, 1, 6, 5) and np.array_equal(x1[4:, 0].numpy(), np.stack(expected)), "PIL's luma"
    x4, _ = next(iter(StreamLoader(url, batch_size=8, shuffle=0, channels=4)))
    x4 = x4.permute(0, 2, 3, 1).numpy()
    assert np.array_equal(x4[4:], np.stack(rgba)), "channels=4: each file's own alpha (red team s40: PNG's was 255)"
    assert np.array_equal(x4[:4, ..., :3], np.repeat(np.stack(gray), 3, axis=3)) and (x4[:4, ..., 3] == 255).all()
    with pytest.raises(ValueError, match="channels must be 1, 3 or 4"):
        StreamLoader(url, batch_size=8, channels=2)


@pytest.mark.parametrize("kind", ["webp RGBA", "png LA", "png P + tRNS", "png RGB + tRNS"])
def test_channels_4_keeps_the_transparency_a_file_holds(tmp_path, kind):
    """Alpha however a file stores it (an alpha channel, a transparent palette entry or colour)
    comes out as PIL's RGBA with channels=4; the default, from the index, stays 1 or 3 channels,
    alpha dropped, as torchvision's and DALI's RGB decoding give."""
    rng = np.random.default_rng(5)
    ext, mode = kind.split(" ", 1)
    files = []
    for _ in LABELS:
        if mode == "RGBA":
            img = Image.fromarray(rng.integers(0, 256, (6, 5, 4), np.uint8), "RGBA")
        elif mode == "LA":
            img = Image.fromarray(rng.integers(0, 256, (6, 5, 2), np.uint8), "LA")
        elif mode == "P + tRNS":
            img = Image.fromarray(rng.integers(0, 4, (6, 5), np.uint8), "P")
            img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255])
            img.info["transparency"] = 1
        else:
            img = Image.fromarray(rng.integers(0, 2, (6, 5, 3), np.uint8) * 255, "RGB")
            img.info["transparency"] = (255, 255, 255)
        buf = io.BytesIO()
        img.save(buf, format={"png": "PNG", "webp": "WEBP"}[ext], **({"lossless": True} if ext == "webp" else {}),
                 **({"transparency": img.info["transparency"]} if "transparency" in img.info else {}))
        files.append(buf.getvalue())
    with wds.TarWriter(str(tmp_path / "c.tar")) as sink:
        for i, (data, y) in enumerate(zip(files, LABELS)):
            sink.write({"__key__": f"s{i:03d}", ext: data, "cls": str(y).encode()})
    want = np.stack([np.asarray(Image.open(io.BytesIO(d)).convert("RGBA")) for d in files])
    assert len(np.unique(want[..., 3])) > 1, "the files do hold transparency"
    index = build_index(str(tmp_path / "c.tar"), progress=False)
    assert index.image_shape[2] == (1 if mode == "LA" else 3)
    x, _ = next(iter(StreamLoader(index.urls, batch_size=8, shuffle=0, channels=4)))
    assert np.array_equal(x.permute(0, 2, 3, 1).numpy(), want)
    plain, _ = next(iter(StreamLoader(index.urls, batch_size=8, shuffle=0)))
    assert plain.shape[1] == index.image_shape[2]


def test_channels_4_of_a_16_bit_gray_png_with_a_transparent_value_is_reduced_not_clipped():
    """Review s40: PIL's convert("RGBA") of a 16-bit gray PNG clips every value over 255 to white
    (and left the transparent value opaque); it is reduced as without alpha, round(v / 257)."""
    from streamaug.loader.image_codec import decode_image

    buf = io.BytesIO()
    Image.fromarray(np.array([[0, 1000, 30000, 65535]], np.uint16)).save(buf, format="PNG", transparency=1000)
    got = decode_image(buf.getvalue(), "png", alpha=True)
    assert got.reshape(-1, 4).tolist() == [[0, 0, 0, 255], [4, 4, 4, 0], [117, 117, 117, 255], [255, 255, 255, 255]]
    assert decode_image(buf.getvalue(), "png").reshape(-1).tolist() == [0, 4, 117, 255]


def _with_trns(png: bytes, key: tuple[int, int, int]) -> bytes:
    """``png`` with a 16-bit transparent colour chunk put after its header chunk."""
    import struct
    import zlib

    body = struct.pack(">HHH", *key)
    chunk = struct.pack(">I", 6) + b"tRNS" + body + struct.pack(">I", zlib.crc32(b"tRNS" + body) & 0xFFFFFFFF)
    return png[:33] + chunk + png[33:]


@pytest.mark.parametrize("opencv", [True, False], ids=["opencv", "no-opencv"])
@pytest.mark.parametrize("row_filter", ["NONE", "SUB", "UP", "AVG", "PAETH", "ALL"])
def test_channels_4_of_a_16_bit_rgb_png_with_a_transparent_colour_matches_libpng(tmp_path, row_filter, opencv,
                                                                                  monkeypatch):
    """s41: PIL reduces 16-bit RGB to 8 bits, then compares the 16-bit tRNS colour with the
    reduced pixels and made every pixel opaque. The key is matched on the 16-bit samples. libpng
    (OpenCV's writer, each PNG row filter and its own mix of them) writes the file; OpenCV's
    reader (libpng's tRNS to alpha) is the reference."""
    cv2 = pytest.importorskip("cv2")
    import zlib

    from streamaug.loader.png_colour_key import png_chunks, rgb16_samples

    h, w = 9, 13
    rgb = np.random.default_rng(7).integers(0, 65536, (h, w, 3)).astype(np.uint16)
    key = (1000, 2000, 3000)
    rgb[2, 3] = rgb[8, 12] = rgb[0, 0] = key
    rgb[4, 4] = (1000, 2000, 3001)                 # same high bytes as the key, not the key
    flag = getattr(cv2, "IMWRITE_PNG_ALL_FILTERS" if row_filter == "ALL" else f"IMWRITE_PNG_FILTER_{row_filter}")
    ok, enc = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_PNG_FILTER, flag])
    assert ok
    data = _with_trns(enc.tobytes(), key)
    idat = zlib.decompress(b"".join(body for kind, body in png_chunks(data) if kind == b"IDAT"))
    used = {idat[y * (w * 6 + 1)] for y in range(h)}
    assert used == ({0, 1, 2, 3, 4} if row_filter == "ALL" else {["NONE", "SUB", "UP", "AVG", "PAETH"].index(row_filter)})
    ref = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)     # BGRA, libpng's alpha
    assert ref.shape == (h, w, 4) and np.array_equal(ref[..., 2::-1], rgb)
    assert np.array_equal(ref[..., 3] == 0, (rgb == key).all(axis=2)) and (ref[..., 3] == 0).sum() == 3
    assert np.array_equal(rgb16_samples(data), rgb), "the unfiltered samples are libpng's"
    if not opencv:                                 # the loader reads it without OpenCV too (in this process)
        monkeypatch.setitem(sys.modules, "cv2", None)
    with wds.TarWriter(str(tmp_path / "k.tar")) as sink:
        sink.write({"__key__": "s000", "png": data, "cls": b"1"})
    x, _ = next(iter(StreamLoader(str(tmp_path / "k.tar"), batch_size=1, shuffle=0, channels=4, index=False)))
    got = x[0].permute(1, 2, 0).numpy()
    assert np.array_equal(got[..., 3], (ref[..., 3] // 257).astype(np.uint8)), "libpng's alpha: 0 at the key"
    assert np.array_equal(got[..., :3], np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    plain, _ = next(iter(StreamLoader(str(tmp_path / "k.tar"), batch_size=1, shuffle=0, index=False)))
    assert plain.shape[1] == 3


def _png(width: int, height: int, idat: bytes, interlace: int = 0) -> bytes:
    import struct
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, interlace))
            + chunk(b"tRNS", struct.pack(">HHH", 0, 0, 0)) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_a_keyed_16_bit_png_is_read_without_inflating_past_its_rows_or_too_many_pixels():
    """Review s41: a 300 KB 1 x 1 PNG whose image data inflates to 300 MB grew memory by 600 MB
    under channels=4 (PIL's own path stays flat); without OpenCV the Python reader takes at most
    PYTHON_PIXELS (2.3 s a megapixel)."""
    import tracemalloc
    import zlib

    from streamaug.loader.png_colour_key import PYTHON_PIXELS, rgb16_samples

    bomb = _png(1, 1, zlib.compress(b"\x00" + bytes(6) + bytes(100 << 20), 9))
    tracemalloc.start()
    try:
        assert rgb16_samples(bomb).tolist() == [[[0, 0, 0]]]
        assert tracemalloc.get_traced_memory()[1] < 8 << 20
    finally:
        tracemalloc.stop()
    with pytest.raises(ValueError, match=f"2049 x 2048 pixels .*not installed.*up to {PYTHON_PIXELS} pixels"):
        rgb16_samples(_png(2049, 2048, zlib.compress(b"")))


def test_an_interlaced_16_bit_rgb_png_with_a_transparent_colour_is_read_by_libpng_or_refused_by_name(monkeypatch):
    """Without OpenCV its alpha would need Adam7's passes undone, which is not written here; it
    is refused, the message says how to read it. OpenCV's libpng reads it."""
    import zlib

    from streamaug.loader.image_codec import decode_image

    data = _png(1, 1, zlib.compress(b"\x00" + bytes(6)), interlace=1)     # 1x1: one pass holds the one pixel
    assert decode_image(data, "png").shape == (1, 1, 3)
    pytest.importorskip("cv2")
    assert decode_image(data, "png", alpha=True).tolist() == [[[0, 0, 0, 0]]], "the pixel is the transparent colour"
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(ValueError, match="interlaced 16-bit RGB PNG.*channels=3"):
        decode_image(data, "png", alpha=True)


def test_convert_channels_keeps_the_values():
    rgb = np.arange(2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 3)
    assert np.array_equal(convert_channels(rgb, 4)[..., :3], rgb) and (convert_channels(rgb, 4)[..., 3] == 255).all()
    assert np.array_equal(convert_channels(rgb[..., :1], 3), np.repeat(rgb[..., :1], 3, axis=2))
    with pytest.raises(ValueError, match="cannot convert 5 channels"):
        convert_channels(np.zeros((2, 2, 5), np.uint8), 3)


class Boom:
    def __reduce__(self):
        return (open, (os.environ["BOOM_MARKER"], "w"))


def test_unknown_fields_are_ignored_without_decoding(tmp_path, monkeypatch):
    marker = tmp_path / "unpickled"
    monkeypatch.setenv("BOOM_MARKER", str(marker))
    extra = {"pickle": pickle.dumps(Boom()), "pyd": pickle.dumps(Boom()), "xyz": b"\x00garbage",
             "seg.png": b"not a png at all"}
    url, images = corpus(tmp_path / "c", "png", extra=extra)
    assert build_index(url, progress=False).total == 8
    x, y = next(iter(StreamLoader(url, batch_size=8, shuffle=0, num_workers=2)))
    assert y.tolist() == LABELS and np.array_equal(x.permute(0, 2, 3, 1).numpy(), np.stack(images))
    assert not marker.exists()


def raw_png(pixels: np.ndarray, color_type: int) -> bytes:
    """A PNG of big-endian 16-bit ``pixels`` (H, W, C), each row unfiltered: PIL cannot write
    16-bit gray + alpha, and OpenCV writes no 2-channel PNG."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    h, w = pixels.shape[:2]
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def png_of(mode: str, rng) -> tuple[bytes, np.ndarray]:
    """PNG bytes of a PIL ``mode`` (or 16-bit colour, which PIL cannot write: OpenCV; or 16-bit
    gray + alpha, written by hand) and the (H, W, C) uint8 pixels the loader should give for it."""
    import cv2

    if mode == "LA;16":
        wide = rng.integers(0, 65536, (6, 5, 2), dtype=np.uint16)
        return raw_png(wide, color_type=4), (wide[..., :1] >> 8).astype(np.uint8)  # PIL keeps the high byte
    if mode == "RGB;16":
        wide = rng.integers(0, 65536, (6, 5, 3), dtype=np.uint16)
        data = cv2.imencode(".png", wide[..., ::-1])[1].tobytes()          # (OpenCV writes BGR)
        return data, (wide >> 8).astype(np.uint8)                          # PIL keeps the high byte
    if mode == "I;16":
        wide = rng.integers(0, 65536, (6, 5), dtype=np.uint16)
        wide[0, :3] = [0, 300, 65535]
        img, want = Image.fromarray(wide), np.round(wide / 257).astype(np.uint8)[..., None]
    elif mode == "1":
        bits = rng.integers(0, 2, (6, 5)).astype(bool)
        img, want = Image.fromarray(bits), (bits * 255).astype(np.uint8)[..., None]
    else:                                                                  # LA: the gray, alpha dropped
        pixels = rng.integers(0, 256, (6, 5, 2), np.uint8)
        img, want = Image.fromarray(pixels, "LA"), pixels[..., :1]
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue(), want


@pytest.mark.parametrize("mode", ["I;16", "1", "LA", "LA;16", "RGB;16"])
def test_16_bit_bilevel_and_gray_alpha_pngs_decode_as_dali_does(tmp_path, mode):
    """Newcomer: 16-bit gray PNGs (medical, scientific data) came out 99.7% white (PIL's
    ``convert`` clips every value over 255), while ``decode="dali"`` scaled them; and bilevel
    PNGs became 3 channels, so the index recorded no image shape. 16-bit gray is now reduced
    as DALI reduces it, ``round(v / 257)``, and gray modes are 1 channel in the index and the
    batch; 16-bit gray + alpha too (PIL opens it as RGBA: it was 3 channels)."""
    rng = np.random.default_rng(1)
    pairs = [png_of(mode, rng) for _ in LABELS]
    os.makedirs(tmp_path / "s")
    with wds.TarWriter(str(tmp_path / "s" / "c.tar")) as sink:
        for i, ((data, _), y) in enumerate(zip(pairs, LABELS)):
            sink.write({"__key__": f"s{i:03d}", "png": data, "cls": str(y).encode()})
    channels = 3 if mode == "RGB;16" else 1
    index = build_index(str(tmp_path / "s" / "c.tar"), progress=False)
    assert index.image_shape == (6, 5, channels)
    want = np.stack([w for _, w in pairs])
    x, _ = next(iter(StreamLoader(index.urls, batch_size=8, shuffle=0)))
    assert np.array_equal(x.permute(0, 2, 3, 1).numpy(), want)
    d, _ = next(iter(StreamLoader(index.urls, batch_size=8, shuffle=0, decode="dali")))
    assert d.shape == x.shape
    assert (d.int() - x.int()).abs().max() <= (1 if mode in ("RGB;16", "LA;16") else 0)  # DALI rounds, PIL truncates


@pytest.mark.parametrize("array, message", [
    (np.zeros((6, 5, 3), np.float32), "npy image must be uint8, got dtype float32"),   # newcomer: indexed, then refused
    (np.full((6, 5, 2), 7, np.uint8), r"npy image must have 1 \(gray\), 3 \(RGB\) or 4 \(RGBA\) channels, got shape "
                                      r"\(6, 5, 2\); for gray \+ alpha"),             # read as gray + alpha, half lost
    (np.full((6, 5, 5), 7, np.uint8), r"channels, got shape \(6, 5, 5\) \(value"),     # no gray + alpha hint
    (np.zeros((0, 8, 3), np.uint8), r"npy image has no pixels, shape \(0, 8, 3\)"),    # (fuzz s41: with resize=
    (np.zeros((8, 0), np.uint8), r"npy image has no pixels, shape \(8, 0\)"),          # it became a black image)
])
def test_an_npy_image_the_loader_refuses_is_refused_by_the_index(tmp_path, array, message):
    images = [array] * len(LABELS)
    os.makedirs(tmp_path / "f")
    with wds.TarWriter(str(tmp_path / "f" / "c.tar")) as sink:
        for i, (img, y) in enumerate(zip(images, LABELS)):
            buf = io.BytesIO()
            np.save(buf, img)
            sink.write({"__key__": f"s{i:03d}", "npy": buf.getvalue(), "cls": str(y).encode()})
    with pytest.raises(StreamError, match=message) as info:
        build_index(str(tmp_path / "f" / "c.tar"), progress=False)
    assert info.value.key == "s000" and info.value.shard.endswith("c.tar")
    for decode in ("cpu", "dali"):
        loader = StreamLoader(str(tmp_path / "f" / "c.tar"), batch_size=4, index=False, num_classes=4, on_error="skip",
                              resize=4, decode=decode)
        assert list(loader) == [] and loader.stats.skipped["undecodable_image"] == len(LABELS)


def test_a_first_sample_that_lost_its_label_does_not_set_the_field_for_the_rest(tmp_path):
    """Red team 3, s32: the first labelled sample's field was every sample's; when that one had
    lost its .cls and kept a .txt caption, every later sample failed as bad_label."""
    rng = np.random.default_rng(0)
    with wds.TarWriter(str(tmp_path / "c.tar")) as sink:
        for i, y in enumerate(LABELS):
            sample = {"__key__": f"s{i:03d}", "png": image_bytes(rng.integers(0, 256, (6, 5, 3), np.uint8), "png"),
                      "txt": b"a dog"}
            if i:
                sample["cls"] = str(y).encode()
            sink.write(sample)
    loader = StreamLoader(str(tmp_path / "c.tar"), batch_size=4, shuffle=0, index=False, on_error="skip")
    assert [y for b in loader for y in b[1].tolist()] == LABELS[1:]
    assert loader.stats.skipped == {"bad_label": 1}


def test_numbers_that_are_not_integers_get_no_class_names_hint():
    from streamaug.loader.image_codec import LabelIsText, decode_label
    for text in (b"3.0", b"1e3", b"-.5"):
        with pytest.raises(ValueError, match="label is not an integer") as info:
            decode_label(text)
        assert not isinstance(info.value, LabelIsText)
    with pytest.raises(ValueError, match="label is empty"):
        decode_label(b"  ")
    with pytest.raises(LabelIsText):
        decode_label(b"dog")


def test_a_utf8_bom_and_deep_json_are_read_or_refused_by_name(tmp_path):
    """Red team s33: a .cls saved by Notepad (a UTF-8 BOM before "3") was refused as '\\ufffd\\ufffd\\ufffd3'
    with the class-names hint; a 60 KB .json nested 30,000 deep (under the label size limit) raised a
    bare RecursionError naming nothing, under on_error='skip' too, and stopped streamaug index."""
    from streamaug.loader.image_codec import decode_label, read_label
    assert decode_label(b"\xef\xbb\xbf3\r\n") == 3
    assert decode_label(b"\xef\xbb\xbfcat", {"cat": 0, "dog": 1}) == 0
    assert read_label({"json": b'\xef\xbb\xbf{"label": 2}'}, "json:label") == 2
    deep = b'{"label": ' + b"[" * 30000 + b"]" * 30000 + b"}"
    png = image_bytes(np.zeros((6, 5, 3), np.uint8), "png")
    with wds.TarWriter(str(tmp_path / "c.tar")) as sink:
        for key, label in (("a", b'{"label": 1}'), ("b", deep), ("c", b'{"label": 0}')):
            sink.write({"__key__": key, "png": png, "json": label})
    url = str(tmp_path / "c.tar")
    loader = StreamLoader(url, batch_size=4, index=False, label_key="json:label", on_error="skip", num_classes=2)
    assert [k for b in loader for k in b.keys] == ["a", "c"] and loader.stats.skipped == {"bad_label": 1}
    for build in (lambda: list(StreamLoader(url, batch_size=4, index=False, label_key="json:label")),
                  lambda: build_index(url, label_key="json:label", progress=False)):
        with pytest.raises(StreamError, match="nested too deeply to parse") as info:
            build()
        assert info.value.key == "b" and "class names" not in str(info.value)


def test_pil_told_to_fill_cut_images_is_named_when_the_loader_is_built(tmp_path, monkeypatch):
    """Red team s33: with PIL's LOAD_TRUNCATED_IMAGES (set by many training scripts) cut images
    decode half gray, and no decode path can count them: the loader and the index now say so."""
    from PIL import ImageFile
    url, _ = corpus(tmp_path)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.warns(RuntimeWarning, match="LOAD_TRUNCATED_IMAGES is True: a cut image decodes with its missing"):
        StreamLoader(url, index=False, num_classes=3)
    with pytest.warns(RuntimeWarning, match="LOAD_TRUNCATED_IMAGES"):
        build_index(url, progress=False)
