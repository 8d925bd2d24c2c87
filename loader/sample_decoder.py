"""Decode raw samples (dicts of bytes) into ``{"image": HWC uint8, "label": int}``.

Only ``.npy`` (``allow_pickle=False``), ``.png``/``.jpg`` and ``.cls`` fields
are read; any other field, a pickle included, is ignored, never loaded.
"""
from __future__ import annotations

import numpy as np

from .errors import StreamError
from .image_codec import IMAGE_EXTS, decode_image_at_least, decode_label, resize_image
from .image_size import ImageSizeRule


class SampleDecoder:
    """Picklable decode step. ``resize=(H, W)`` resizes every image (bilinear);
    without it, every image must have ``expect_shape`` when given."""

    def __init__(self, num_classes: int, resize: tuple[int, int] | None = None,
                 expect_shape: tuple[int, int, int] | None = None, defer_encoded: bool = False):
        if resize is not None and (len(resize) != 2 or min(resize) < 1):
            raise ValueError(f"resize must be (height, width) with positive sizes, got {resize!r}")
        self.num_classes = num_classes
        self.resize = tuple(resize) if resize is not None else None
        self.expect_shape = tuple(expect_shape) if expect_shape else None
        self.sizes = ImageSizeRule(self.expect_shape, self.resize)
        self.defer_encoded = defer_encoded      # png/jpg bytes go on undecoded (decode="dali")

    @property
    def output_shape(self) -> tuple[int, int, int] | None:
        """(H, W, C) every decoded image has, when that is known up front."""
        return self.sizes.expected

    def decoding(self) -> "SampleDecoder":
        """The same decoder, but one that always decodes (for rows read outside the stream)."""
        if not self.defer_encoded:
            return self
        return SampleDecoder(self.num_classes, self.resize, self.expect_shape)

    def __call__(self, raw: dict) -> dict:
        key, url = raw.get("__key__"), raw.get("__url__")
        ext = next((e for e in IMAGE_EXTS if e in raw), None)
        fields = sorted(k for k in raw if not k.startswith("__"))
        if ext is None:
            raise StreamError("no_image", f"sample has no image field (one of {IMAGE_EXTS})",
                              shard=url, key=key, value=fields)
        if "cls" not in raw:
            raise StreamError("no_label", "sample has no .cls label", shard=url, key=key, value=fields)
        try:
            label = decode_label(raw["cls"])
        except ValueError:
            raise StreamError("bad_label", "label is not an integer", shard=url, key=key,
                              value=raw["cls"][:40]) from None
        if not 0 <= label < self.num_classes:
            raise StreamError("label_out_of_range", f"label is outside the index's classes [0, {self.num_classes})",
                              shard=url, key=key, value=label)
        if self.defer_encoded and ext != "npy":
            return {"__key__": key, "__url__": url, "image": None, "label": label,
                    "encoded": bytes(raw[ext]),
                    "is_padding": bool(raw.get("__padding__", False))}
        try:
            image = decode_image_at_least(raw[ext], ext, self.resize)
        except Exception as e:
            raise StreamError("undecodable_image", f".{ext} image does not decode: {type(e).__name__}: {e}",
                              shard=url, key=key, value=f"{len(raw[ext])} bytes") from None
        if self.resize is not None and image.shape[:2] != self.resize:
            image = resize_image(image, self.resize)
        self.sizes.check(image.shape, url, key)
        return {"__key__": key, "__url__": url, "image": image, "label": label,
                "is_padding": bool(raw.get("__padding__", False))}
