"""Host → device copies that never stall the host.

A plain ``tensor.to("cuda")`` from pageable memory waits for the stream to drain,
so every small parameter tensor sent that way would serialise the loader with the
training step queued before it. Small host tensors are pinned first (torch's
caching host allocator keeps that cheap) and copied with ``non_blocking=True``;
the allocator records the stream, so the pinned buffer is not reused early.
"""
from __future__ import annotations

import torch


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``tensor`` on ``device``; CPU → CUDA copies go through pinned memory, asynchronously."""
    device = torch.device(device)
    if tensor.device == device or (device.type == "cuda" and tensor.device.type == "cuda"
                                   and device.index is None):
        return tensor
    if device.type != "cpu" and tensor.device.type == "cpu":
        if device.type == "cuda" and not tensor.is_pinned():
            tensor = tensor.pin_memory()
        return tensor.to(device, non_blocking=True)
    return tensor.to(device)
