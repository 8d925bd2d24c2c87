"""One rule for image sizes, applied on every decode path (workers, DALI, row reads).

The expected ``(H, W, C)`` is the index's image shape (with ``resize=``, the resized
one), or, when the index has none, the first image the stream decodes. Any other
shape is a :class:`StreamError` ``"image_size"`` naming the shard, key and shape,
raised or counted and skipped by the loader's policy; batches never silently mix
sizes.
"""
from __future__ import annotations

from .errors import StreamError


class ImageSizeRule:
    def __init__(self, expected: tuple[int, int, int] | None = None, resize: tuple[int, int] | None = None):
        if expected is not None and resize is not None:
            expected = (*resize, expected[2])
        self.expected = tuple(expected) if expected is not None else None
        self.resize = tuple(resize) if resize is not None else None
        self._first: tuple[int, ...] | None = None

    @property
    def shape(self) -> tuple[int, ...] | None:
        """The shape every image must have: known up front, or adopted from the first image."""
        return self.expected or self._first

    def check(self, shape: tuple[int, ...], url: str | None, key: str | None) -> None:
        shape = tuple(shape)
        want = self.shape
        if want is None:
            self._first = shape
            return
        if shape != want:
            source = "the index's image_shape" if self.expected else "the stream's first image"
            raise StreamError("image_size", f"image shape differs from {want} ({source}) and no resize= "
                              "makes them agree", shard=url, key=key, value=shape)
