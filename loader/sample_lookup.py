"""Reading chosen samples out of shards: by label (a balancer's warm-up) or by key
(restoring a reservoir from a saved state). Tar is sequential, so both stream
whole shards and decode only what they keep.

:class:`ShardRowSource` is the loader's :class:`~streamaug.core.RowSource`: what a
bound balancer may read, and nothing more of the loader.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from streamaug.core.plugin import Row
from streamaug.core.threads import available_cores

from .epoch_plan import Segment
from .errors import ErrorHandler, LoaderStats, StreamError
from .sample_decoder import SampleDecoder
from .shard_index import ShardIndex
from .tar_reader import read_segment, whole_shard


def decode_threads() -> int:
    """Threads a row source decodes on: the cores this process may use, at most 8; one in a
    DataLoader worker (the workers are the parallelism)."""
    if torch.utils.data.get_worker_info() is not None:
        return 1
    return min(8, available_cores())


def decoded_in_order(items: Iterator, decode: Callable, threads: int) -> Iterator[tuple]:
    """``(item, decode(item))`` for each of ``items``, in their order, ``decode`` running on
    ``threads`` threads, at most ``4 * threads`` items ahead of the one handed on."""
    if threads <= 1:
        yield from ((item, decode(item)) for item in items)
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="streamaug row decode") as pool:
        pending: deque = deque()
        try:
            for item in items:
                pending.append((item, pool.submit(decode, item)))
                if len(pending) >= 4 * threads:
                    item, future = pending.popleft()
                    yield item, future.result()
            while pending:
                item, future = pending.popleft()
                yield item, future.result()
        finally:                       # left early (an error, or the caller stopped): drop what is queued
            for _, future in pending:
                future.cancel()


class ShardRowSource:
    """Rows from the shards ``urls`` (in the index's order when there is an index)."""

    def __init__(self, urls: list[str], index: ShardIndex | None, decoder: SampleDecoder, device: torch.device):
        self.urls = index.urls if index is not None else list(urls)
        self.index, self.decoder, self.device = index, decoder.decoding(), device

    def _segment(self, url: str) -> Segment:
        if self.index is None:
            return whole_shard(url)
        info = self.index.shard(url)
        return Segment(url, 0, info.count, info.count, class_counts=info.class_counts)

    def _labelled(self, urls: Iterable[str], handle: ErrorHandler) -> Iterator[tuple[str, dict, int]]:
        for url in urls:
            for raw in read_segment(self._segment(url), handle, self.decoder.limits):
                try:
                    label = self.decoder.label_of(raw)
                except StreamError:
                    continue
                if 0 <= label < self.decoder.num_classes:
                    yield url, raw, label

    def labels(self, wanted: Callable[[int], bool]) -> Iterator[tuple[str, str, int]]:
        """``(url, key, label)`` in index order for labels satisfying ``wanted``; no image is decoded."""
        for url, raw, label in self._labelled(self.urls, ErrorHandler("skip", LoaderStats())):
            if wanted(label):
                yield url, raw["__key__"], label

    def _decode(self, raw: dict) -> torch.Tensor | StreamError:
        try:
            image = self.decoder(raw)["image"]
        except StreamError as e:
            return e
        return torch.from_numpy(np.array(image)).permute(2, 0, 1).to(self.device)

    def _rows(self, urls: Iterable[str], keep: Callable[[str, str, int], bool],
              handle: ErrorHandler) -> Iterator[Row]:
        """The kept samples, decoded on :func:`decode_threads` threads (PIL lets go of the GIL) while
        this thread reads on, and handed on in order, each image's size checked here in that order:
        the rows, and what is skipped, are those of a decode on one thread."""
        kept = ((url, raw, label) for url, raw, label in self._labelled(urls, handle)
                if keep(url, raw["__key__"], label))
        for (url, raw, label), row in decoded_in_order(kept, lambda item: self._decode(item[1]), decode_threads()):
            try:
                if isinstance(row, StreamError):
                    raise row
                self.decoder.sizes.check(row.shape[1:] + row.shape[:1], url, raw["__key__"])
            except StreamError as e:
                handle(e)
                continue
            yield url, raw["__key__"], label, row

    def scan(self, wanted: Callable[[int], bool]) -> Iterator[Row]:
        """Samples in index order whose label satisfies ``wanted(label)``; bad samples are passed over."""
        return self._rows(self.urls, lambda url, key, label: wanted(label), ErrorHandler("skip", LoaderStats()))

    def fetch(self, pairs: list[tuple[str, str]], transform=None,
              missing: str = "raise") -> dict[tuple[str, str], torch.Tensor]:
        """``(url, key)`` pairs → rows (``transform`` maps a stack of them, e.g. to features);
        ``missing="skip"`` leaves out what cannot be read instead of raising."""
        wanted: dict[str, set[str]] = {}
        for url, key in pairs:
            wanted.setdefault(url, set()).add(key)
        # read past a bad sample or a cut shard either way: what matters is whether the keys are found
        problems = LoaderStats()
        found = {(url, key): row for url, key, _, row in
                 self._rows(wanted, lambda url, key, label: key in wanted[url], ErrorHandler("skip", problems))}
        absent = [p for p in pairs if tuple(p) not in found]
        if absent and missing == "raise":
            seen = "; ".join(f"{reason}: {msg}" for reason, msg in problems.examples.items())
            raise ValueError(f"saved state names {len(absent)} samples that cannot be read from their shards, "
                             f"e.g. {absent[0]!r}" + (f" (reading them: {seen})" if seen else ""))
        if transform is not None and found:
            order = list(found)
            found = dict(zip(order, transform(torch.stack([found[p] for p in order]))))
        return found
