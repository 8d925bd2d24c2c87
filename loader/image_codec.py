"""Encoding and decoding of sample fields. Only images, ``.npy`` arrays and integer
labels (``.cls``/``.label``/``.txt`` text or a field of ``.json``) are understood;
nothing is ever unpickled."""
from __future__ import annotations

import io
import json
import re
import warnings

import numpy as np
from PIL import Image, ImageFile

from .png_colour_key import is_keyed_rgb16, keyed_rgb16_rgba

IMAGE_EXTS = ("npy", "png", "jpg", "jpeg", "webp")
ENCODED_EXTS = ("png", "jpg", "jpeg", "webp")
_PIL_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}
LABEL_KEYS = ("cls", "label", "json:label", "txt")   # detection order when no label_key is given
TEXT_LABEL_FIELDS = ("cls", "label", "txt")
MAX_LABEL_BYTES = 1 << 16                            # a label field larger than this is not a label
UTF8_BOM = b"\xef\xbb\xbf"


def encode_image(image: np.ndarray, ext: str, jpeg_quality: int = 95) -> bytes:
    """``(H, W, C)`` uint8 → bytes in the format named by ``ext``."""
    buf = io.BytesIO()
    if ext == "npy":
        np.save(buf, np.ascontiguousarray(image), allow_pickle=False)
    elif ext in ENCODED_EXTS:
        arr = image[..., 0] if image.shape[-1] == 1 else image
        fmt = _PIL_FORMATS[ext]
        kw = {"quality": jpeg_quality} if fmt in ("JPEG", "WEBP") else {}
        Image.fromarray(arr).save(buf, format=fmt, **kw)
    else:
        raise ValueError(f"image format must be one of {IMAGE_EXTS}, got {ext!r}")
    return buf.getvalue()


_NPY_MAGIC = b"\x93NUMPY"
_npy_headers: dict[bytes, tuple[tuple[int, ...], np.dtype, int]] = {}


def npy_header(data: bytes) -> tuple[tuple[int, ...], np.dtype]:
    """``(shape, dtype)`` from an ``.npy`` header alone (cached; no array is made)."""
    shape, dtype, _, _ = _npy_layout(data)
    return shape, dtype


def _npy_layout(data: bytes) -> tuple[tuple[int, ...], np.dtype, bool, int]:
    if data[:6] != _NPY_MAGIC or len(data) < 10:
        raise ValueError("not an .npy file (bad magic)")
    major = data[6]
    hlen_size = 2 if major == 1 else 4
    hlen = int.from_bytes(data[8:8 + hlen_size], "little")
    end = 8 + hlen_size + hlen
    if end > len(data) or hlen > 65536:
        raise ValueError(f"npy header is truncated or too long ({hlen} bytes)")
    header = bytes(data[:end])
    parsed = _npy_headers.get(header)
    if parsed is None:
        stream = io.BytesIO(header)
        version = np.lib.format.read_magic(stream)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(stream)
        if dtype.hasobject:
            raise ValueError("object arrays need pickle, which is never used on shard contents")
        parsed = (shape, dtype, fortran)
        if len(_npy_headers) < 64:
            _npy_headers[header] = parsed
    shape, dtype, fortran = parsed
    return shape, dtype, fortran, end


def npy_image_shape(data: bytes) -> tuple[int, int, int]:
    """``(H, W, C)`` of an ``.npy`` image from its header alone; ``ValueError`` unless it is a
    uint8 ``(H, W)`` or ``(H, W, C)`` array (what the loader decodes)."""
    shape, dtype = npy_header(data)
    if dtype != np.uint8:
        raise ValueError(f"npy image must be uint8, got dtype {dtype}")
    if len(shape) not in (2, 3):
        raise ValueError(f"npy image must be (H, W) or (H, W, C), got shape {shape}")
    if not shape[0] or not shape[1]:                    # (resize= would make it up into a black image)
        raise ValueError(f"npy image has no pixels, shape {shape}")
    if len(shape) == 3 and shape[2] not in (1, 3, 4):   # (2 was read as gray + alpha: its second channel lost)
        raise ValueError(f"npy image must have 1 (gray), 3 (RGB) or 4 (RGBA) channels, got shape {shape}"
                         + ("; for gray + alpha, save the gray channel alone" if shape[2] == 2 else ""))
    return shape[0], shape[1], shape[2] if len(shape) == 3 else 1


def load_npy(data: bytes) -> np.ndarray:
    """``np.load(..., allow_pickle=False)`` with the header parse cached.

    Shards of fixed-size images repeat one header byte for byte, so it is
    parsed once by numpy's own reader and the array is then a zero-copy view.
    Object dtypes (which would need pickle) are refused.
    """
    shape, dtype, fortran, end = _npy_layout(data)
    count = int(np.prod(shape)) if shape else 1
    if len(data) - end < count * dtype.itemsize:
        raise ValueError(f"npy data is truncated: {len(data) - end} bytes for shape {shape}")
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=end)
    return arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)


def decode_image(data: bytes, ext: str, alpha: bool = False) -> np.ndarray:
    """Bytes → ``(H, W, C)`` uint8. Raises ``ValueError``/``OSError`` on bad data, and
    ``KeyError`` for an extension that names no decoded format. Pillow tries only the
    format ``ext`` names, so TIFF/BMP/EPS bytes never reach their decoders. ``alpha``: an
    image with an alpha channel or a transparent colour decodes to RGBA (see :func:`pil_pixels`)."""
    if ext == "npy":
        npy_image_shape(data)
        arr = load_npy(data)
        return arr[..., None] if arr.ndim == 2 else arr
    with Image.open(io.BytesIO(data), formats=[_PIL_FORMATS[ext]]) as img:
        if alpha and is_keyed_rgb16(img):       # PIL matches its 16-bit key against 8-bit pixels: none
            return keyed_rgb16_rgba(img, data)
        return pil_pixels(img, alpha)


def warn_if_pil_fills_cut_images(stacklevel: int = 3) -> None:
    """``PIL.ImageFile.LOAD_TRUNCATED_IMAGES = True`` (set by many training scripts) makes PIL
    decode a cut image with its missing part filled, gray or black, as if whole: no decode path
    then sees it as bad, so ``on_error`` can neither raise nor count it. Say so once."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        warnings.warn("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True: a cut image decodes with its missing part "
                      "filled, and streamaug cannot see it as bad, count it or skip it. Set it False and pass "
                      "on_error='skip' (--on-error skip) to pass such images over, counted in loader.stats",
                      RuntimeWarning, stacklevel=stacklevel)


def decoded_channels(mode: str) -> int:
    """The channels :func:`decode_image` gives an image of :func:`stored_mode` ``mode``: 1 for
    gray (``L``, bilevel ``1``, ``LA``, 16-bit ``I;16``/``I``), 3 for anything else."""
    return 1 if mode in ("L", "1", "LA", "La") or mode.startswith("I") else 3


def stored_mode(img: Image.Image) -> str:
    """The mode an opened, not yet loaded, image is stored in. PIL opens a 16-bit gray + alpha PNG
    as ``RGBA`` (the gray repeated, reduced to its high byte); this says ``LA`` for it, so it
    decodes to one channel, as its 8-bit form does."""
    tile = getattr(img, "tile", None)
    if img.format == "PNG" and img.mode == "RGBA" and tile and str(tile[0][3]).startswith("LA;16"):
        return "LA"
    return img.mode


ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


def has_alpha(img: Image.Image) -> bool:
    """An alpha channel, or a transparent colour or palette entry (PNG's tRNS, GIF's)."""
    return img.mode in ALPHA_MODES or "transparency" in img.info


def pil_pixels(img: Image.Image, alpha: bool = False) -> np.ndarray:
    """``(H, W, C)`` uint8 of an open PIL image, with C as :func:`decoded_channels` says: alpha
    dropped, a palette expanded, and 16-bit gray reduced to 8 bits as ``round(v / 257)``,
    which is what DALI's decoder gives (converting ``I;16`` to ``L`` would clip every value
    over 255 to white). 16-bit colour and gray + alpha PNGs PIL itself reduces to their high byte,
    within 1 of DALI. ``alpha`` (the loader's ``channels=4``): an image with alpha or a
    transparent colour gives RGBA, its alpha kept (gray repeated; it was dropped, and the
    loader then added an opaque one)."""
    mode = stored_mode(img)
    if alpha and has_alpha(img):
        if mode.startswith("I"):          # 16-bit gray with a transparent value: reduced as below, not clipped
            key = img.info["transparency"]
            gray = pil_pixels(img)
            opaque = np.where(np.asarray(img) == key, 0, 255).astype(np.uint8)[..., None]
            return np.concatenate([np.repeat(gray, 3, axis=2), opaque], axis=2)
        return np.asarray(img if img.mode == "RGBA" else img.convert("RGBA"))
    if mode == "LA" and img.mode == "RGBA":             # 16-bit gray + alpha, opened as RGBA
        arr = np.asarray(img)[..., 0]
    elif mode.startswith("I"):
        wide = np.clip(np.asarray(img).astype(np.int64), 0, 65535)
        arr = ((wide * 255 + 32767) // 65535).astype(np.uint8)
    elif mode in ("L", "RGB"):
        arr = np.asarray(img)
    else:
        arr = np.asarray(img.convert("L" if decoded_channels(mode) == 1 else "RGB"))
    return arr[..., None] if arr.ndim == 2 else arr


INTEGER = re.compile(r"[-+]?[0-9]+")


def decode_label(data: bytes, class_ids: dict[str, int] | None = None) -> int:
    """``.cls`` bytes → int. With ``class_ids`` (labels written as class names) the text is a
    name, read as its id, and only that: a name ``"1"`` means its own class, never id 1.
    Raises ``ValueError`` naming the text on anything else."""
    data = bytes(data[:MAX_LABEL_BYTES])
    if data.startswith(UTF8_BOM):                    # (Notepad and Excel's "UTF-8" write one)
        data = data[len(UTF8_BOM):]
    if class_ids is not None:
        text = data.decode("utf-8", errors="replace").strip()
        if text in class_ids:
            return class_ids[text]
        names = list(class_ids)
        raise ValueError(f"label {text[:40]!r} is not one of the {len(names)} class names the labels are written "
                         f"as ({', '.join(map(repr, names[:8]))}{', ...' if len(names) > 8 else ''})")
    text = data.decode("ascii", errors="replace").strip()
    if not INTEGER.fullmatch(text):                  # (int() would take "1_0" and other digits too)
        if not text:
            raise ValueError("label is empty")
        numeric = re.fullmatch(r"[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?", text)
        raise (ValueError if numeric else LabelIsText)(f"label is not an integer: {text[:40]!r}")
    return int(text)


NAME_ORDER = ("the tar was not written in name order: a sample's files must be adjacent (tar --sort=name, or "
              "webdataset's ShardWriter)")


def missing_field_hint(key, fields: list[str], missing: str) -> str:
    """Why a sample has no ``missing`` ("image" or "label") file, from its key and fields: file
    names with a dot before the extension (webdataset splits a name at its first dot, so
    ``img.000.jpg`` is field ``000.jpg`` of sample ``img``), where a field ends with the missing
    file's extension; an image alone under a folder (a
    plain tar of an image folder, with no labels, or with them elsewhere in a tar not written
    in name order); else a tar not written in name order."""
    wanted = IMAGE_EXTS if missing == "image" else (*TEXT_LABEL_FIELDS, "json")
    dotted = [f for f in fields if "." in f]
    if any(f.rsplit(".", 1)[1] in wanted for f in dotted):     # (the missing file is there, under a dotted name)
        return (f". Its fields have dots in them ({', '.join(dotted[:3])}{', ...' if len(dotted) > 3 else ''}): "
                f"a sample's key ends at the first dot of a file name, so files named like img.000.jpg become "
                f"field '000.jpg' of sample 'img', and the image and label are read from fields named exactly "
                f"{', '.join(IMAGE_EXTS)} and cls, label, txt or json. Rename the files without dots before the "
                f"extension (img_000.jpg), or write shards with `streamaug shards FOLDER OUT`")
    if missing == "label" and fields and all(f in IMAGE_EXTS for f in fields) and "/" in str(key):
        return (". It looks like a tar of an image folder (one subfolder per class). If it holds no label files, "
                "write shards from the folder itself, `streamaug shards FOLDER OUT` (write_shards(folder, out)), "
                f"which labels each image by its subfolder; if it does, {NAME_ORDER}")
    if missing == "label" and "json" in fields:
        return ". It has a .json: if a field of it holds the class, choose that field with --label-key " \
               "json:FIELD (label_key='json:FIELD')"
    other = "label" if missing == "image" else "image"
    return f". If its {missing} file is in the tar but not next to its {other}, {NAME_ORDER}"


class LabelIsText(ValueError):
    """A label field holding words, not an integer: perhaps class names (see the loader's hint)."""


def check_label_key(label_key: str | None) -> str | None:
    """``None`` (detect), ``"cls"``/``"label"``/``"txt"``, or ``"json:FIELD"`` (``FIELD`` may be dotted)."""
    if label_key is None or label_key in TEXT_LABEL_FIELDS:
        return label_key
    if isinstance(label_key, str) and label_key.startswith("json:") and len(label_key) > 5:
        return label_key
    raise ValueError(f"label_key must be one of {TEXT_LABEL_FIELDS} or 'json:FIELD' (e.g. 'json:label'), "
                     f"got {label_key!r}")


def find_label_key(raw: dict) -> str | None:
    """The first of :data:`LABEL_KEYS` the sample has (``json:label`` only if its JSON has ``label``)."""
    for key in LABEL_KEYS:
        if key == "json:label":
            if "json" in raw and b'"label"' in bytes(raw["json"][:MAX_LABEL_BYTES]):
                return key
        elif key in raw:
            return key
    return None


def read_label(raw: dict, label_key: str, class_ids: dict[str, int] | None = None) -> int:
    """The integer label in ``raw[label_key]`` (text) or in a field of ``raw["json"]``; a class
    name where ``class_ids`` maps it (see :func:`decode_label`)."""
    if not label_key.startswith("json:"):
        return decode_label(raw[label_key], class_ids)
    data = raw["json"]
    if len(data) > MAX_LABEL_BYTES:
        raise ValueError(f".json is {len(data)} bytes, over the {MAX_LABEL_BYTES} read for a label")
    try:
        value = json.loads(bytes(data).decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f".json does not parse: {e}") from None
    except RecursionError:                           # (60 KB of [[[[... is under the size limit)
        raise ValueError(".json is nested too deeply to parse") from None
    for part in label_key[5:].split("."):
        if not isinstance(value, dict) or part not in value:
            there = f"; its fields there: {', '.join(sorted(map(str, value))[:10])}" if isinstance(value, dict) else ""
            raise ValueError(f".json has no field {label_key[5:]!r}{there}")
        value = value[part]
    if isinstance(value, float) and value.is_integer() and class_ids is None:
        value = int(value)                           # (3.0: JSON written from a float column)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"field {label_key[5:]!r} is {value!r}, not an integer class")
    if class_ids is not None or isinstance(value, str):
        return decode_label(str(value).encode(), class_ids)
    return value


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, C) uint8 → ``size`` = (H', W'), bilinear, channels kept."""
    pil = Image.fromarray(image[..., 0] if image.shape[2] == 1 else image)
    return np.asarray(pil.resize(size[::-1], Image.BILINEAR)).reshape(*size, image.shape[2])


def decode_image_at_least(data: bytes, ext: str, size: tuple[int, int] | None, alpha: bool = False) -> np.ndarray:
    """Like :func:`decode_image`, but a JPEG that will be resized to ``size`` = (H', W') is
    decoded at a reduced scale first (PIL ``draft``: libjpeg's DCT scaling by 1/2, 1/4 or 1/8,
    only as far as every side stays >= ``size``), which skips most of the decode work for
    big photos. The caller still resizes to ``size`` exactly; the result differs from a
    full decode + resize by the DCT scaling's own filtering (tested in ``tests/test_draft_decode.py``).
    Everything else (no ``size``, PNG, ``.npy``) decodes as :func:`decode_image` does."""
    if size is None or ext not in ("jpg", "jpeg"):
        return decode_image(data, ext, alpha)
    with Image.open(io.BytesIO(data), formats=["JPEG"]) as img:
        if img.format == "JPEG":
            img.draft(img.mode if img.mode in ("L", "RGB") else "RGB", (size[1], size[0]))
        return pil_pixels(img, alpha)
