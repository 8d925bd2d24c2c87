"""Balance, augment and mix in the reading workers, when the batch lives on the CPU anyway.

With ``device="cpu"`` the plug-in stages would run in the main process on one thread
(``core/threads.py``: the other cores belong to the workers and the training step),
while the workers only read and decode. At 224² that made the main process the
bottleneck (issue #12). So where a batch's stages depend on nothing but the batch and
its position, each worker runs ``balance`` → ``augment`` → ``mixup`` on the batches it
cuts, and the main process only counts and formats them.

The result is the same, bit for bit: a worker reseeds its copy of each stage per batch
with the seed the main process would use, ``derive_seed(base, "batch", epoch, rank,
batch_id)``, and gives the balancer the batch's planned synthetic slots (its count and
where they start), so the batches do not depend on where the stages ran, for any
number of workers and across a resume (``tests/test_worker_stages.py``).

The balancer: with an index, a :class:`~streamaug.samplers.ClassBalancer`'s reservoirs
are filled once before the first batch and never change, so the loader fills them (and
builds the synthesizer's neighbour tables: :meth:`ClassBalancer.prepare`) before it
starts the workers, which then share them copy-on-write. What it could not do (e.g. a
class with no sample: ``balance_shortfall``) is counted in the worker and shipped with
the batch, as read errors are. A balancer runs in the workers only if it says it can
(it has ``worker_blocker``, ``prepare`` and ``count_into``, and ``worker_blocker(indexed)``
returns ``None``): not without an index (its reservoirs
are fed by the stream), not with ``stratified=True`` (each batch's slots depend on the
batches before it) and not with ``feature_fn=``.

Where it applies (:func:`worker_side`): the device is the CPU, there are read workers,
images are decoded in the workers (``decode="cpu"``), the balancer (if any) can, and
the augmenter is not a DALI ``Compose`` (DALI pipelines are not built in forked
workers). The main process's stage objects are then not called, so their
``last_params`` do not move. ``StreamLoader(stages_in_workers=False)`` keeps the
stages in the main process.
"""
from __future__ import annotations

import contextlib
import itertools
import pickle
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from streamaug.core.batch_memory import shared_outputs
from streamaug.core.flight import BatchInFlight
from streamaug.core.row_blend import opencv_blend
from streamaug.core.seeding import derive_seed
from streamaug.core.threads import IntraOpThreads

from .epoch_plan import EpochPlan
from .errors import LoaderStats, add_counts

STAGES = ("balance", "augment", "mixup")        # the order they run in, here and in the main process
WORKER_BALANCER = ("worker_blocker", "prepare", "count_into")   # what a balancer needs to run in the workers


def unpicklable(start_method: str, **stages) -> list[str]:
    """Why stages cannot be sent to workers started by ``start_method``: one line per stage
    that does not pickle."""
    reasons = []
    for name, stage in stages.items():
        if stage is None:
            continue
        try:
            pickle.dumps(stage)
        except Exception as e:            # (PicklingError, AttributeError, TypeError: what pickle raises varies)
            reasons.append(f"{name}= cannot be pickled for {start_method}-started workers ({type(e).__name__}: "
                           f"{e}); define its functions at module level, not as lambdas or local functions")
    return reasons


def check_stages_still_picklable(start_method: str, **stages) -> None:
    """The stages were placed in the workers when the loader was built; raise if the workers
    now start by ``start_method`` (``set_start_method`` called since) and a stage does not
    pickle, rather than fail inside DataLoader with a bare ``PicklingError``."""
    if start_method == "fork":
        return
    reasons = unpicklable(start_method, **stages)
    if reasons:
        raise RuntimeError(f"the reading workers now start by {start_method}, which pickles the stages placed in "
                           "them when the StreamLoader was built, but " + "; ".join(reasons) + ". Set the start "
                           "method before building the loader (it then keeps such stages in the main process), "
                           f"or pass multiprocessing_context={start_method!r} or stages_in_workers=False to it")


def stages_in_workers_argument(stages_in_workers: bool | None, augment_in_workers: bool | None) -> bool | None:
    """``stages_in_workers=``, or its deprecated name ``augment_in_workers=`` (with a warning)."""
    if augment_in_workers is None:
        return stages_in_workers
    if augment_in_workers not in (True, False):
        raise ValueError(f"augment_in_workers (deprecated: stages_in_workers) must be None, True or False, "
                         f"got {augment_in_workers!r}")
    warnings.warn("StreamLoader(augment_in_workers=) is deprecated; use stages_in_workers= (it also "
                  "covers balance=)", DeprecationWarning, stacklevel=3)
    if stages_in_workers is not None and stages_in_workers != augment_in_workers:
        raise ValueError(f"stages_in_workers={stages_in_workers!r} and its deprecated name "
                         f"augment_in_workers={augment_in_workers!r} disagree")
    return augment_in_workers


def worker_side(requested: bool | None, device: torch.device, read_workers: int, decode: str,
                balance, augment, mixup, indexed: bool, start_method: str = "fork") -> bool:
    """Whether the plug-in stages run in the workers. ``requested``: ``None`` (wherever it
    applies), ``False`` (never) or ``True`` (required: an error names what prevents it).
    Workers started by ``spawn`` or ``forkserver`` get the stages pickled: a stage that
    cannot be (a lambda ``sampling_strategy``) keeps them in the main process (it failed
    with a ``PicklingError`` at the first batch)."""
    if requested not in (None, True, False):
        raise ValueError(f"stages_in_workers must be None, True or False, got {requested!r}")
    reasons = []
    if balance is None and augment is None and mixup is None:
        reasons.append("there is no balance=, augment= or mixup=")
    if device.type != "cpu":
        reasons.append(f"the device is {device} (the stages run where the batch lives)")
    if read_workers == 0:
        reasons.append("num_workers=0")
    if decode != "cpu":
        reasons.append(f"decode={decode!r} decodes in the main process")
    if balance is not None:
        missing = [m for m in WORKER_BALANCER if not callable(getattr(balance, m, None))]
        reason = (f"balance= ({type(balance).__name__}) has no {'/'.join(missing)}() (see Balancer in "
                  "streamaug.core.plugin)" if missing else balance.worker_blocker(indexed))
        if reason:
            reasons.append(reason)
    if getattr(augment, "backend", None) == "dali":
        reasons.append("a DALI Compose is not built in forked workers")
    if not reasons and start_method != "fork":
        reasons += unpicklable(start_method, balance=balance, augment=augment, mixup=mixup)
    if requested and reasons:
        raise ValueError("stages_in_workers=True, but " + "; ".join(reasons))
    return requested is not False and not reasons


@dataclass
class WorkerStages:
    """The per-batch stages a worker runs, with the seeds and slots the main process would use."""
    balance: object | None
    augment: object | None
    mixup: object | None
    seeds: dict[str, int]            # base seed per stage name, as in ``StreamLoader._plugin_seeds``
    rank: int
    num_classes: int | None
    counts: LoaderStats = field(default_factory=LoaderStats)   # the balancer's, shipped with each batch

    def __call__(self, batches: Iterator[BatchInFlight], epoch: int, plan: EpochPlan | None) -> Iterator[BatchInFlight]:
        uses_opencv = getattr(self.augment, "backend", None) in ("opencv", "auto") or self.mixup is not None \
            or self.balance is not None                  # the OpenCV backend; uint8 MixUp and SMOTE rows
        if uses_opencv and "cv2" not in sys.modules:     # imported before the thread scope, so the
            opencv_blend()                               # scope limits its pool (where OpenCV imports)
        offsets = None
        if self.balance is not None:
            self.balance.count_into(self.counts)
            offsets = [0, *itertools.accumulate(plan.synthetic)]
        one_thread = IntraOpThreads(1)       # the workers are the parallelism
        for batch in batches:
            with one_thread:
                batch = self.apply(batch, epoch, plan, offsets)
            yield batch

    @staticmethod
    def outputs(final: bool):
        """The stage that makes the batch this worker ships (mixup, else augment) allocates it
        in shared memory (``core.batch_memory``): the result queue then sends it without a copy."""
        return shared_outputs() if final else contextlib.nullcontext()

    def apply(self, batch: BatchInFlight, epoch: int, plan: EpochPlan | None,
              offsets: list[int] | None) -> BatchInFlight:
        for name in STAGES:
            stage = getattr(self, name)
            if stage is not None:
                stage.manual_seed(derive_seed(self.seeds[name], "batch", epoch, self.rank, batch.batch_id))
        if self.balance is not None:
            batch.slot_offset = offsets[batch.batch_id]
            batch = self.balance(batch, plan.synthetic[batch.batch_id])
            add_counts(batch.stats, self.counts.take())
        if len(batch) and batch.images.numel():
            images = batch.images
            if self.augment is not None:
                with self.outputs(self.mixup is None):
                    images = self.augment(images)
            if self.mixup is not None:
                with self.outputs(True):
                    images, batch.targets = self.mixup(images, batch.labels, num_classes=self.num_classes)
            batch.images = images
        batch.stages_done = True
        return batch
