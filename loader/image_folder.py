"""Read an image folder (one subfolder per class, as torchvision's ``ImageFolder``) for
:func:`~streamaug.loader.write_shards`: which files are images of which class, what is
passed over, and each image's bytes as a shard stores them.

>>> import os, tempfile
>>> import numpy as np
>>> from PIL import Image
>>> root = tempfile.mkdtemp()
>>> for name in ("cat", "dog"):
...     os.makedirs(os.path.join(root, name))
...     Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(os.path.join(root, name, "a.png"))
>>> items, classes, passed_over = folder_items(root, None)
>>> [(os.path.relpath(p, root), c) for p, c in items], classes, passed_over
([('cat/a.png', 0), ('dog/a.png', 1)], ['cat', 'dog'], [])
>>> path_part(items[0][0], root)
'cat_a'
"""
from __future__ import annotations

import io
import os
import re

from PIL import Image

from .decode_limits import sniff_format
from .image_codec import decode_image, encode_image, pil_pixels

FOLDER_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".npy")


def folder_items(root: str, class_names: list[str] | None) -> tuple[list[tuple[str, int]], list[str], list[str]]:
    """``(path, label)`` per image, the class names, and what was passed over (hidden entries,
    files that are not images).

    Classes are the subfolders, sorted, or ``class_names`` when given: a subfolder is then
    labelled by its name's place in that list (a validation folder missing a class keeps the
    training ids), and a subfolder not in it is refused. Hidden folders and files (``.*``:
    ``.ipynb_checkpoints``, macOS ``._x.jpg`` and ``.DS_Store``) and files beside the class
    folders are passed over and reported, not made a class.
    A class folder with no image is refused unless ``class_names`` names it (an empty class
    shifts every later label, as ``ImageFolder`` refuses it). Other files than images
    (``FOLDER_EXTS``) are passed over and reported too."""
    passed_over: list[str] = []
    folders = []
    for e in sorted(os.scandir(root), key=lambda e: e.name):
        if e.is_dir():
            (passed_over if e.name.startswith(".") else folders).append(e.name)
        else:                             # a file beside the class folders (README.txt, .DS_Store)
            passed_over.append(e.name)
    if class_names is None:
        classes = folders
    else:
        classes = list(class_names)
        unknown = [f for f in folders if f not in classes]
        if unknown:
            raise ValueError(f"image folder {root!r} has class folder(s) {unknown[:5]} that class_names does not "
                             f"list (value: {classes[:10]}{' ...' if len(classes) > 10 else ''})")
    if not folders:
        raise ValueError(f"image folder {root!r} has no class subfolders (expected root/<class>/<image>)")
    items = []
    for name in folders:
        found = 0
        for dirpath, dirnames, files in os.walk(os.path.join(root, name)):
            passed_over += [os.path.relpath(os.path.join(dirpath, d), root) for d in dirnames if d.startswith(".")]
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for f in sorted(files):
                if f.startswith(".") or not f.lower().endswith(FOLDER_EXTS):   # (.DS_Store went unreported)
                    passed_over.append(os.path.relpath(os.path.join(dirpath, f), root))
                    continue
                items.append((os.path.join(dirpath, f), classes.index(name)))
                found += 1
        if not found and class_names is None:
            raise ValueError(f"image folder {root!r}: class folder {name!r} holds no images "
                             f"({', '.join(FOLDER_EXTS)}); remove it, or list the classes to keep an empty one "
                             f"(class_names=, streamaug shards --class-names)")
    if not items:
        raise ValueError(f"image folder {root!r} has class folders {folders[:5]} but no images ({FOLDER_EXTS})")
    return items, classes, passed_over


_EXT_OF_CONTENT = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}


def folder_image(path: str, ext: str, jpeg_quality: int) -> tuple[bytes, tuple[int, int, int]]:
    """The bytes to store and the (H, W, C) shape. Same-format files pass through unchanged."""

    src_ext = os.path.splitext(path)[1].lower().lstrip(".")
    with open(path, "rb") as f:
        data = f.read()
    # a JPEG saved as .png (scraped data is full of them) is read as what it is, as PIL and torchvision read it
    src_ext = _EXT_OF_CONTENT.get(sniff_format(data), src_ext)
    try:
        if src_ext == "bmp":                     # a folder's own files: BMP too (never read from shards)
            with Image.open(io.BytesIO(data), formats=["BMP"]) as img:
                arr = pil_pixels(img)
        else:
            arr = decode_image(data, "jpg" if src_ext == "jpeg" else src_ext)
    except Exception as e:
        why = f"its first bytes {data[:8]!r} are no image format streamaug reads (PNG, JPEG, WebP, BMP)" \
            if "cannot identify image file" in str(e) else str(e)        # (PIL's names a BytesIO at an address)
        raise ValueError(f"image file {path!r} ({len(data):,} bytes) does not decode: {why}") from None
    if src_ext == ext or (src_ext in ("jpg", "jpeg") and ext in ("jpg", "jpeg")):
        return data, arr.shape
    return encode_image(arr, ext, jpeg_quality), arr.shape


def path_part(path: str, root: str) -> str:
    """The end of an image file's path under ``root``, as a key may hold it (no dots: a key ends
    at its first one), at most 60 characters: ``cat/img.001.png`` → ``cat_img_001``."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", os.path.splitext(os.path.relpath(path, root))[0])[-60:]
