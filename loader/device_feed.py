"""Move batches to the training device one step ahead of use.

On CUDA the images are copied from pinned memory with ``non_blocking=True`` on a
side stream, so the copy of batch ``i+1`` overlaps the training step on batch ``i``
(the pattern of timm's and FFCV's prefetchers). Labels and masks stay on the host
for the plug-in stages; the loader sends them at the end. On CPU it is a pass-through.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch

from streamaug.core.flight import BatchInFlight


def delivery_device(device) -> torch.device:
    """``device=``: as given, else CUDA when there is one, else the CPU; CUDA without one is refused."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    chosen = torch.device(device)
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}, but this torch ({torch.__version__}) sees no CUDA device; pass "
                         f"device='cpu', or leave device= out (CUDA when there is one, else the CPU)")
    return chosen


def device_feed(batches: Iterator[BatchInFlight], device: torch.device, pin: bool) -> Iterator[BatchInFlight]:
    if device.type != "cuda":
        yield from batches
        return
    batches, side = iter(batches), torch.cuda.Stream(device=device)
    pending = None
    while True:
        try:
            batch = next(batches, None)
        except Exception:           # the batch before the error comes first, as DataLoader's would
            if pending is not None:
                yield pending
            raise
        if batch is None:
            break
        if pin and not batch.images.is_pinned():          # no worker process pinned it
            batch.pin_memory()
        with torch.cuda.stream(side):
            batch.images = batch.images.to(device, non_blocking=True)
        if pending is not None:
            yield pending
        torch.cuda.current_stream(device).wait_stream(side)
        batch.images.record_stream(torch.cuda.current_stream(device))
        pending = batch
    if pending is not None:
        yield pending
