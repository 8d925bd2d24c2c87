"""The contract between the loader and its plug-in stages.

The loader runs three optional stages on every batch, where the batch lives (the
main process, or the reading workers when that is the CPU): ``balance=`` adds
synthetic rows, ``augment=`` transforms images, ``mixup=`` turns labels into soft
targets. Each is checked against a protocol below when the loader is built, so a
wrong object fails at once with its name, not on the first batch.

Every stage is a :class:`SeededStage`: it has a ``seed`` (``None`` lets the loader
derive one), ``manual_seed`` and ``state_dict``/``load_state_dict``. A
:class:`Balancer` is also *bound* to the loader before the first batch, through a
:class:`BindContext` that gives it exactly what it may use: the class counts, the
rank, a :class:`RowSource` to read specific samples and a :class:`StatsSink` to
count what it could not do. It never sees the loader itself.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from .flight import BatchInFlight

Row = tuple[str, str, int, torch.Tensor]        # shard url, sample key, label, CHW uint8 row on the device


@runtime_checkable
class SeededStage(Protocol):
    seed: int | None

    def manual_seed(self, seed: int) -> None: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@runtime_checkable
class Augmenter(SeededStage, Protocol):
    """``augment=``: images (uint8 or float NCHW) → images of the same dtype, shape and device."""

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class Mixer(SeededStage, Protocol):
    """``mixup=``: (images, int labels) → (images, soft targets (N, num_classes))."""

    def __call__(self, images: torch.Tensor, labels: torch.Tensor,
                 num_classes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]: ...


class RowSource(Protocol):
    """Reads chosen samples out of the shards, decoded, as rows on the loader's device."""

    def labels(self, wanted: Callable[[int], bool]) -> Iterator[tuple[str, str, int]]:
        """``(url, key, label)`` in index order for labels satisfying ``wanted``; nothing is decoded."""

    def scan(self, wanted: Callable[[int], bool]) -> Iterator[Row]:
        """Samples in index order whose label satisfies ``wanted`` (bad samples passed over)."""

    def fetch(self, pairs: list[tuple[str, str]],
              transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
              missing: str = "raise") -> dict[tuple[str, str], torch.Tensor]:
        """``(url, key)`` pairs → rows; ``transform`` maps a stack of them (e.g. to features).
        ``missing="skip"`` leaves out pairs that cannot be read instead of raising."""


class StatsSink(Protocol):
    def count_skip(self, reason: str, n: int = 1, example: str | None = None) -> None: ...


@dataclass(frozen=True)
class BindContext:
    """What a balancer learns when it is bound to a loader."""
    class_counts: list[int] | None      # per class over the epoch, all ranks; None without an index
    num_classes: int
    world_size: int
    rank: int
    device: torch.device
    rows: RowSource
    stats: StatsSink
    augmented: bool                      # an augment= stage follows the balancer
    seed: int = 0                        # the balancer's base seed, the same on every rank
    class_names: list[str] | None = None  # the index's, for messages (None: ids only)


@runtime_checkable
class Balancer(SeededStage, Protocol):
    """``balance=``: adds synthetic rows so each epoch meets its class targets.

    Optional, to run in the loader's reading workers on a CPU device (see
    ``streamaug.loader.worker_stages``): ``worker_blocker(indexed) -> str | None`` (why
    it cannot, or ``None``), ``prepare()`` (called before the workers start) and
    ``count_into(stats)`` (the worker's own :class:`StatsSink`). A balancer without
    them stays in the main process.

    Optional, without an index: ``held_back_parts(like, max_rows)``. A balancer that has it
    is called with ``max_rows=`` (the batch size), grows a batch to at most that many rows,
    and hands the rest of what is due as parts of at most ``max_rows`` rows; one without it
    appends everything due to the batch it is given.
    """

    def bind(self, context: BindContext) -> None: ...

    def synthetic_counts(self) -> tuple[int, int]:
        """(synthetic rows on this rank per epoch, the most on any rank); (0, 0) when unknown."""

    def __call__(self, batch: BatchInFlight, n_synthetic: int | None) -> BatchInFlight: ...
