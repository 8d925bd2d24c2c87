"""Encoding and decoding of sample fields. Only images, ``.npy`` arrays and ``.cls``
labels are understood; nothing is ever unpickled."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

IMAGE_EXTS = ("npy", "png", "jpg", "jpeg")
ENCODED_EXTS = ("png", "jpg", "jpeg")


def encode_image(image: np.ndarray, ext: str, jpeg_quality: int = 95) -> bytes:
    """``(H, W, C)`` uint8 → bytes in the format named by ``ext``."""
    buf = io.BytesIO()
    if ext == "npy":
        np.save(buf, np.ascontiguousarray(image), allow_pickle=False)
    elif ext in ENCODED_EXTS:
        arr = image[..., 0] if image.shape[-1] == 1 else image
        fmt = "PNG" if ext == "png" else "JPEG"
        kw = {"quality": jpeg_quality} if fmt == "JPEG" else {}
        Image.fromarray(arr).save(buf, format=fmt, **kw)
    else:
        raise ValueError(f"image format must be one of {IMAGE_EXTS}, got {ext!r}")
    return buf.getvalue()


_NPY_MAGIC = b"\x93NUMPY"
_npy_headers: dict[bytes, tuple[tuple[int, ...], np.dtype, int]] = {}


def load_npy(data: bytes) -> np.ndarray:
    """``np.load(..., allow_pickle=False)`` with the header parse cached.

    Shards of fixed-size images repeat one header byte for byte, so it is
    parsed once by numpy's own reader and the array is then a zero-copy view.
    Object dtypes (which would need pickle) are refused.
    """
    if data[:6] != _NPY_MAGIC or len(data) < 10:
        raise ValueError("not an .npy file (bad magic)")
    major = data[6]
    hlen_size = 2 if major == 1 else 4
    hlen = int.from_bytes(data[8:8 + hlen_size], "little")
    end = 8 + hlen_size + hlen
    header = data[:end]
    parsed = _npy_headers.get(header)
    if parsed is None:
        stream = io.BytesIO(data)
        version = np.lib.format.read_magic(stream)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(stream)
        if dtype.hasobject:
            raise ValueError("object arrays need pickle, which is never used on shard contents")
        parsed = (shape, dtype, fortran)
        if len(_npy_headers) < 64:
            _npy_headers[header] = parsed
    shape, dtype, fortran = parsed
    count = int(np.prod(shape)) if shape else 1
    if len(data) - end < count * dtype.itemsize:
        raise ValueError(f"npy data is truncated: {len(data) - end} bytes for shape {shape}")
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=end)
    return arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)


def decode_image(data: bytes, ext: str) -> np.ndarray:
    """Bytes → ``(H, W, C)`` uint8. Raises ``ValueError``/``OSError`` on bad data."""
    if ext == "npy":
        arr = load_npy(data)
        if arr.dtype != np.uint8:
            raise ValueError(f"npy image must be uint8, got dtype {arr.dtype}")
        if arr.ndim == 2:
            arr = arr[..., None]
        if arr.ndim != 3:
            raise ValueError(f"npy image must be (H, W) or (H, W, C), got shape {arr.shape}")
        return arr
    with Image.open(io.BytesIO(data)) as img:
        if img.mode not in ("L", "RGB"):
            img = img.convert("RGB")
        arr = np.asarray(img)
    return arr[..., None] if arr.ndim == 2 else arr


def decode_label(data: bytes) -> int:
    """``.cls`` bytes → int. Raises ``ValueError`` naming the text on anything else."""
    text = data.decode("ascii", errors="replace").strip()
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"label is not an integer: {text!r}") from None


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, C) uint8 → ``size`` = (H', W'), bilinear, channels kept."""
    pil = Image.fromarray(image[..., 0] if image.shape[2] == 1 else image)
    return np.asarray(pil.resize(size[::-1], Image.BILINEAR)).reshape(*size, image.shape[2])


def decode_image_at_least(data: bytes, ext: str, size: tuple[int, int] | None) -> np.ndarray:
    """Like :func:`decode_image`, but a JPEG that will be resized to ``size`` = (H', W') is
    decoded at a reduced scale first (PIL ``draft``: libjpeg's DCT scaling by 1/2, 1/4 or 1/8,
    only as far as every side stays >= ``size``), which skips most of the decode work for
    big photos. The caller still resizes to ``size`` exactly; the result differs from a
    full decode + resize by the DCT scaling's own filtering (tested in ``tests/test_draft_decode.py``).
    Everything else (no ``size``, PNG, ``.npy``) decodes as :func:`decode_image` does."""
    if size is None or ext not in ("jpg", "jpeg"):
        return decode_image(data, ext)
    with Image.open(io.BytesIO(data)) as img:
        if img.format == "JPEG":
            img.draft(img.mode if img.mode in ("L", "RGB") else "RGB", (size[1], size[0]))
        if img.mode not in ("L", "RGB"):
            img = img.convert("RGB")
        arr = np.asarray(img)
    return arr[..., None] if arr.ndim == 2 else arr
