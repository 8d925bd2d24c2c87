"""``torch.utils.data.DataLoader``'s keyword arguments, as :class:`StreamLoader` takes them.

A script that moves from ``DataLoader`` keeps its keyword arguments. Each either
means the same here, applied to the reading workers, or is refused with what to
use instead (a ``TypeError``, as for any argument a function does not take):

* ``batch_size``, ``num_workers``, ``pin_memory``, ``drop_last``, ``prefetch_factor``:
  the same (the workers are the processes that read and decode shards).
* ``shuffle``: ``True`` is a shuffle buffer of ``SHUFFLE_BUFFER`` samples, with shard
  order shuffled per epoch; ``False`` or ``None``, neither. An int is the buffer size.
* ``persistent_workers``: workers persist across epochs (``None``, the default, or
  ``True``); ``False`` stops them at the end of each pass.
* ``multiprocessing_context``: how the workers start (``"fork"``, ``"spawn"``,
  ``"forkserver"`` or a context).
* ``timeout``: seconds to wait for a batch from the workers (0: no limit).
* ``worker_init_fn``: called in each worker after streamaug's own set-up.
* ``in_order``: ``True`` only; batches always come in order (a resume position counts them).
* ``sampler``, ``batch_sampler``, ``collate_fn``, ``generator``, ``pin_memory_device``:
  refused unless given DataLoader's default (``None``, or ``""``), with the message in
  ``REFUSED`` saying what to use instead.

With ``num_workers=0`` there are no workers, and the worker arguments have nothing
to apply to.
"""
from __future__ import annotations

import functools
import multiprocessing
import numbers
from collections.abc import Callable
from dataclasses import dataclass

from torch.utils.data import DataLoader

from .read_workers import init_worker

SHUFFLE_BUFFER = 1000           # samples; StreamLoader's default, and what shuffle=True means

REFUSED = {      # given anything but DataLoader's default (None; "" for pin_memory_device)
    "sampler": "StreamLoader reads shards in a planned order and splits them by rank itself (from "
               "torch.distributed); use shuffle= (buffer size), set_epoch() and balance= (class balancing) "
               "instead of a sampler",
    "batch_sampler": "StreamLoader cuts batches of batch_size= itself; use batch_size= and drop_last=",
    "collate_fn": "StreamLoader collates batches itself (images NCHW, labels); choose the output with dtype=, "
                  "normalize= and channels_last=, or transform each Batch in your loop",
    "generator": "StreamLoader's randomness derives from seed= (with the epoch, rank and worker); pass seed=<int>",
    "pin_memory_device": "batches are delivered to device=; pass device= instead",
}


def check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return int(batch_size)                     # (numpy ints too, as DataLoader takes)


def check_num_workers(num_workers) -> int:
    if isinstance(num_workers, bool) or not isinstance(num_workers, numbers.Integral) or num_workers < 0:
        raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
    return int(num_workers)


def check_seed(seed) -> int:
    """``seed=`` as an int (numpy ints too); ``None``, a bool or a float is refused: the one seed
    everything derives from must be the same on every rank and in every resume, and ``1.7``
    would quietly be the stream of ``seed=1``."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"seed must be an int (the one seed shard order, shuffle and plug-ins derive from; the "
                         f"same on every rank), got {seed!r}")
    return int(seed)


def check_topology(world_size, rank) -> tuple[int | None, int | None]:
    """``world_size=``/``rank=`` overrides as ints (numpy ints too: the state is JSON), ``None`` kept."""
    for name, value, low in (("world_size", world_size, 1), ("rank", rank, 0)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low):
            raise ValueError(f"{name} must be an int >= {low} (or None: torch.distributed's), got {value!r}")
    return (None if world_size is None else int(world_size)), (None if rank is None else int(rank))


def check_prefetch(prefetch_factor, num_workers: int) -> int:
    """Batches each reading worker reads ahead: DataLoader's default 2, and its refusal without workers."""
    if prefetch_factor is not None and num_workers == 0:     # DataLoader's own check, its message as it words it
        try:
            DataLoader([], num_workers=0, prefetch_factor=prefetch_factor)
        except ValueError as exc:
            raise ValueError(str(exc)) from None
        raise ValueError("prefetch_factor is for reading workers; with num_workers=0 pass none")
    if prefetch_factor is None:
        return 2
    if isinstance(prefetch_factor, bool) or not isinstance(prefetch_factor, numbers.Integral) or prefetch_factor < 1:
        raise ValueError(f"prefetch_factor must be an integer >= 1 (batches each worker reads ahead), "
                         f"got {prefetch_factor!r}")
    return int(prefetch_factor)


def check_shuffle(shuffle) -> int:
    """DataLoader's bool (or ``None``) or a buffer size → the buffer size."""
    if shuffle is None or isinstance(shuffle, bool):
        return SHUFFLE_BUFFER if shuffle else 0
    if not isinstance(shuffle, numbers.Integral) or shuffle < 0:
        raise ValueError(f"shuffle must be True, False or a shuffle-buffer size (an int >= 0), got {shuffle!r}")
    return int(shuffle)


@dataclass(frozen=True)
class ReadWorkerOptions:
    """How the reading workers run (DataLoader's worker arguments)."""
    persistent: bool = True
    context: object = None
    timeout: float = 0.0
    worker_init_fn: Callable[[int], None] | None = None

    @property
    def start_method(self) -> str:
        """How the workers start: the context's method, else the platform's default (the first of
        ``get_all_start_methods``: fork on Linux before Python 3.14, spawn on macOS)."""
        if self.context is not None:
            return self.context.get_start_method()
        return multiprocessing.get_start_method(allow_none=True) or multiprocessing.get_all_start_methods()[0]

    def dataloader_arguments(self) -> dict:
        init = init_worker if self.worker_init_fn is None else functools.partial(_init_then, self.worker_init_fn)
        return {"multiprocessing_context": self.context, "timeout": self.timeout, "worker_init_fn": init}


def _init_then(user_init: Callable[[int], None], worker_id: int) -> None:
    init_worker(worker_id)
    user_init(worker_id)


# arguments of datasets and other loaders that users carry over: what to pass instead
_TRANSFORM = (" (a dataset's per-image transform: StreamLoader augments whole batches with "
              "augment=streamaug.ops.Compose([...]), and dtype=/normalize= convert them)")
MISTAKEN = {"transform": _TRANSFORM, "transforms": _TRANSFORM, "target_transform": _TRANSFORM,
            "weights": " (class weights: balance=streamaug.samplers.ClassBalancer(...) balances the classes)"}


def read_worker_options(num_workers: int, persistent_workers=None, multiprocessing_context=None, timeout=0,
                        worker_init_fn=None, in_order=True, **refused) -> ReadWorkerOptions:
    """Check DataLoader's worker arguments. ``refused``: a name of ``REFUSED`` given anything but
    its default, or a name DataLoader does not have either, is a ``TypeError``. As DataLoader,
    ``persistent_workers=True`` and a ``multiprocessing_context`` need worker processes."""
    for name, value in refused.items():
        if name not in REFUSED:
            raise TypeError(f"StreamLoader got an unexpected keyword argument {name!r}{MISTAKEN.get(name, '')}")
        if value is not None and value != "":     # DataLoader's default is accepted: it asks for nothing
            raise TypeError(f"StreamLoader does not take DataLoader's {name}= (got {value!r}): {REFUSED[name]}")
    if persistent_workers is not None and not isinstance(persistent_workers, bool):
        raise ValueError(f"persistent_workers must be True or False, got {persistent_workers!r}")
    if persistent_workers and num_workers == 0:       # (DataLoader's own check and message)
        raise ValueError("persistent_workers option needs num_workers > 0")
    if multiprocessing_context is not None and num_workers == 0:
        raise ValueError(f"multiprocessing_context can only be used with multi-process loading (num_workers > 0), "
                         f"but got num_workers={num_workers}")
    if isinstance(multiprocessing_context, str):
        methods = multiprocessing.get_all_start_methods()
        if multiprocessing_context not in methods:
            raise ValueError(f"multiprocessing_context must be one of {methods} or a multiprocessing context, "
                             f"got {multiprocessing_context!r}")
        multiprocessing_context = multiprocessing.get_context(multiprocessing_context)
    elif multiprocessing_context is not None and not isinstance(multiprocessing_context,
                                                                multiprocessing.context.BaseContext):
        raise ValueError(f"multiprocessing_context must be a start method name or a multiprocessing context, "
                         f"got {multiprocessing_context!r}")
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) or not timeout >= 0:
        raise ValueError(f"timeout must be a number of seconds >= 0, got {timeout!r}")
    if worker_init_fn is not None and not callable(worker_init_fn):
        raise ValueError(f"worker_init_fn must be callable, got {worker_init_fn!r}")
    if in_order is not True:
        raise ValueError(f"StreamLoader delivers batches in order (a resume position counts them); "
                         f"in_order must be True, got {in_order!r}")
    return ReadWorkerOptions(persistent_workers is not False, multiprocessing_context, timeout, worker_init_fn)
