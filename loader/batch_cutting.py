"""Cut a worker's decoded stream into batches.

**Planned** batches (an index) take exactly their planned number of stream items,
good or not: a sample lost to a skipped error (the tar reader's :data:`~.errors.LOST`
places, or it did not decode, or its label or image size was wrong) keeps its place
and is filled there by a repeat of a good row of the same batch (flagged
``is_padding``), and so is the tail of a batch the input ran out under. So batch ``i``
is a pure function of the stream items it was planned to take, and a resume that
passes over the earlier batches' planned count of raw samples starts exactly where
the uninterrupted pass went on. (Pulling a further sample in place of a lost one, as
this stage did before, shifted every later batch by one sample per error and made a
resume start early.) A batch with no good row at all is filled from the first good
samples of the dataset's shards in index order (:func:`borrow_padding`), which do
not depend on where a pass started either. Repeats count no errors of their own:
the sample is counted where it is read as itself.

**Open-ended** batches (``index=False``) are ``batch_size`` good samples until the
input ends; the last is partial. Lost samples are left out: nothing is planned, so
nothing has to be kept in place.

Each batch is held until the next one is cut, so errors found after its last row
(a truncated tail, a failed ``pipe:``) travel with the last batch instead of being lost.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import torch

from streamaug.core.flight import BatchInFlight
from streamaug.core.planar_copy import hwc_into_chw

from .errors import LOST, ErrorHandler, LoaderStats, StreamError, add_counts
from .image_size import ImageSizeRule
from .sample_decoder import SampleDecoder


def decode_stage(raw: Iterator, decoder: SampleDecoder, handle: ErrorHandler) -> Iterator:
    """Decoded samples, and :data:`~.errors.LOST` where a sample's error was skipped (``handle``
    raised it otherwise) or the reader lost one, so the stream keeps one item per place."""
    repeat = handle.for_repeat()
    for sample in raw:
        if sample is LOST:
            yield LOST
            continue
        try:
            yield decoder(sample)
        except StreamError as e:
            (repeat if sample.get("__padding__") else handle)(e)    # a wrap-around re-read: counted where read
            yield LOST


def collate_rows(rows: list[dict], batch_id: int, stats: dict, shape: tuple[int, int, int] | None) -> BatchInFlight:
    """Decoded samples → one batch: uint8 NCHW images (one copy) and host labels and masks.
    With ``decode="dali"`` the images stay encoded; with no rows (a batch the balancer
    fills entirely) images are ``(0, C, H, W)`` when the shape is known."""
    empty = (0, shape[2], shape[0], shape[1]) if shape else (0,)
    encoded = None
    if rows and len({r["image"] is None for r in rows}) > 1:
        npy = next(r for r in rows if r["image"] is not None)
        raise StreamError("mixed_decode", 'decode="dali" decodes jpg/png/webp where the batch lives, and this batch '
                          'also holds .npy images, which are decoded in the workers: use decode="cpu" for a corpus '
                          "that mixes them", shard=npy["__url__"], key=npy["__key__"], value="npy")
    if rows and rows[0]["image"] is None:
        images, encoded = torch.empty(empty, dtype=torch.uint8), [r["encoded"] for r in rows]
    elif rows:                          # HWC rows copied straight into the NCHW batch
        h, w, c = rows[0]["image"].shape
        images = torch.empty((len(rows), c, h, w), dtype=torch.uint8)
        out = images.numpy()
        for i, r in enumerate(rows):
            if r["image"].shape != (h, w, c):   # the size rule keeps this from happening; copy_ would broadcast
                raise ValueError(f"{r['__url__']}: key {r['__key__']!r} decoded to {r['image'].shape}, "
                                 f"the batch's first row to {(h, w, c)}")
            hwc_into_chw(r["image"], out[i])
    else:
        images = torch.empty(empty, dtype=torch.uint8)
    return BatchInFlight(images=images, labels=torch.tensor([r["label"] for r in rows], dtype=torch.int64),
                         keys=[r["__key__"] for r in rows], urls=[r["__url__"] for r in rows],
                         is_padding=torch.tensor([r["is_padding"] for r in rows], dtype=torch.bool),
                         batch_id=batch_id, stats=stats, encoded=encoded)


def borrow_padding(donors: Callable[[], Iterator] | None, own: list[str], sizes: ImageSizeRule,
                   stats: LoaderStats, limit: int = 64) -> list[dict]:
    """Rows to fill a planned batch none of whose samples is good: the first good samples of
    the dataset's shards, read in index order (``donors``). Their own errors are not counted
    (their shard's reader counts those). With no image size known yet, they set it, as a
    first batch would. ``own`` (this worker's shards) is named in
    ``stats.examples["no_samples"]``; with no good sample anywhere, :class:`StreamError`
    ``no_samples`` names them."""
    found: list[dict] = []
    for s in donors() if donors is not None else ():
        if s is not LOST and (sizes.shape is None or sizes.fits(s, None)):
            found.append(dict(s, is_padding=True))
            if len(found) == limit:
                break
    if found and sizes.shape is None:   # no shape yet (no index shape, no batch cut): the donors' own
        sizes.adopt([s["shape"] for s in found])
        found = [s for s in found if sizes.fits(s, None)]
    if not found:
        why = "; ".join(f"{n} {reason} (first: {stats.examples.get(reason, '?')})"
                        for reason, n in stats.skipped.most_common(3))
        raise StreamError("no_samples", f"no sample of a planned batch of shards {own} is good, and no "
                          "shard has a good sample to pad it with" + (f". Passed over here: {why}" if why else ""),
                          shard=own[0] if own else None, value=len(own))
    stats.examples.setdefault("no_samples", f"a planned batch of shards {own} has no good sample; it is "
                              f"padding (repeats of samples from {found[0]['__url__']!r})")
    return found


def _planned_rows(samples: Iterator, size: int, sizes: ImageSizeRule, handle: ErrorHandler,
                  borrowed: Callable[[], list[dict]]) -> list[dict]:
    """One planned batch from exactly ``size`` stream items (fewer when the stream ends): the
    good ones in place, every other place a repeat of a good row of the batch (real rows first)."""
    items = list(itertools.islice(samples, size))
    decoded = [s for s in items if s is not LOST]
    if sizes.shape is None and decoded:    # (the loader sets it before the pass; this batch, if that found none)
        sizes.adopt([s["shape"] for s in decoded])
    repeat = handle.for_repeat()
    places = [s if s is not LOST and sizes.fits(s, repeat if s["is_padding"] else handle) else None for s in items]
    places += [None] * (size - len(items))
    good = [s for s in places if s is not None]
    if len(good) == size:
        return good
    fill = [s for s in good if not s["is_padding"]] or good or borrowed()
    fills = itertools.cycle(fill)
    return [s if s is not None else dict(next(fills), is_padding=True) for s in places]


def _open_rows(samples: Iterator, size: int, sizes: ImageSizeRule, handle: ErrorHandler) -> list[dict]:
    """Up to ``size`` good samples (fewer only at the input's end); the first batch sets the shape."""
    rows: list[dict] = []
    while len(rows) < size:
        s = next(samples, None)
        if s is None:
            break
        if s is LOST or (sizes.shape is not None and not sizes.fits(s, handle)):
            continue
        rows.append(s)
        if sizes.shape is None and len(rows) == size:      # the first batch sets the shape
            rows = sizes.keep_matching(rows, handle)
    if rows and sizes.shape is None:                       # a first batch cut short by the input's end
        rows = sizes.keep_matching(rows, handle)
    return rows


def batch_stage(samples: Iterator, sizes_planned: tuple[int, ...] | None, batch_ids, batch_size: int,
                stats: LoaderStats, sizes: ImageSizeRule, handle: ErrorHandler, own: list[str],
                donors: Callable[[], Iterator] | None = None, drop_last: bool = False) -> Iterator[BatchInFlight]:
    """Cut ``samples`` (from :func:`decode_stage`) into the batches ``batch_ids``: the planned
    sizes ``sizes_planned`` exactly, or with ``None`` open-ended ``batch_size`` batches, the
    last one partial unless ``drop_last`` (as a DataLoader worker drops its own: its counts
    stay in ``stats``)."""
    open_ended = sizes_planned is None
    plan = itertools.repeat(batch_size) if open_ended else sizes_planned
    donated: list[dict] = []

    def borrowed() -> list[dict]:                  # read once per pass, only if a batch needs it
        if not donated:
            donated.extend(borrow_padding(donors, own, sizes, stats))
        return donated

    held: BatchInFlight | None = None
    for size, batch_id in zip(plan, batch_ids):
        try:
            if open_ended:
                rows = _open_rows(samples, size, sizes, handle)
                if not rows:
                    break
            else:           # a planned batch may have no real row: the balancer fills it
                rows = _planned_rows(samples, size, sizes, handle, borrowed) if size else []
        except Exception:
            if held is not None:    # the batch before the error comes first, as DataLoader's would
                yield held
            raise
        if held is not None:
            yield held
        held = collate_rows(rows, batch_id, stats.take(), sizes.shape)
        if len(rows) < size:
            break
    if not open_ended:
        try:
            for _ in samples:      # nothing planned is left; this reads shards listed as empty, to check them,
                pass               # and meets what follows a shard's last sample (a failed gzip check)
        except Exception:
            if held is not None:   # the last batch's samples were all read whole: it comes first
                yield held
            raise
    if held is not None and open_ended and drop_last and len(held) < batch_size:
        stats.merge(held.stats)    # the caller ships them (WorkerCounts) without the batch
        return
    if held is not None:
        add_counts(held.stats, stats.take())
        yield held
