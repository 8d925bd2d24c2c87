"""Decode encoded images where the batch lives, with NVIDIA DALI.

With ``StreamLoader(decode="dali")`` workers read and check samples but ship the
encoded bytes; the main process decodes each batch with one DALI pipeline:
``fn.decoders.image(device="mixed")`` (nvJPEG, with the hardware JPEG decoder where
the GPU has one) when the loader's device is CUDA, ``device="cpu"`` otherwise.
Chroma is upsampled as libjpeg-turbo does (``jpeg_fancy_upsampling``), so the
result matches worker-side PIL decoding. The host part of nvJPEG's work (Huffman
decoding) runs on ``threads`` CPU threads.

Workers have already checked each image's format against its extension and its
pixel count and size against the limits and the size rule, from the header alone, so
DALI is never handed an image bomb or a format the extension does not name.
A batch DALI cannot decode, or whose images break the size rule, is decoded again
sample by sample (PIL) to find the bad ones, which are then raised or skipped
(replaced by a repeat, flagged ``is_padding``) like any bad input.
"""
from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator

import numpy as np
import torch

from streamaug.core.flight import BatchInFlight
from streamaug.core.transfer import to_device
from streamaug.ops.backends.dali_pipelines import PIPELINES, capacity_for, dali_device_id, dali_to_torch

from .decode_limits import sniff_format
from .errors import ErrorHandler, LoaderStats, StreamError, add_counts
from .image_codec import decode_image, resize_image
from .image_size import ImageSizeRule


EXT_OF_FORMAT = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}   # workers checked format against extension


def default_threads() -> int:
    return max(2, min(16, len(os.sched_getaffinity(0))))


class DecodeTicket:
    """A batch whose decode :meth:`DaliImageDecoder.start` began."""

    def __init__(self, batch: BatchInFlight, encoded: list[np.ndarray]):
        self.batch, self.encoded = batch, encoded
        self.key = None
        self.pipe = None
        self.failed = False       # DALI refused it at once: decode it sample by sample


def decode_ahead(batches: Iterator[BatchInFlight], decoder: "DaliImageDecoder",
                 on_error: str) -> Iterator[BatchInFlight]:
    """Decode each batch that carries encoded images. With ``decoder.ahead``, one batch ahead:
    batch ``i+1``'s decode is started before batch ``i`` is handed on, so DALI works on it
    while the caller works on batch ``i``; else each batch is decoded before it is handed on.
    What the decode skipped is counted on the batch (``batch.stats``), so the loader's counts
    reach ``stats`` with the batch that had them."""
    batches = iter(batches)
    pending: DecodeTicket | None = None         # started, not collected (at most one: see start)
    try:
        while True:
            try:
                batch = next(batches, None)
            except Exception:       # the batch before the error comes first, as DataLoader's would
                if pending is not None:
                    ticket, pending = pending, None
                    yield _finished(decoder, ticket, on_error)
                raise
            if batch is None:
                break
            done = None
            if pending is not None:
                ticket, pending = pending, None
                done = _finished(decoder, ticket, on_error)
            if batch.encoded is not None:
                pending = decoder.start(batch)
                if not decoder.ahead:
                    ticket, pending = pending, None
                    batch = _finished(decoder, ticket, on_error)
            if done is not None:
                yield done
            if pending is None:
                yield batch
        if pending is not None:
            ticket, pending = pending, None
            yield _finished(decoder, ticket, on_error)
    finally:
        if pending is not None:
            decoder.cancel(pending)


def _finished(decoder: "DaliImageDecoder", ticket: DecodeTicket, on_error: str) -> BatchInFlight:
    counts = LoaderStats()
    batch = decoder.finish(ticket, ErrorHandler(on_error, counts))
    add_counts(batch.stats, counts.take())
    return batch


class DaliImageDecoder:
    def __init__(self, device: torch.device, channels: int, resize: tuple[int, int] | None = None,
                 threads: int | None = None, sizes: ImageSizeRule | None = None):
        if channels not in (1, 3):
            raise ValueError(f"decode='dali' handles 1- or 3-channel images, got {channels} channels")
        self.device, self.channels, self.resize = device, channels, resize
        self.threads = threads or default_threads()
        self.sizes = sizes or ImageSizeRule(None, resize)
        self._token = object()                 # this decoder's pipelines in the shared cache
        # decode one batch ahead of the caller (decode_ahead) on CUDA, where the host mostly
        # waits for the device; on the CPU the step and DALI's threads compete for the cores
        # and it was slower (benchmarks/decode_overlap.py)
        self.ahead = device.type == "cuda"
        # what pads a batch none of whose images decodes: the first sample of the dataset (in index
        # order) that does, found once; ``donors`` (set by the loader) lists the decoded samples
        self.donors: Callable[[], Iterator] | None = None
        self._donated: tuple[np.ndarray, int, str, str] | None = None
        self._started: DecodeTicket | None = None      # the one run started and not yet collected

    def _build(self, capacity: int, device_id: int | None):
        from nvidia.dali import fn, pipeline_def, types

        # asynchronous: schedule_run() returns at once and DALI decodes on its own threads
        @pipeline_def(batch_size=capacity, num_threads=self.threads, device_id=device_id,
                      prefetch_queue_depth=1, exec_async=True, exec_pipelined=True)
        def build():
            encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
            images = fn.decoders.image(encoded, device="mixed" if device_id is not None else "cpu",
                                       output_type=types.RGB, jpeg_fancy_upsampling=True,
                                       adjust_orientation=False)     # as PIL (the workers) decodes: EXIF ignored
            if self.channels == 1:
                # PIL's luma of the RGB decode, in its fixed point, as the workers convert (sample_decoder):
                # DALI's GRAY output is the JPEG's own Y plane, up to 21 levels from it on colour photos
                rgb = fn.cast(images, dtype=types.INT32)
                luma = rgb[:, :, 0:1] * 19595 + rgb[:, :, 1:2] * 38470 + rgb[:, :, 2:3] * 7471 + 32768
                images = fn.cast(luma >> 16, dtype=types.UINT8)
            if self.resize is not None:
                images = fn.resize(images, resize_y=self.resize[0], resize_x=self.resize[1])
            return fn.transpose(images, perm=[2, 0, 1])      # CHW here, on DALI's threads

        return build()

    def start(self, batch: BatchInFlight) -> DecodeTicket:
        """Start decoding ``batch`` (its encoded bytes are taken); :meth:`finish` collects it.
        One run at a time: a run still uncollected (a pass left or superseded with one started) is
        cancelled first, and its batch, if ever collected, is decoded by :meth:`finish` itself."""
        encoded = [np.frombuffer(e, dtype=np.uint8) for e in batch.encoded]
        batch.encoded = None
        ticket = DecodeTicket(batch, encoded)
        if self._started is not None:           # a pass left it (or was superseded) uncollected: its run
            self.cancel(self._started)          # must not be taken for this batch's
        if not encoded:
            return ticket
        device_id = dali_device_id(self.device)
        ticket.key = (self._token, device_id, capacity_for(len(encoded)))
        try:
            pipe = PIPELINES.get(ticket.key, lambda: self._build(ticket.key[2], device_id))
            pipe.feed_input("encoded", encoded)
            pipe.schedule_run()
        except RuntimeError:
            PIPELINES.discard(ticket.key)      # a DALI pipeline is unusable after an error
            ticket.key, ticket.failed = None, True
            return ticket
        ticket.pipe = pipe
        self._started = ticket
        return ticket

    def finish(self, ticket: DecodeTicket, handle: ErrorHandler) -> BatchInFlight:
        """The started batch, decoded where it lives. Samples that do not decode (or break
        the size rule) are raised or skipped and replaced through ``handle``."""
        batch, encoded, pipe = ticket.batch, ticket.encoded, ticket.pipe
        if not encoded:
            return batch
        if ticket.failed or ticket.pipe is None:     # refused at once, or cancelled: decode it here
            return self._decode_one_by_one(batch, encoded, handle)
        ticket.pipe = None
        self._started = None
        try:
            # bound to the stream the copy out is queued on: the host waits for DALI's CPU stage,
            # not its GPU kernels (without a stream the outputs are host-synchronous)
            stream = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
            (out,) = pipe.share_outputs(stream)
        except RuntimeError:
            PIPELINES.discard(ticket.key)
            return self._decode_one_by_one(batch, encoded, handle)
        try:
            shapes = [tuple(out[i].shape()) for i in range(len(out))]
            shapes = [(h, w, c) for c, h, w in shapes]          # the size rule speaks HWC
            self.sizes.adopt(shapes)            # no index shape: the first batch's most common one
            try:
                for i, shape in enumerate(shapes):
                    self.sizes.check(shape, batch.urls[i], batch.keys[i])
            except StreamError:
                return self._decode_one_by_one(batch, encoded, handle)
            batch.images = dali_to_torch(out, torch.uint8, self.device)
        finally:
            pipe.release_outputs()              # after the copy was queued, as DALI's own iterators do
        return batch

    def cancel(self, ticket: DecodeTicket) -> None:
        """Drop a started decode nobody will collect: its pipeline still holds the run."""
        if ticket.pipe is not None:
            PIPELINES.discard(ticket.key)
            ticket.pipe = None
        if self._started is ticket:
            self._started = None

    def _decode_one_by_one(self, batch: BatchInFlight, encoded: list[np.ndarray], handle: ErrorHandler) -> BatchInFlight:
        """Slow path: find the samples DALI refused or that break the size rule; raise or
        replace them (flagged padding) by a repeat of a good row of the batch, image, label
        and key together, or, when no row of the batch decodes, of the first sample of the
        dataset that does (:meth:`_donated_row`; so a resume at that batch pads it the same)."""
        rows: list[np.ndarray | None] = [None] * len(encoded)
        good = None
        repeat = handle.for_repeat()        # a padding row repeats a sample counted where it is itself
        for i, data in enumerate(encoded):
            count = repeat if bool(batch.is_padding[i]) else handle
            try:
                rows[i] = self._decode_row(data, batch.urls[i], batch.keys[i])
                good = i if good is None else good
            except StreamError as e:
                count(e)
            except Exception as e:
                count(StreamError("undecodable_image", f"image does not decode: {type(e).__name__}: {e}",
                                   shard=batch.urls[i], key=batch.keys[i], value=f"{len(data)} bytes"))
        if good is not None:
            fill = (rows[good], int(batch.labels[good]), batch.keys[good], batch.urls[good])
        else:
            fill = self._donated_row(batch)
        padding, labels = batch.is_padding.clone(), batch.labels.clone()
        keys, urls = list(batch.keys), list(batch.urls)
        for i, row in enumerate(rows):
            if row is None:
                rows[i], labels[i], keys[i], urls[i] = fill
                padding[i] = True
        batch.is_padding, batch.labels, batch.keys, batch.urls = padding, labels, keys, urls
        batch.images = to_device(torch.from_numpy(np.stack(rows)).permute(0, 3, 1, 2).contiguous(), self.device)
        return batch

    def _donated_row(self, batch: BatchInFlight, tries: int = 256) -> tuple[np.ndarray, int, str, str]:
        """(image, label, key, url) of the first of the dataset's samples, in index order, whose
        image decodes and fits the size rule; found once (``no_samples`` when none of the first
        ``tries`` does)."""
        if self._donated is None:
            samples = self.donors() if self.donors is not None else iter(())
            for s in itertools.islice((s for s in samples if isinstance(s, dict) and s.get("encoded")), tries):
                try:
                    row = self._decode_row(np.frombuffer(s["encoded"], dtype=np.uint8), s["__url__"], s["__key__"])
                except Exception:       # (its own shard's reader counts it)
                    continue
                self._donated = (row, int(s["label"]), s["__key__"], s["__url__"])
                break
        if self._donated is None:
            raise StreamError("no_samples", f"no image of this batch decodes (shards {sorted(set(batch.urls))}) and "
                              "no sample of the dataset does to pad it with", shard=batch.urls[0],
                              value=len(batch.urls))
        return self._donated

    def _decode_row(self, data: np.ndarray, url: str, key: str) -> np.ndarray:
        """One image with PIL, converted and resized as DALI would; checked against the size rule."""
        from PIL import Image

        raw = data.tobytes()
        image = decode_image(raw, EXT_OF_FORMAT.get(sniff_format(raw), "png"))
        if image.shape[2] != self.channels:          # match DALI's output_type
            mode = "RGB" if self.channels == 3 else "L"
            image = np.asarray(Image.fromarray(image.squeeze(-1) if image.shape[2] == 1 else image)
                               .convert(mode)).reshape(*image.shape[:2], self.channels)
        if self.resize is not None:
            image = resize_image(image, self.resize)
        self.sizes.check(image.shape, url, key)
        return image
