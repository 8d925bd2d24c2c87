"""Reading chosen samples out of shards: by label (a balancer's warm-up) or by key
(restoring a reservoir from a saved state). Tar is sequential, so both stream
whole shards and decode only what they keep.

:class:`ShardRowSource` is the loader's :class:`~streamaug.core.RowSource`: what a
bound balancer may read, and nothing more of the loader.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch

from streamaug.core.plugin import Row

from .epoch_plan import Segment
from .errors import ErrorHandler, LoaderStats, StreamError
from .sample_decoder import SampleDecoder
from .shard_index import ShardIndex
from .tar_reader import read_segment, whole_shard


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

    def _rows(self, urls: Iterable[str], keep: Callable[[str, str, int], bool],
              handle: ErrorHandler) -> Iterator[Row]:
        for url, raw, label in self._labelled(urls, handle):
            if not keep(url, raw["__key__"], label):
                continue
            try:
                image = self.decoder(raw)["image"]
            except StreamError as e:
                handle(e)
                continue
            yield url, raw["__key__"], label, torch.from_numpy(np.array(image)).permute(2, 0, 1).to(self.device)

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
