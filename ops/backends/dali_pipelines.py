"""One cache of built NVIDIA DALI pipelines, shared by the augmentation backend and
the loader's device-side decoder.

Building a DALI pipeline costs milliseconds to seconds, so each graph is built
once per (owner, graph, device, batch capacity) and fed with ``external_source``
on every call. Batch sizes are rounded up to a power of two (``capacity_for``),
so a stream with a short last batch builds at most one more. A pipeline that
raised is dropped (DALI leaves it unusable). The cache holds at most
``MAX_PIPELINES``; the least recently used goes first.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable

import torch

MAX_PIPELINES = 32


def capacity_for(n: int) -> int:
    """The batch size to build for ``n`` rows: the next power of two."""
    return 1 << max(0, (n - 1).bit_length())


def dali_device_id(device: torch.device) -> int | None:
    """DALI's ``device_id``: the CUDA ordinal, or ``None`` for a CPU-only pipeline."""
    if device.type != "cuda":
        return None
    return device.index if device.index is not None else torch.cuda.current_device()


class DaliPipelineCache:
    def __init__(self, limit: int = MAX_PIPELINES):
        self.limit = limit
        self._pipes: OrderedDict[Hashable, object] = OrderedDict()

    def get(self, key: Hashable, build: Callable[[], object]):
        """The pipeline for ``key``, built (and ``.build()``-ed) by ``build()`` on first use."""
        if key in self._pipes:
            self._pipes.move_to_end(key)
            return self._pipes[key]
        pipe = build()
        pipe.build()
        self._pipes[key] = pipe
        while len(self._pipes) > self.limit:
            self._pipes.popitem(last=False)
        return pipe

    def discard(self, key: Hashable) -> None:
        self._pipes.pop(key, None)

    def __len__(self) -> int:
        return len(self._pipes)


PIPELINES = DaliPipelineCache()


def dali_to_torch(output, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A dense DALI output batch → a new torch tensor on ``device`` (copied on the current stream)."""
    from nvidia.dali.plugin.pytorch import feed_ndarray

    dense = output.as_tensor()
    result = torch.empty(dense.shape(), dtype=dtype, device=device)
    feed_ndarray(dense, result, cuda_stream=torch.cuda.current_stream(device) if device.type == "cuda" else None)
    return result
