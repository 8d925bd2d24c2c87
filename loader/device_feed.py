"""Move batches to the training device one step ahead of use.

On CUDA the copy runs from pinned memory with ``non_blocking=True`` on a side
stream, so the copy of batch ``i+1`` overlaps the training step on batch ``i``
(the pattern of timm's and FFCV's prefetchers). On CPU it is a pass-through.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch


def _move(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def device_feed(batches: Iterator[dict], device: torch.device) -> Iterator[dict]:
    if device.type != "cuda":
        yield from batches
        return
    side = torch.cuda.Stream(device=device)
    pending = None
    for batch in batches:
        with torch.cuda.stream(side):
            moved = _move(batch, device)
        if pending is not None:
            yield pending
        torch.cuda.current_stream(device).wait_stream(side)
        for v in moved.values():
            if isinstance(v, torch.Tensor):
                v.record_stream(torch.cuda.current_stream(device))
        pending = moved
    if pending is not None:
        yield pending
