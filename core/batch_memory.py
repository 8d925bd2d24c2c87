"""Where a new batch is allocated: in shared memory when it is a DataLoader worker's result.

A worker's batch reaches the main process through shared memory: pickling a private
tensor for the worker's result queue copies it into a fresh shared segment. For a 224²
batch of 256 (38.5 MB) that copy cost about 21 ms of the worker's time, while
allocating the batch in shared memory from the start costs about 3.6 ms more than a
private allocation (both measured on this 2-core machine; the numbers are in the
closing note of issue #12). ``torch.utils.data.default_collate`` does the same for
the batches it stacks in a worker.

So the stage that makes a worker's final batch runs inside :func:`shared_outputs`
(``loader/worker_stages.py``), and the kernels that make whole new batches allocate
them with :func:`empty_batch`; a kernel whose batch is only an intermediate inside that
stage runs under :func:`private_outputs`. Everywhere else (the main process)
:func:`empty_batch` is ``torch.empty``. The scopes are per thread and nest.
"""
from __future__ import annotations

import math
import threading
from contextlib import contextmanager

import torch

_scope = threading.local()


@contextmanager
def _allocating(shared: bool):
    saved = getattr(_scope, "shared", False)
    _scope.shared = shared
    try:
        yield
    finally:
        _scope.shared = saved


def shared_outputs():
    """Inside: :func:`empty_batch` allocates CPU batches in shared memory."""
    return _allocating(True)


def private_outputs():
    """Inside: :func:`empty_batch` is ``torch.empty`` again (a stage's intermediate batches)."""
    return _allocating(False)


def empty_batch(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised CPU tensor; in shared memory inside :func:`shared_outputs`."""
    if not getattr(_scope, "shared", False):
        return torch.empty(shape, dtype=dtype)
    numel = math.prod(shape)
    storage = torch.UntypedStorage._new_shared(numel * dtype.itemsize)   # as default_collate does in a worker
    return torch.empty(0, dtype=dtype).set_(storage, 0, tuple(shape))
