"""One rule for image sizes, applied on every decode path (worker decode, DALI, row reads).

The expected ``(H, W, C)`` is the index's image shape (with ``resize=``, the resized
one). When an index has none, the dataset's first 64 good samples (in index order) set
it before the first pass, so every worker, rank and resume point checks the same shape;
without an index, the **first batch** sets it. Either way it is the shape most of those
images share (the earliest such image breaks a tie), so one odd image at the start
cannot make the good ones look wrong; when fewer than half of them share one shape, the
loader refuses (:class:`ImageSizesVary`, naming ``resize=``) rather than skip or fail most
of the dataset one image at a time. Any other shape is a :class:`StreamError`
``"image_size"`` naming the shard, key and shape, raised or counted and replaced
by the loader's policy; batches never silently mix sizes.

Rows are checked by the ``shape`` they carry: the decoded image's, or for
``decode="dali"`` the one read from the encoded image's header (so the sizes of a
batch agree before DALI sees it), and DALI's decoded output is checked again.
"""
from __future__ import annotations

import numbers
from collections import Counter

from .errors import ErrorHandler, StreamError


def check_resize(resize) -> tuple[int, int] | None:
    """``resize=`` as ``(H, W)``: an int is a square side, whatever the image's shape (torchvision's
    ``Resize(32)`` keeps a non-square image's aspect ratio instead; a batch needs one size);
    anything else is refused naming it."""
    if resize is None:
        return None
    sides = (resize, resize) if isinstance(resize, numbers.Integral) else resize
    if isinstance(sides, (tuple, list)) and len(sides) == 2 and \
            all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v > 0 for v in sides):
        return int(sides[0]), int(sides[1])
    raise ValueError(f"resize must be (height, width) or one side for a square, in positive ints; got {resize!r}")


class ImageSizesVary(ValueError):
    """Most images would not have the adopted shape: a ``resize=`` is needed, not skips."""


class ImageSizeRule:
    def __init__(self, expected: tuple[int, int, int] | None = None, resize: tuple[int, int] | None = None):
        if expected is not None and resize is not None:
            expected = (*resize, expected[2])
        self.expected = tuple(expected) if expected is not None else None
        self.resize = tuple(resize) if resize is not None else None
        self._first: tuple[int, ...] | None = None
        self._source = "the shape of most of the first batch"
        self._tally = [0, 0]             # (rows checked, of them another shape), when adopt saw too few

    @property
    def shape(self) -> tuple[int, ...] | None:
        """The shape every image must have: known up front, or adopted from the first batch."""
        return self.expected or self._first

    def adopt(self, shapes: list[tuple[int, ...]], source: str | None = None) -> tuple[int, ...]:
        """Set the shape from the first batch's shapes (the most common; the earliest on a tie);
        ``source`` says where they came from, for the error message."""
        if self.shape is None and shapes:
            if source is not None:
                self._source = source
            counts = Counter(tuple(s) for s in shapes)
            top = max(counts.values())
            first = next(tuple(s) for s in shapes if counts[tuple(s)] == top)
            if len(shapes) >= 8 and 2 * top < len(shapes):   # (of a few, a few odd ones first can be all)
                raise ImageSizesVary(
                    f"image sizes vary and no resize= makes them agree: of the {len(shapes)} images read to "
                    f"set the batches' shape, the most common shape {first} has {top}, and {len(counts)} "
                    f"shapes occur; every image of another shape would be an error (or, with "
                    f"on_error='skip', skipped). Pass resize=(H, W) (or one side, a square), e.g. "
                    f"resize={first[0]}, to resize them all")
            self._first = first
            if len(shapes) >= 8:
                self._tally[0] = 64              # judged on enough images: no count of rows after
        return self.shape

    def error(self, shape: tuple[int, ...], url: str | None, key: str | None) -> StreamError:
        source = "the index's image_shape" if self.expected else self._source
        return StreamError("image_size", f"image shape differs from {self.shape} ({source}) and no resize= "
                           "makes them agree", shard=url, key=key, value=tuple(shape))

    def check(self, shape: tuple[int, ...], url: str | None, key: str | None) -> None:
        """One image: adopt its shape when none is known yet, else raise when it differs."""
        shape = tuple(shape)
        if self.shape is None:
            self._first = shape
        elif shape != self.shape:
            raise self.error(shape, url, key)

    def fits(self, row: dict, handle: ErrorHandler | None) -> bool:
        """Whether a row (``{"shape", "__url__", "__key__"}``) has the shape; if not, ``handle`` is
        given the error (raise, or count) when one is passed. Of the first 64 rows, once 16 were
        checked and more than half had another shape, :class:`ImageSizesVary` (a first batch
        too small to judge by, without an index)."""
        fit = self.shape is None or tuple(row["shape"]) == self.shape
        if self._tally[0] < 64 and self.expected is None:
            self._tally[0] += 1
            self._tally[1] += not fit
            seen, odd = self._tally
            if seen >= 16 and 2 * odd > seen:
                raise ImageSizesVary(f"image sizes vary and no resize= makes them agree: {odd} of the first {seen} "
                                     f"images are not {self.shape} ({self._source}); pass resize=(H, W) (or "
                                     f"one side, a square), e.g. resize={self.shape[0]}, to resize them all")
        if fit:
            return True
        if handle is not None:
            handle(self.error(row["shape"], row.get("__url__"), row.get("__key__")))
        return False

    def keep_matching(self, rows: list[dict], handle: ErrorHandler) -> list[dict]:
        """The first batch: adopt its shape when none is known, then keep the rows that have it."""
        self.adopt([r["shape"] for r in rows])
        return [r for r in rows if self.fits(r, handle)]
