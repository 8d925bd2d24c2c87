"""Start and stop the DataLoader worker processes that read and decode shards.

Start: each worker freezes the objects it inherited (never collected or finalized
there), runs one intra-op thread (the workers are the parallelism) and installs a
SIGTERM handler that kills the ``pipe:``/http commands it started before it exits,
so no command outlives its reader.

Stop (:func:`stop_workers`, behind ``StreamLoader.close()``): torch's own shutdown
joins each worker for up to 5 s, so a worker stuck in a stalled read (a ``pipe:``
with a long ``read_timeout``, say, after a Ctrl-C) makes ``close()`` slow. Here the
workers are told to finish, given ``grace`` seconds in all, and the rest are stopped
with SIGTERM (killing their commands) before torch's shutdown tidies the queues.
"""
from __future__ import annotations

import gc
import os
import signal
import time

from torch.utils.data import DataLoader

from streamaug.core.threads import limit_worker_threads

from .shard_stream import kill_live_commands


def init_worker(worker_id: int) -> None:
    """``worker_init_fn`` of the reading workers."""
    gc.freeze()
    limit_worker_threads()
    signal.signal(signal.SIGTERM, _on_sigterm)


def _on_sigterm(signum, frame) -> None:
    kill_live_commands()
    os._exit(0)


def stop_workers(loader: DataLoader, grace: float = 0.5) -> None:
    """Stop ``loader``'s persistent workers within about ``grace`` + 1 s, whatever they are doing."""
    it = getattr(loader, "_iterator", None)
    if it is None or getattr(it, "_shutdown", True):
        return
    workers = list(getattr(it, "_workers", []))
    it._workers_done_event.set()                       # noqa: SLF001 - torch has no public stop
    for q, status in zip(it._index_queues, it._workers_status):
        if status:
            q.put(None)                                # a waiting worker exits at once
    deadline = time.monotonic() + grace
    for w in workers:
        w.join(max(0.0, deadline - time.monotonic()))
    for w in workers:
        if w.is_alive():
            w.terminate()                              # a stuck read: SIGTERM kills its commands too
    for w in workers:
        w.join(1.0)
    it._shutdown_workers()                             # noqa: SLF001 - queues and threads
