"""Intra-op thread counts for the loader's stages, sized to the cores they share.

The main-process stages (balance, augment, mixup) run torch (OpenMP/MKL) and
OpenCV kernels whose thread pools default to one thread per core. In training
those cores are also busy with DataLoader workers and the training step, and a
parallel region whose threads wait at a barrier for a descheduled sibling
collapses: streaming SMOTE fell from ~23,000 to 807 synthetic/s with one other
CPU-bound process on a 2-core machine (issue #12). So the loader:

* runs its main-process stages inside :class:`IntraOpThreads`, sized by
  :func:`main_process_threads` (the cores this process may use, less one per
  DataLoader worker, less one for the training step or any other competitor);
  the caller's own settings are restored on the way out, so the training step
  keeps its own thread count;
* calls :func:`limit_worker_threads` in every DataLoader worker (one intra-op
  thread each: the workers are the parallelism).

>>> from streamaug.core.threads import IntraOpThreads, main_process_threads
>>> n = main_process_threads(num_workers=2, cores=8)
>>> n
5
>>> with IntraOpThreads(n):          # doctest: +SKIP
...     images = augment(images)
"""
from __future__ import annotations

import os
import sys

import torch


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):            # not Linux
        return max(1, os.cpu_count() or 1)


def main_process_threads(num_workers: int, cores: int | None = None) -> int:
    """Intra-op threads for the main-process stages: ``cores - num_workers - 1``, at least 1.

    One core is left for the training step (or another CPU-bound process), and one
    per DataLoader worker; with fewer cores than that the stages run on one thread,
    which cannot be stalled by a descheduled sibling.
    """
    if not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
    cores = available_cores() if cores is None else cores
    if not isinstance(cores, int) or cores < 1:
        raise ValueError(f"cores must be an int >= 1, got {cores!r}")
    return max(1, cores - num_workers - 1)


def _opencv():
    """OpenCV only if something already imported it (it is never imported for this)."""
    return sys.modules.get("cv2")


class IntraOpThreads:
    """Context manager: torch's and OpenCV's intra-op thread counts set to ``n`` inside,
    the caller's own counts restored on exit (also when the block raises).

    Reusable and cheap (~1 µs per enter/exit), so it wraps every batch.
    """

    def __init__(self, n: int):
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"thread count must be an int >= 1, got {n!r}")
        self.n = n
        self._saved: list[tuple[int, int | None]] = []

    def __enter__(self) -> "IntraOpThreads":
        cv2 = _opencv()
        self._saved.append((torch.get_num_threads(), None if cv2 is None else cv2.getNumThreads()))
        if self._saved[-1][0] != self.n:
            torch.set_num_threads(self.n)
        if cv2 is not None:
            cv2.setNumThreads(self.n)
        return self

    def __exit__(self, *exc) -> None:
        torch_threads, cv2_threads = self._saved.pop()
        if torch.get_num_threads() != torch_threads:
            torch.set_num_threads(torch_threads)
        cv2 = _opencv()
        if cv2 is not None and cv2_threads is not None:
            cv2.setNumThreads(cv2_threads)

    def __repr__(self) -> str:
        return f"IntraOpThreads({self.n})"


def limit_worker_threads() -> None:
    """In a DataLoader worker: one intra-op thread for torch and OpenCV (the workers
    are the parallelism; PIL decodes on the calling thread)."""
    torch.set_num_threads(1)
    cv2 = _opencv()
    if cv2 is not None:
        cv2.setNumThreads(1)


class OpenCVPoolStopped:
    """Context manager for forking workers: OpenCV's thread pool is stopped inside (one
    thread) and the caller's thread count restored on exit (the pool restarts when next used).

    A child forked while the pool has threads inherits its state but not its threads, and
    its first ``cv2.setNumThreads`` (``limit_worker_threads``) then waits for those threads
    forever (``pthread_cond_destroy``). Any multi-threaded OpenCV call in the parent before
    the fork (the OpenCV backend or albumentations in the main process) left such a pool.
    Without OpenCV imported it does nothing.
    """

    def __enter__(self) -> "OpenCVPoolStopped":
        cv2 = _opencv()
        self._saved = None if cv2 is None else cv2.getNumThreads()
        if self._saved is not None and self._saved != 1:
            cv2.setNumThreads(1)               # joins the pool's threads in this process
        return self

    def __exit__(self, *exc) -> None:
        if self._saved is not None and self._saved != 1:
            _opencv().setNumThreads(self._saved)
