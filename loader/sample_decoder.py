"""Decode raw samples (dicts of bytes) into ``{"image": HWC uint8, "label": int}``.

Images are read from ``.npy`` (``allow_pickle=False``), ``.png``, ``.jpg``/``.jpeg``
or ``.webp``; the label from the field ``label_key`` names (``cls``, ``label``,
``txt`` or ``json:FIELD``), or the first of :data:`LABEL_KEYS` a sample has. Any
other field, a pickle included, is ignored and never decoded. Images are converted
to ``channels`` (grayscale → RGB by repetition, RGB → gray by ITU-R 601 luma as PIL
does, RGBA → RGB by dropping alpha).
"""
from __future__ import annotations

import numpy as np

from .decode_limits import DecodeLimits, check_image
from .errors import StreamError
from .image_codec import IMAGE_EXTS, LABEL_KEYS, LabelIsText, check_label_key, decode_image_at_least, find_label_key, \
    missing_field_hint, read_label, resize_image, warn_if_pil_fills_cut_images
from .image_size import ImageSizeRule, check_resize


ANY_CLASS = (1 << 31) - 1       # num_classes with no index and none given: any label >= 0


class SampleDecoder:
    """Picklable decode step. ``resize=(H, W)`` resizes every image (bilinear);
    without it, every image must have ``expect_shape`` when given."""

    def __init__(self, num_classes: int, resize: tuple[int, int] | None = None,
                 expect_shape: tuple[int, int, int] | None = None, defer_encoded: bool = False,
                 label_key: str | None = None, channels: int | None = None,
                 limits: DecodeLimits | None = None, check_each: bool = False,
                 class_ids: dict[str, int] | None = None, jpeg_draft: bool = True):
        if resize is not None and (len(resize) != 2 or min(resize) < 1):
            raise ValueError(f"resize must be (height, width) with positive sizes, got {resize!r}")
        if channels is not None and channels not in (1, 3, 4):
            raise ValueError(f"channels must be 1, 3 or 4, got {channels!r}")
        self.label_key = check_label_key(label_key)
        self.class_ids = class_ids              # class name -> id, for labels written as names
        self.channels = channels
        self.num_classes = num_classes
        self.resize = tuple(resize) if resize is not None else None
        if jpeg_draft not in (True, False):
            raise ValueError(f"jpeg_draft must be True or False, got {jpeg_draft!r}")
        self.jpeg_draft = bool(jpeg_draft)      # JPEGs far bigger than resize= decode at a reduced DCT scale
        if expect_shape and channels:
            expect_shape = (*expect_shape[:2], channels)
        self.expect_shape = tuple(expect_shape) if expect_shape else None
        self.sizes = ImageSizeRule(self.expect_shape, self.resize)
        self.defer_encoded = defer_encoded      # png/jpg bytes go on undecoded (decode="dali")
        self.limits = limits or DecodeLimits()
        self.check_each = check_each            # rows read one by one; the stream checks sizes per batch
        self._detected: str | None = None       # no label_key: the best label field a sample read had

    @property
    def output_shape(self) -> tuple[int, int, int] | None:
        """(H, W, C) every decoded image has, when that is known up front."""
        return self.sizes.expected

    def decoding(self) -> "SampleDecoder":
        """The same decoder, but one that always decodes, sharing the size rule (for rows read
        outside the stream, whose reader checks each image's size against it, in order)."""
        other = SampleDecoder(self.num_classes, self.resize, self.expect_shape, label_key=self.label_key,
                              channels=self.channels, limits=self.limits, class_ids=self.class_ids,
                              jpeg_draft=self.jpeg_draft)
        other.sizes = self.sizes
        return other

    def label_of(self, raw: dict) -> int:
        """The sample's label, checked against the classes; :class:`StreamError` naming shard and key."""
        key, url = raw.get("__key__"), raw.get("__url__")
        label_key = self.label_key
        if label_key is None:                   # the best label field any sample read so far had (LABEL_KEYS
            own = find_label_key(raw)           # order); a sample without it is refused, as the index refuses
            if own is not None and (self._detected is None or     # mixed fields (one that lost its .cls
                                    LABEL_KEYS.index(own) < LABEL_KEYS.index(self._detected)):   # does not
                self._detected = own            # read its .txt caption instead, once a .cls was seen)
            label_key = self._detected
        if label_key is None or label_key.split(":")[0] not in raw:
            fields = sorted(k for k in raw if not k.startswith("__"))
            there = [k for k in ("cls", "label", "txt", "json") if k in raw]
            first = " (the label field of the samples read before it)" if label_key == self._detected else ""
            what = (f"no {label_key!r} label{first}" + (f"; label_key= may name what it has: {', '.join(there)}"
                                                  f"{' (json:FIELD for a field of .json)' if 'json' in there else ''}"
                                                  if there else "")
                    if label_key else f"no .cls label (nor any of {LABEL_KEYS[1:]}; choose the field with label_key=)")
            raise StreamError("no_label", f"sample has {what}{missing_field_hint(key, fields, 'label')}", shard=url, key=key,
                              value=fields)
        try:
            label = read_label(raw, label_key, self.class_ids)
        except ValueError as e:
            hint = "" if self.class_ids is not None or not isinstance(e, LabelIsText) else (
                "; labels written as class names are read through an index that lists the names: streamaug "
                "index SHARDS --label-names --class-names NAMES (in id order, e.g. cat,dog), then "
                "StreamLoader(..., index=that index.json)")
            raise StreamError("bad_label", f"label in {label_key!r} is not an integer class: {e}{hint}", shard=url,
                              key=key, value=bytes(raw[label_key.split(":")[0]][:40])) from None
        if not 0 <= label < self.num_classes:
            what = ("label is negative: classes are 0, 1, 2, ..." if label < 0 else
                    f"label is not a class id: classes are 0, 1, 2, ..., and this one would make {label + 1} "
                    f"classes (an image id or a hash in the label field?)") if self.num_classes == ANY_CLASS else \
                f"label is outside the classes [0, {self.num_classes}) of the index (or of num_classes=)" + \
                (f"; classes are numbered from 0: labels 1..{self.num_classes} need num_classes="
                 f"{self.num_classes + 1} (class 0 then has no sample) or relabelling to start at 0"
                 if label == self.num_classes else "")
            raise StreamError("label_out_of_range", what, shard=url, key=key, value=label)
        return label

    def label_or_none(self, raw: dict) -> int | None:
        """The sample's label, or ``None`` when it has none that is a valid class (the decode
        stage reports that sample)."""
        try:
            return self.label_of(raw)
        except StreamError:
            return None

    def __call__(self, raw: dict) -> dict:
        key, url = raw.get("__key__"), raw.get("__url__")
        exts = [e for e in IMAGE_EXTS if e in raw]
        if len(exts) != 1:               # (as streamaug index refuses both)
            fields = sorted(k for k in raw if not k.startswith("__"))
            if not exts:
                raise StreamError("no_image", f"sample has no image field (one of {IMAGE_EXTS})"
                                  f"{missing_field_hint(key, fields, 'image')}", shard=url, key=key, value=fields)
            raise StreamError("mixed_image_ext", f"sample has {len(exts)} image fields ({', '.join(exts)}): which "
                              "is the image is ambiguous", shard=url, key=key, value=fields)
        ext = exts[0]
        label = self.label_of(raw)
        stored = check_image(raw[ext], ext, self.limits, url, key)     # format and pixels, from the header
        if self.defer_encoded and ext != "npy":
            channels = self.channels or (self.expect_shape[2] if self.expect_shape else 3)   # DALI's output type
            return {"__key__": key, "__url__": url, "image": None, "label": label,
                    "shape": (*(self.resize or stored[:2]), channels), "encoded": bytes(raw[ext]),
                    "is_padding": bool(raw.get("__padding__", False))}
        try:
            image = decode_image_at_least(raw[ext], ext, self.resize if self.jpeg_draft else None,
                                          alpha=self.channels == 4)
        except Exception as e:
            raise StreamError("undecodable_image", f".{ext} image does not decode: {type(e).__name__}: {e}",
                              shard=url, key=key, value=f"{len(raw[ext])} bytes") from None
        if self.channels is not None and image.shape[2] != self.channels:
            try:
                image = convert_channels(image, self.channels)
            except ValueError as e:
                raise StreamError("bad_channels", str(e), shard=url, key=key, value=image.shape) from None
        if self.resize is not None and image.shape[:2] != self.resize:
            image = resize_image(image, self.resize)
        if self.check_each:
            self.sizes.check(image.shape, url, key)
        return {"__key__": key, "__url__": url, "image": image, "label": label, "shape": image.shape,
                "is_padding": bool(raw.get("__padding__", False))}


def decoders_for(index, num_classes: int | None, decode: str, resize, channels: int | None,
                 label_key: str | None, limits: DecodeLimits, device, jpeg_draft: bool = True):
    """The loader's :class:`SampleDecoder` and, with ``decode="dali"``, its device decoder (else
    None), from the constructor's arguments: channels default to the index's image shape's, else
    3; the label field to ``label_key``, else the index's (``cls`` when it names none)."""
    if decode not in ("cpu", "dali"):
        raise ValueError(f"decode must be 'cpu' (in the workers) or 'dali' (where the batch lives), got {decode!r}")
    resize = check_resize(resize)
    warn_if_pil_fills_cut_images(stacklevel=4)
    shape = index.image_shape if index is not None else None
    channels = channels or (shape[2] if shape else 3)
    decoder = SampleDecoder(num_classes or ANY_CLASS, resize, shape, defer_encoded=decode == "dali",
                            label_key=label_key or ((index.label_key or "cls") if index is not None else None),
                            channels=channels, limits=limits, jpeg_draft=jpeg_draft,
                            class_ids=index.class_ids if index is not None else None)     # (labels as names)
    if decode != "dali":
        return decoder, None
    from .device_decode import DaliImageDecoder

    return decoder, DaliImageDecoder(device, channels, resize, sizes=decoder.sizes)


def convert_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """(H, W, C) uint8 → (H, W, ``channels``): gray repeated, alpha dropped (or added opaque),
    RGB → gray by ITU-R 601 luma with PIL's rounding."""
    have = image.shape[2]
    if have == 2:                                  # gray + alpha
        image, have = image[..., :1], 1
    if have == 4 and channels != 4:
        image, have = image[..., :3], 3
    if have == channels:
        return np.ascontiguousarray(image)
    if have == 1:
        gray = np.broadcast_to(image, (*image.shape[:2], 3))
        return np.concatenate([gray, np.full_like(image, 255)], axis=2) if channels == 4 else np.ascontiguousarray(gray)
    if have == 3 and channels == 1:
        rgb = image.astype(np.uint32)
        return ((rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16).astype(np.uint8)[..., None]
    if have == 3 and channels == 4:
        return np.concatenate([image, np.full_like(image[..., :1], 255)], axis=2)
    raise ValueError(f"cannot convert {have} channels to {channels}")
