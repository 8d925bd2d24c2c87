"""Limits on what one shard member may cost, checked before anything is allocated.

A shard from someone else can claim a 2 GiB member in a 10 KiB sparse tar, a
1.5 GiB member in a small gzip, or a 20000 x 20000 PNG in 379 KiB. The loader
refuses these from headers alone:

* a tar member's size is read from its tar header before its bytes are read
  (:mod:`.tar_members`);
* an image's format is read from its magic bytes and must be the one its
  extension names (JPEG, PNG, WebP, npy); nothing else is ever decoded, so TIFF,
  BMP or EPS bytes in a ``.png`` member never reach a decoder (EPS would start
  Ghostscript);
* an image's width and height are read from its header (Pillow parses only the
  header until pixels are asked for; ``.npy`` from numpy's header) before it is
  decoded, on the CPU path and before encoded bytes are shipped to DALI.

Each limit has a default and a :class:`~streamaug.loader.StreamLoader` argument to
raise it.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image

from .errors import StreamError
from .image_codec import decoded_channels, npy_image_shape, stored_mode

MAX_MEMBER_BYTES = 256 << 20       # one tar member (an image, a label) read into memory
MAX_IMAGE_PIXELS = 36_000_000      # width x height of one image (6000 x 6000), about 108 MB as RGB
READ_TIMEOUT = 600.0               # seconds a pipe: or http shard may stall before it is an error

# extension -> the one format its bytes may hold (Pillow's name, or "NPY")
FORMAT_OF_EXT = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP", "npy": "NPY"}


@dataclass(frozen=True)
class DecodeLimits:
    """What one shard member may cost. Defaults: 256 MiB per member, 36 megapixels
    per image, 600 s without data from a ``pipe:`` or http shard."""
    max_member_bytes: int = MAX_MEMBER_BYTES
    max_image_pixels: int = MAX_IMAGE_PIXELS
    read_timeout: float = READ_TIMEOUT

    def __post_init__(self):
        for name in ("max_member_bytes", "max_image_pixels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(self.read_timeout, (int, float)) or not self.read_timeout > 0:
            raise ValueError(f"read_timeout must be a positive number of seconds, got {self.read_timeout!r}")


def sniff_format(data: bytes) -> str | None:
    """The format the magic bytes name, among those the loader decodes, else ``None``."""
    head = bytes(data[:12])
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8"):            # SOI; Pillow then checks the next marker
        return "JPEG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head.startswith(b"\x93NUMPY"):
        return "NPY"
    return None


def _describe(data: bytes) -> str:
    head = bytes(data[:8])
    known = {b"II*\x00": "TIFF", b"MM\x00*": "TIFF", b"BM": "BMP", b"%!PS": "PostScript/EPS",
             b"\xc5\xd0\xd3\xc6": "EPS", b"GIF8": "GIF", b"\x80": "pickle"}
    name = next((fmt for magic, fmt in known.items() if head.startswith(magic)), None)
    return f"{name} bytes {head!r}" if name else f"bytes {head!r}"


def check_format(data: bytes, ext: str, url: str | None, key: str | None) -> str:
    """The member's format, which must be the one ``ext`` names; else a ``format_mismatch`` error."""
    want = FORMAT_OF_EXT.get(ext)
    got = sniff_format(data)
    if want is None or got != want:
        raise StreamError("format_mismatch", f".{ext} member does not hold {want or 'a known'} data "
                          f"(only {', '.join(sorted(set(FORMAT_OF_EXT.values())))} are decoded, by content)",
                          shard=url, key=key, value=_describe(data))
    return got


def header_size(data: bytes, fmt: str) -> tuple[int, int, int]:
    """``(height, width, channels)`` from the header only; pixels are not decoded."""
    if fmt == "NPY":
        return npy_image_shape(data)
    Image.init()
    factory = Image.OPEN[fmt][0]           # the plugin itself: Image.open would add its own, lower, bomb check
    with factory(io.BytesIO(data), None) as img:
        width, height = img.size
        channels = decoded_channels(stored_mode(img))
    return height, width, channels


def check_image(data: bytes, ext: str, limits: DecodeLimits, url: str | None,
                key: str | None) -> tuple[int, int, int]:
    """Check format and pixel count from the header; return ``(H, W, C)`` as stored."""
    fmt = check_format(data, ext, url, key)
    try:
        shape = header_size(data, fmt)
    except Exception as e:
        raise StreamError("undecodable_image", f".{ext} image does not decode (refused from its header): "
                          f"{type(e).__name__}: {e}",
                          shard=url, key=key, value=f"{len(data)} bytes") from None
    pixels = shape[0] * shape[1]
    if pixels > limits.max_image_pixels:
        raise StreamError("image_too_large", f"image is {shape[1]} x {shape[0]} = {pixels} pixels, over "
                          f"max_image_pixels={limits.max_image_pixels} (raise it with StreamLoader("
                          "max_image_pixels=...), or streamaug index --max-image-pixels)", shard=url, key=key,
                          value=shape)
    return shape
