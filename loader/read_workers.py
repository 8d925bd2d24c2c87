"""Start and stop the DataLoader worker processes that read and decode shards, and take
what they make for a pass (:func:`worker_batches`).

Start: each worker freezes the objects it inherited (never collected or finalized
there), runs one intra-op thread (the workers are the parallelism) and installs a
SIGTERM handler that kills the ``pipe:``/http commands it started before it exits,
so no command outlives its reader. It also watches the process that started it and, when
that is gone, kills its commands and exits (:func:`_leave_when_orphaned`).

Stop (:func:`stop_workers`, behind ``StreamLoader.close()``): torch's own shutdown
joins each worker for up to 5 s, so a worker stuck in a stalled read (a ``pipe:``
with a long ``read_timeout``, say, after a Ctrl-C) makes ``close()`` slow. Here the
workers are told to finish, given ``grace`` seconds in all, and the rest are stopped
with SIGTERM (killing their commands) before torch's shutdown tidies the queues.

Fork (``os.fork()`` in the training loop, a fork-started ``multiprocessing`` child): the
child's copy of a loader forgets the parent's workers (:func:`_forget_parent_workers`), so
neither freeing that copy, its ``close()``, torch's shutdown nor the child's exit
(``multiprocessing`` terminates the daemon processes it knows of) stops the parent's
workers; torch's own DataLoader loses its workers when such a child exits.
"""
from __future__ import annotations

import atexit
import functools
import gc
import multiprocessing.connection
import multiprocessing.process
import os
import queue
import signal
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from multiprocessing.reduction import ForkingPickler

from torch.utils.data import DataLoader
from torch.utils.data._utils.signal_handling import _remove_worker_pids

from streamaug.core.flight import BatchInFlight
from streamaug.core.process_exit import exit_now
from streamaug.core.seeding import torch_generator
from streamaug.core.threads import OpenCVPoolStopped, limit_worker_threads

from .errors import WorkerCounts, WorkerFailure, add_counts
from .shard_stream import kill_live_commands
from .worker_stages import check_stages_still_picklable


def init_worker(worker_id: int) -> None:
    """``worker_init_fn`` of the reading workers."""
    gc.freeze()
    limit_worker_threads()
    signal.signal(signal.SIGTERM, _on_sigterm)
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_leave_when_orphaned, args=(_exit_signals(parent), os.getppid()),
                         name="streamaug parent watch", daemon=True).start()
    if getattr(multiprocessing.current_process(), "_start_method", None) == "spawn":
        sys.exit = functools.partial(_exit_without_finalizing, sys.exit)


def _exit_without_finalizing(exit_, code=None) -> None:
    """``sys.exit`` in a spawn-started worker. Its last call, multiprocessing's
    ``sys.exit(exitcode)`` after the worker's run, is ended here: the atexit handlers run (all
    of them, newest first, as shutdown would), then ``os._exit(exitcode)``. Interpreter
    shutdown would run while the worker's queue feeder thread may still be pickling a batch
    nobody will read (torch stops waiting for it); that thread cannot take the GIL back from a
    torch call there, and the worker aborted ("terminate called without an active exception",
    killed by SIGABRT: 3 of 4 spawn runs that stopped workers mid-pass). Fork- and
    forkserver-started workers end with ``os._exit`` already. Any other ``sys.exit`` is the usual one."""
    if sys._getframe(1).f_globals.get("__name__") != "multiprocessing.spawn":      # noqa: SLF001
        exit_(code)
    atexit._run_exitfuncs()                            # noqa: SLF001
    kill_live_commands()
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
    exit_now(1 if code is not None and not isinstance(code, int) else code or 0)


def _exit_signals(parent) -> list[int]:
    """What becomes readable when the process that started this worker is gone: a pidfd on it
    (Linux 5.3+), and multiprocessing's sentinel pipe from it. The sentinel alone is not enough:
    a fork-started child of that process (an ``os.fork()``, a ``multiprocessing`` helper)
    inherits the pipe's write end and keeps it open after the parent dies."""
    fds = [parent.sentinel]
    try:
        fds.append(os.pidfd_open(parent.pid))
    except (AttributeError, OSError):                # (not Linux, an old kernel, or already gone)
        pass
    return fds


def _leave_when_orphaned(exit_signals: list[int], parent_pid: int) -> None:
    """A worker's watch on the process that started it: when that process is gone (a SIGKILL,
    the OOM killer, a SIGTERM with no handler), the worker's commands are killed and it leaves
    at once. Nothing it holds is wanted any more.

    torch's own watch did not do: its worker loop ends when it sees the parent's pid change, and
    the worker's exit then joins its result queue's feeder thread, which may be blocked for ever
    writing a batch into the full result pipe (nobody reads it, and the worker holds its read end
    too; torch lets go of that join only on a shutdown the parent asked for). Such a worker
    stayed alive for good, holding its memory (411 MiB at 1,000 classes) and any pipe it
    inherited, so ``train.py | tee log`` never ended: 5 of 9 SIGKILLs with a balancer at batch
    256. And a worker started by a forkserver has the forkserver as its parent, which outlives
    the training process, so torch's watch never fired: those workers stayed whatever they held.

    ``exit_signals`` (:func:`_exit_signals`) end the wait at once; the parent's pid is checked
    every 5 s as well, where neither can tell (no pidfd, and a sibling forked after this worker
    holds the sentinel too)."""
    while not multiprocessing.connection.wait(exit_signals, timeout=5.0) and os.getppid() == parent_pid:
        pass
    kill_live_commands()
    exit_now(0)


def _on_sigterm(signum, frame) -> None:
    kill_live_commands()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)    # then die of it: a worker that exited 0 looks, to
    os.kill(os.getpid(), signal.SIGTERM)             # torch, like one still starting (5 s, or a hang)


_WITH_WORKERS: weakref.WeakSet = weakref.WeakSet()   # StreamLoaders whose reading workers this process started


def _forget_parent_workers() -> None:
    """After a fork, in the child: every loader's running workers are the parent's. Its copy
    of torch's iterator is marked stopped (its ``__del__`` then leaves them alone), they are
    dropped from ``multiprocessing``'s children (whose exit hook would terminate them), and
    the loader's copy starts workers of its own if the child iterates it."""
    for loader in list(_WITH_WORKERS):
        loader.position.forked_pass = loader.position.serial     # (continuing it here raises, saying so)
        stop, loader._stop_workers = loader._stop_workers, None
        if stop is not None:
            stop.detach()
        dl, loader._dataloader = loader._dataloader, None
        it = getattr(dl, "_iterator", None)
        if it is None:
            continue
        it._shutdown = True                                    # noqa: SLF001
        for w in getattr(it, "_workers", []):
            multiprocessing.process._children.discard(w)       # noqa: SLF001
    _WITH_WORKERS.clear()


os.register_at_fork(after_in_child=_forget_parent_workers)


def stop_workers(loader: DataLoader, grace: float = 0.5) -> None:
    """Stop ``loader``'s persistent workers within about ``grace`` + 1 s, whatever they are doing."""
    it = getattr(loader, "_iterator", None)
    if it is None or getattr(it, "_shutdown", True):
        return
    workers = list(getattr(it, "_workers", []))
    it._workers_done_event.set()                       # noqa: SLF001 - torch has no public stop
    for q, w in zip(it._index_queues, workers):
        if w.is_alive():                               # (idle persistent workers too, whose status is False
            q.put(None)                                # after a full pass): a waiting worker exits at once
    deadline = time.monotonic() + grace
    for w in workers:
        w.join(max(0.0, deadline - time.monotonic()))
    if getattr(it, "_worker_pids_set", False):         # (torch's SIGCHLD check would take the SIGTERM
        _remove_worker_pids(id(it))                    # below for a failure, as it does a kill from outside)
        it._worker_pids_set = False                    # noqa: SLF001
    for w in workers:
        if w.is_alive():
            w.terminate()                              # a stuck read: SIGTERM kills its commands too
    for w in workers:
        w.join(1.0)
    it._shutdown_workers()                             # noqa: SLF001 - queues and threads
    _wake_waiter(it)


class WorkersStopped(RuntimeError):
    """Raised in a thread that waited in ``next()`` while another stopped the workers."""


class _StopNotice:
    """What :func:`_wake_waiter` sends: taking it from the queue raises :class:`WorkersStopped`
    (torch unpacks each item it takes as ``idx, data``)."""

    def __iter__(self):
        raise WorkersStopped("the reading workers were stopped while this pass waited for a batch")


def _wake_waiter(it) -> None:
    """A ``next()`` waiting on ``it`` in another thread (or under the signal handler that
    stopped it) raises: torch's wait has no end when no worker is left to fail (it polls its
    queue every 5 s for ever), so ``close()`` from a watchdog thread or a SIGTERM handler hung
    the training loop.

    At once, in the usual case: a notice is written straight into the workers' result pipe,
    under the queue's write lock, when the pipe is empty (so the write cannot block, and a
    waiter is what it wakes). Not through ``Queue.put``: its feeder thread waits for that lock
    for ever when a worker stopped mid-send holds it, and one such thread (and two fds) was
    left per ``close()``. Within 5 s otherwise (the lock held by a stopped worker): the workers
    are marked live again, so torch's next check finds them gone and raises (a pass that had
    handed on its epoch's last batch then ends there: see :func:`_worker_items`)."""
    q = getattr(it, "_data_queue", None)
    if isinstance(q, queue.Queue):                     # pin_memory: the pin thread's queue
        if q.mutex.acquire(timeout=0.5):               # (not held for ever: this may run in a signal
            try:                                       # handler that interrupted a get() holding it)
                q.queue.append(_StopNotice())
                q.not_empty.notify()
            finally:
                q.mutex.release()
        return
    if q is None:
        return
    lock = getattr(q, "_wlock", None)
    try:
        if q._reader.poll(0):                          # noqa: SLF001 - something to read: a waiter
            return                                     # returns by itself
        if lock is None or not lock.acquire(True, 0.5):
            it._workers_status = [True] * len(getattr(it, "_workers", []))     # noqa: SLF001 - the backstop
            return
    except OSError:                                    # closed: nobody waits on it
        return
    try:
        if q._sem.acquire(False):                      # noqa: SLF001 - as put() counts it, or get()
            q._writer.send_bytes(ForkingPickler.dumps(_StopNotice()))             # noqa: SLF001
    except OSError:                                    # (releases the count once too often)
        pass
    finally:
        lock.release()


def _all_alive(dl: DataLoader) -> bool:
    it = getattr(dl, "_iterator", None)
    return it is None or getattr(it, "_shutdown", False) or all(w.is_alive() for w in getattr(it, "_workers", []))


def worker_batches(loader, serial: int, hold_last: bool) -> Iterator[BatchInFlight]:
    """``loader``'s batches for its pass ``serial``, from its reading workers (or this process).
    Counts a worker shipped without a batch ride on the next batch, so a resume that passes
    over that batch has them in its restored ``stats`` already. With ``hold_last`` (no index:
    the pass replays on resume) each batch is held until the next arrives, so counts that
    come after the last batch ride on it too."""
    carried: dict = {}
    held = None
    items = _worker_items(loader, serial)
    while True:
        try:
            item = next(items, None)
        except Exception:
            if held is not None:        # the batch before the error comes first, as DataLoader's would
                yield held
            raise
        if item is None:
            break
        if isinstance(item, WorkerCounts):
            add_counts(carried, item.counts)
            continue
        if carried:
            add_counts(item.stats, carried)
            carried = {}
        if not hold_last:
            yield item
            continue
        if held is not None:
            yield held
        held = item
    if held is not None:
        add_counts(held.stats, carried)
        yield held
    elif carried:
        loader.stats.merge(carried)


def _worker_items(loader, serial: int):
    loader._stream.set_position(loader.epoch, loader.position.batches_done)          # noqa: SLF001
    if loader.read_workers == 0:
        yield from loader._stream                                            # noqa: SLF001
        return
    if loader._dataloader is not None and not _all_alive(loader._dataloader):
        loader.stop_reading_workers()    # one died (the OOM killer, a SIGKILL): this pass starts new ones
    if loader._dataloader is None:       # workers persist across epochs (see WorkerStream)
        if loader.stages_in_workers:
            check_stages_still_picklable(loader.read_options.start_method, balance=loader.balance,
                                         augment=loader.augment, mixup=loader.mixup)
        if loader.stages_in_workers and loader.balance is not None:
            with loader._stage_threads:  # the thread count the main process would build them with
                loader.balance.prepare()  # the workers share its reservoirs (see worker_stages)
        # Forked workers inherit the parent's uncollected garbage; finalizing it there (e.g. a
        # dead DALI pipeline, whose threads do not exist in the child) can crash the worker.
        gc.collect()
        # its own generator: DataLoader draws each start's worker base seed from torch's global RNG
        # otherwise, and a user's torch.manual_seed stream then depended on num_workers
        loader._dataloader = DataLoader(loader._stream, batch_size=None, num_workers=loader.read_workers,
                                        pin_memory=loader._pin, prefetch_factor=loader._prefetch,
                                        persistent_workers=True, generator=torch_generator(loader.seed, "reading workers"),
                                        **loader.read_options.dataloader_arguments())
        # freed without close(): stop them as close() does. torch's own shutdown joins each worker
        # for 5 s, and after a pass that failed (StreamError) the workers took all of it: 10 s for 2
        loader._stop_workers = weakref.finalize(loader, stop_workers, loader._dataloader)
        _WITH_WORKERS.add(loader)
    with OpenCVPoolStopped():            # the workers start (fork) here, the first time
        dl, items = loader._dataloader, iter(loader._dataloader)
    while True:
        loader.position.check_current(serial)    # before taking a batch: it may be a newer pass's
        if loader._dataloader is not dl and loader.position.ended_pass == serial:
            return                       # close() after the epoch's last batch: the pass is whole
        try:
            item = next(items, None)
        except Exception:
            loader.position.check_current(serial)    # close() from another thread or a signal handler
            raise
        if item is None:
            return
        if isinstance(item, WorkerFailure):   # the worker's StreamError itself, not DataLoader's RuntimeError
            raise item.error
        yield item
