"""Reading chosen samples out of shards: by label (the balancer's warm-up) or by key
(restoring a reservoir from a saved state). Tar is sequential, so both stream
whole shards and decode only what they keep."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch

from .epoch_plan import Segment
from .errors import ErrorHandler, LoaderStats, StreamError
from .sample_decoder import SampleDecoder
from .shard_index import ShardIndex
from .tar_reader import read_segment, whole_shard

Row = tuple[str, str, int, torch.Tensor]          # url, key, label, CHW uint8 row


def _rows(index: ShardIndex | None, decoder: SampleDecoder, device, urls: Iterable[str],
          keep: Callable[[str, str, int], bool], on_error: str) -> Iterator[Row]:
    handle = ErrorHandler(on_error, LoaderStats())
    if decoder.defer_encoded:        # decode="dali" ships bytes; rows read here are decoded in place
        decoder = SampleDecoder(decoder.num_classes, decoder.resize, decoder.expect_shape)
    for url in urls:
        segment = whole_shard(url) if index is None else Segment(url, 0, index.shard(url).count, index.shard(url).count)
        for raw in read_segment(segment, handle):
            try:
                label = int(raw["cls"])
            except (KeyError, ValueError):
                continue
            if not 0 <= label < decoder.num_classes or not keep(url, raw["__key__"], label):
                continue
            try:
                image = decoder(raw)["image"]
            except StreamError as e:
                handle(e)
                continue
            yield url, raw["__key__"], label, torch.from_numpy(np.array(image)).permute(2, 0, 1).to(device)


def scan_rows(index: ShardIndex, decoder: SampleDecoder, device, wanted: Callable[[int], bool]) -> Iterator[Row]:
    """Samples in index order whose label satisfies ``wanted(label)``; bad samples are passed over."""
    return _rows(index, decoder, device, index.urls, lambda url, key, label: wanted(label), "skip")


def fetch_rows(index: ShardIndex, decoder: SampleDecoder, device, pairs: list[tuple[str, str]],
               transform=None) -> dict[tuple[str, str], torch.Tensor]:
    """``(url, key)`` pairs → rows (``transform`` maps a stack of them, e.g. to features)."""
    wanted: dict[str, set[str]] = {}
    for url, key in pairs:
        wanted.setdefault(url, set()).add(key)
    found = {(url, key): row for url, key, _, row in
             _rows(index, decoder, device, wanted, lambda url, key, label: key in wanted[url], "raise")}
    missing = [p for p in pairs if tuple(p) not in found]
    if missing:
        raise ValueError(f"saved state names samples that are not in their shards, e.g. {missing[0]!r}")
    if transform is not None:
        order = list(found)
        found = dict(zip(order, transform(torch.stack([found[p] for p in order]))))
    return found
