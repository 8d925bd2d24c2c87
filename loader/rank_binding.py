"""Binding a :class:`~streamaug.loader.StreamLoader` to its rank: world size and rank are read
from ``torch.distributed`` (``world_size=``/``rank=`` win) when a pass starts, ``len()`` is asked
or a state is saved or loaded, so a loader built before ``init_process_group`` (as Lightning and
accelerate scripts build theirs) still shards by rank. On a change, the reading workers stop
(they hold the old plan), the balancer is bound to the rank, and the rank's stream is planned
again. Whether the ranks agree on the plan is checked at the pass (``rank_agreement``).
"""
from __future__ import annotations

import warnings

import torch.distributed as dist

from streamaug.core.plugin import BindContext

from .epoch_plan import PlanSpec
from .pass_position import caller_stacklevel
from .worker_stages import WorkerStages
from .worker_stream import WorkerStream


def distributed() -> tuple[int, int]:
    """``(world size, rank)`` of the default process group; ``(1, 0)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def bind_topology(loader) -> None:
    """Read ``loader``'s world size and rank (its overrides win); on a change, re-plan and rebind."""
    ws, rk = distributed()
    ws = ws if loader._world_override is None else loader._world_override
    rk = rk if loader._rank_override is None else loader._rank_override
    if (ws, rk) == loader._topology:
        return
    if not 0 <= rk < ws:
        raise ValueError(f"rank must be in [0, world_size={ws}), got {rk}")
    if ws > 1 and loader.index is None:
        warnings.warn(f"StreamLoader without an index on {ws} ranks: each rank streams its own shards and "
                      "the ranks' epochs can differ in length, which stalls or fails a DDP job at the "
                      "epoch's end; write an index (streamaug index) for equal-length epochs",
                      RuntimeWarning, stacklevel=caller_stacklevel())
    loader.close()                      # persistent workers hold the old plan
    loader.world_size, loader.rank = ws, rk
    if loader.balance is not None:
        loader.balance.bind(BindContext(
            class_counts=loader.index.class_counts if loader.index is not None else None,
            num_classes=loader.num_classes, world_size=ws, rank=rk, device=loader.device,
            rows=loader._rows, stats=loader.stats, augmented=loader.augment is not None,
            seed=loader._plugin_seeds["balance"],
            class_names=loader.index.class_names if loader.index is not None else None))
    stages = WorkerStages(loader.balance, loader.augment, loader.mixup, loader._plugin_seeds, rk,
                          loader.num_classes) if loader.stages_in_workers else None
    if loader.index is None:
        loader._stream = WorkerStream(loader._settings, urls=loader.urls, batch_size=loader.batch_size,
                                      world_size=ws, rank=rk, stages=stages,
                                      drop_last=loader.drop_last and not loader._rebatches)   # (else the re-cut drops)
    else:
        synthetic, most = loader.balance.synthetic_counts() if loader.balance is not None else (0, 0)
        spec = PlanSpec(loader.index, loader.seed, loader.batch_size, ws, rk, loader.read_workers,
                        loader.drop_last, bool(loader.shuffle), synthetic, most)
        loader._stream = WorkerStream(loader._settings, spec=spec, batch_size=loader.batch_size, stages=stages)
    if loader.device_decoder is not None:
        loader.device_decoder.donors = loader._stream.donors      # pads a batch none of whose images decodes
    loader._loaded.topology_changed(loader)          # (a state loaded before the process group came up)
    loader._topology = (ws, rk)                      # (after: a state that failed the check is checked again)
