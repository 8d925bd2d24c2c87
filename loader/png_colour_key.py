"""The alpha of a 16-bit RGB PNG with a transparent colour (a ``tRNS`` chunk).

PIL opens such a PNG as 8-bit ``RGB``, each channel reduced to its high byte, and keeps the
16-bit transparent colour in ``info["transparency"]``; ``convert("RGBA")`` then compares the
reduced pixels with the 16-bit key, matches none, and makes every pixel opaque. The key can
only be matched on the 16-bit samples, which PIL does not give, so this module reads them:
the ``IDAT`` data inflated and unfiltered (PNG's five row filters) with numpy. Only this rare
case comes here (``channels=4`` and such a PNG). Where OpenCV is installed, libpng reads it
(its transparent colour made alpha, as the PNG spec has it); without it, this module does, for
non-interlaced images up to ``PYTHON_PIXELS`` (an interlaced one, or a larger one, is refused by
name): rows filtered by average or Paeth are undone byte by byte in Python, about 0.13 s for a
224² image and 2.3 s per megapixel."""
from __future__ import annotations

import struct
import zlib

import numpy as np
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RGB16_BYTES = 6                                   # bytes per pixel: 3 channels × 2 bytes
PYTHON_PIXELS = 1 << 22                           # the most read here, without OpenCV (~9 s of Paeth rows)


def is_keyed_rgb16(img: Image.Image) -> bool:
    """A PNG stored as 16-bit RGB with a transparent colour."""
    tile = getattr(img, "tile", None)
    return (img.format == "PNG" and img.mode == "RGB" and isinstance(img.info.get("transparency"), tuple)
            and bool(tile) and str(tile[0][3]) == "RGB;16B")


def png_chunks(data: bytes):
    """(type, body) of each chunk, in order; a cut last chunk gives what is there."""
    pos = len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        yield kind, data[pos + 8:pos + 8 + length]
        pos += 12 + length


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else (b if pb <= pc else c)


def _unfilter_row(kind: int, row: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """One row of bytes, its filter undone (PNG spec, section 9)."""
    bpp = RGB16_BYTES
    if kind == 0:
        return row
    if kind == 2:
        return (row.astype(np.uint16) + prior).astype(np.uint8)
    if kind == 1:                                    # each byte adds the one bpp before it: a sum per lane
        return (np.cumsum(row.reshape(-1, bpp).astype(np.int64), axis=0) % 256).astype(np.uint8).reshape(-1)
    if kind not in (3, 4):
        raise ValueError(f"PNG row filter type {kind} is not one of 0-4")
    out, up = row.tolist(), prior.tolist()           # Python ints: ~5x faster than numpy scalars here
    for i in range(len(out)):                        # sequential: each byte needs the one decoded before it
        left = out[i - bpp] if i >= bpp else 0
        if kind == 3:
            out[i] = (out[i] + (left + up[i]) // 2) & 255
        else:
            out[i] = (out[i] + _paeth(left, up[i], up[i - bpp] if i >= bpp else 0)) & 255
    return np.array(out, np.uint8)


def rgb16_samples(data: bytes) -> np.ndarray:
    """``(H, W, 3)`` uint16 samples of a non-interlaced 16-bit RGB PNG."""
    chunks = list(png_chunks(data))
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    if depth != 16 or colour != 2:
        raise ValueError(f"not a 16-bit RGB PNG (bit depth {depth}, colour type {colour})")
    if interlace:
        raise ValueError("an interlaced 16-bit RGB PNG with a transparent colour cannot be read with its "
                         "alpha (channels=4); re-save it without interlacing, or read it with channels=3")
    stride = width * RGB16_BYTES
    if width * height > PYTHON_PIXELS:
        raise ValueError(f"a 16-bit RGB PNG with a transparent colour of {width} x {height} pixels is read with its "
                         f"alpha (channels=4) by OpenCV, which is not installed (pip install 'streamaug[opencv]'); "
                         f"without it, up to {PYTHON_PIXELS} pixels")
    try:                                             # only the rows' bytes: never more (a small file can
        raw = zlib.decompressobj().decompress(       # inflate to gigabytes)
            b"".join(body for kind, body in chunks if kind == b"IDAT"), height * (stride + 1))
    except zlib.error as exc:
        raise ValueError(f"PNG image data cannot be inflated ({exc})") from None
    raw = np.frombuffer(raw, np.uint8)
    if raw.size < height * (stride + 1):
        raise ValueError(f"PNG image data is cut: {raw.size} bytes for {height} rows of {stride + 1}")
    rows = raw[:height * (stride + 1)].reshape(height, stride + 1)
    out = np.empty((height, stride), np.uint8)
    prior = np.zeros(stride, np.uint8)
    for y in range(height):
        prior = out[y] = _unfilter_row(int(rows[y, 0]), rows[y, 1:], prior)
    return out.view(">u2").reshape(height, width, 3)


def libpng_clear(data: bytes) -> np.ndarray | None:
    """Where libpng (OpenCV's reader) makes the image transparent, ``(H, W)`` bool; ``None``
    without OpenCV."""
    try:
        import cv2
    except ImportError:
        return None
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if decoded is None or decoded.ndim != 3 or decoded.shape[2] != 4:
        raise ValueError("PNG image data does not decode (OpenCV)")
    return decoded[..., 3] == 0


def keyed_rgb16_rgba(img: Image.Image, data: bytes) -> np.ndarray:
    """``(H, W, 4)`` uint8: PIL's 8-bit RGB of ``img`` and an alpha of 0 where the 16-bit
    samples in ``data`` equal the transparent colour, 255 elsewhere (libpng's where OpenCV is
    installed, else :func:`rgb16_samples`')."""
    clear = libpng_clear(data)
    if clear is None:
        clear = (rgb16_samples(data) == np.asarray(img.info["transparency"], np.uint16)).all(axis=2)
    rgb = np.asarray(img.convert("RGB"))
    return np.concatenate([rgb, np.where(clear, 0, 255).astype(np.uint8)[..., None]], axis=2)
