"""The parts of ``torch.utils.data.DataLoader``'s surface that frameworks look for.

Lightning calls ``loader.sampler.set_epoch(epoch)`` (and ``batch_sampler``'s) at
each epoch; accelerate's ``skip_first_batches`` rebuilds a loader as
``DataLoader(loader.dataset, batch_sampler=SkipBatchSampler(loader.batch_sampler, n),
collate_fn=loader.collate_fn, num_workers=loader.num_workers, ...)``. A
:class:`StreamLoader` yields finished batches, so its surface describes *a loader
over a dataset of batches*:

* ``dataset``: :class:`BatchDataset`, map-style: item ``j`` = batch ``j`` of the current
  epoch (``j`` below ``len(loader)``). Asking for ``j`` ahead of the current position
  starts the pass there without decoding what it passes over. Its ``len`` is the number
  of samples in the shards, as ``len(DataLoader.dataset)`` is the dataset's size:
  training scripts divide sums of losses and counts of correct answers by it.
* ``sampler``: :class:`EpochSampler`, the batch indices of one epoch in order;
  ``set_epoch`` is the loader's. Unshuffled, it is a :class:`SequentialEpochSampler`, a
  ``SequentialSampler``, which is how Lightning tells a loader that does not shuffle
  (``Trainer(overfit_batches=N)`` took it for a shuffling one and failed rebuilding it).
* ``batch_sampler``: :class:`BatchIndexSampler`, ``[j]`` per batch.
* ``collate_fn``: :func:`first_item` (a batch of one batch is that batch).

The loader makes a new view each time one is asked for and keeps none, so no
reference cycle delays freeing the loader (and stopping its workers).
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from torch.utils.data import Dataset, Sampler, SequentialSampler, get_worker_info

if TYPE_CHECKING:
    from .stream_loader import StreamLoader


def first_item(items: list):
    """``collate_fn`` of the batch view: the dataset's items are whole batches."""
    if len(items) != 1:
        raise ValueError(f"StreamLoader.dataset items are whole batches; collate one at a time, got {len(items)}")
    return items[0]


class BatchDataset(Dataset):
    """Map-style view of one rank's epoch: item ``j`` is batch ``j``; ``len`` is the number of
    samples in the shards (all ranks, from the index), what ``len(DataLoader.dataset)`` gives."""

    def __init__(self, loader: "StreamLoader"):
        self.loader = loader
        self._pass: Iterator | None = None
        self._next = 0
        self._epoch = None

    def __len__(self) -> int:
        if self.loader.index is None:
            raise TypeError("StreamLoader(index=False).dataset has no len(): the number of samples is unknown")
        return self.loader.index.total

    def __getitem__(self, j: int):
        worker = get_worker_info()
        if worker is not None:
            raise RuntimeError(
                f"StreamLoader.dataset was read in a DataLoader worker process ({worker.num_workers} of them): a "
                "DataLoader rebuilt over it must have num_workers=0, as StreamLoader.num_workers reports. The "
                "StreamLoader reads and decodes in reading workers of its own (StreamLoader(num_workers=...)); in a "
                "worker's copy, its position and state_dict() would not reach the loader in this process")
        n = len(self.loader)
        if not isinstance(j, int) or not 0 <= j < n:
            raise IndexError(f"batch index {j!r} out of range for an epoch of {n} batches (StreamLoader.dataset "
                             "holds batches, not samples: len() counts samples; to rebuild a DataLoader over it, "
                             "pass batch_sampler=loader.batch_sampler and collate_fn=loader.collate_fn)")
        if self._pass is None or j != self._next or self._epoch != self.loader.epoch:
            self._epoch = self.loader.epoch
            self._pass = self.loader.iter_from(j)
        self._next = j + 1
        return next(self._pass)           # the last batch advances the epoch, as in a full loop

    def __getstate__(self):
        raise TypeError("StreamLoader.dataset is a view of a live loader and cannot be pickled; "
                        "it is meant for DataLoader(num_workers=0) (StreamLoader.num_workers reports 0)")


class EpochSampler(Sampler):
    """Batch indices of one epoch, in order; ``set_epoch`` chooses the loader's epoch."""

    def __init__(self, loader: "StreamLoader"):
        self.loader = loader

    def __iter__(self) -> Iterator[int]:
        return iter(range(len(self.loader)))

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)


class SequentialEpochSampler(EpochSampler, SequentialSampler):
    """An unshuffled loader's :class:`EpochSampler` (see the module docstring)."""


def epoch_sampler(loader: "StreamLoader") -> EpochSampler:
    return EpochSampler(loader) if loader.shuffle else SequentialEpochSampler(loader)


class BatchIndexSampler(Sampler):
    """``[j]`` for each batch ``j`` of the epoch (a batch sampler over :class:`BatchDataset`)."""

    def __init__(self, sampler: EpochSampler):
        self.sampler = sampler

    def __iter__(self) -> Iterator[list[int]]:
        return ([j] for j in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


class DataLoaderSurface:
    """The attributes a ``DataLoader`` has and frameworks read, as :class:`StreamLoader` has
    them (see the module docstring); a mixin of ``StreamLoader``."""

    @property
    def dataset(self) -> BatchDataset:
        return BatchDataset(self)

    @property
    def sampler(self) -> EpochSampler:
        return epoch_sampler(self)

    @property
    def batch_sampler(self) -> BatchIndexSampler:
        return BatchIndexSampler(epoch_sampler(self))

    def __getitem__(self, j):
        raise TypeError(f"a StreamLoader is a loader, not a dataset (asked for item {j!r}): iterate it, or rebuild "
                        f"one as DataLoader(loader.dataset, batch_sampler=loader.batch_sampler, "
                        f"collate_fn=loader.collate_fn); loader.dataset's item j is batch j")

    collate_fn = staticmethod(first_item)
    num_workers = 0                 # see StreamLoader's docs: the caller's loop starts no workers
    prefetch_factor = None
    pin_memory = False
    persistent_workers = False
    timeout = 0
    worker_init_fn = None
    multiprocessing_context = None
    generator = None
    pin_memory_device = ""
