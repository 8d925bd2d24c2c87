"""Augment and mix in the reading workers, when the batch lives on the CPU anyway.

With ``device="cpu"`` the plug-in stages would run in the main process on one thread
(``core/threads.py``: the other cores belong to the workers and the training step),
while the workers only read and decode. At 224² that made the main process the
bottleneck (issue #12). So when nothing needs the whole stream first, each worker
runs ``augment`` then ``mixup`` on the batches it cuts, and the main process only
formats them.

The result is the same, bit for bit: a worker reseeds its copy of each stage per batch
with the seed the main process would use, ``derive_seed(base, "batch", epoch, rank,
batch_id)``, so the batches do not depend on where the stages ran, for any number of
workers and across a resume (``tests/test_worker_augment.py``).

Where it applies (:func:`worker_side`): the device is the CPU, there are read workers,
images are decoded in the workers (``decode="cpu"``), no ``balance=`` (the balancer
adds rows that must be augmented too, after it saw the real ones), and the augmenter
is not a DALI ``Compose`` (DALI pipelines are not built in forked workers). The main
process's stage objects are then not called, so their ``last_params`` do not move.
``StreamLoader(augment_in_workers=False)`` keeps the stages in the main process.
"""
from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from streamaug.core.flight import BatchInFlight
from streamaug.core.seeding import derive_seed
from streamaug.core.threads import IntraOpThreads


def worker_side(requested: bool | None, device: torch.device, read_workers: int, decode: str,
                balance, augment, mixup) -> bool:
    """Whether ``augment``/``mixup`` run in the workers. ``requested``: ``None`` (wherever it
    applies), ``False`` (never) or ``True`` (required: an error names what prevents it)."""
    if requested not in (None, True, False):
        raise ValueError(f"augment_in_workers must be None, True or False, got {requested!r}")
    reasons = []
    if augment is None and mixup is None:
        reasons.append("there is no augment= or mixup=")
    if device.type != "cpu":
        reasons.append(f"the device is {device} (the stages run where the batch lives)")
    if read_workers == 0:
        reasons.append("num_workers=0")
    if decode != "cpu":
        reasons.append(f"decode={decode!r} decodes in the main process")
    if balance is not None:
        reasons.append("balance= must see the real rows before they are augmented")
    if getattr(augment, "backend", None) == "dali":
        reasons.append("a DALI Compose is not built in forked workers")
    if requested and reasons:
        raise ValueError("augment_in_workers=True, but " + "; ".join(reasons))
    return requested is not False and not reasons


@dataclass
class WorkerAugment:
    """The per-batch stages a worker runs, with the seeds the main process would use."""
    augment: object | None
    mixup: object | None
    seeds: dict[str, int]            # base seed per stage name, as in ``StreamLoader._plugin_seeds``
    rank: int
    num_classes: int | None

    def __call__(self, batches: Iterator[BatchInFlight], epoch: int) -> Iterator[BatchInFlight]:
        if getattr(self.augment, "backend", None) == "opencv" and "cv2" not in sys.modules:
            import cv2  # noqa: F401  (imported before the thread scope, so the scope limits its pool)
        one_thread = IntraOpThreads(1)       # the workers are the parallelism
        for batch in batches:
            if len(batch) and batch.images.numel():
                with one_thread:
                    self.apply(batch, epoch)
            yield batch

    def apply(self, batch: BatchInFlight, epoch: int) -> None:
        for name in ("augment", "mixup"):
            stage = getattr(self, name)
            if stage is not None:
                stage.manual_seed(derive_seed(self.seeds[name], "batch", epoch, self.rank, batch.batch_id))
        images = batch.images
        if self.augment is not None:
            images = self.augment(images)
        if self.mixup is not None:
            images, batch.targets = self.mixup(images, batch.labels, num_classes=self.num_classes)
        batch.images, batch.stages_done = images, True
