"""What a saved loader state holds, and the check that it belongs to this loader.

A state is a *position*, ``(epoch, batches done)``: the epoch plan, every
worker's stream and every plug-in's randomness are recomputed from it (plug-ins
are reseeded per batch from ``(seed, epoch, rank, batch)``), so the same state
resumes any rank. Lightning and accelerate save rank 0's loader state and load
it on every rank; that is supported.

What the position means depends on the data and the configuration, so the state
carries a *fingerprint* of both, and :func:`check_fingerprint` refuses a state
from a loader that would read it differently, naming each field that differs.
Formats follow torchdata's ``StatefulDataLoader``: ``load_state_dict({})`` is a
no-op, and a state taken after an epoch's last batch resumes at the next epoch.

Without an index, a balancer in the main process has state of its own (the counts
it has seen, its reservoirs), and the balanced rows are cut again into batches
(``open_pass``), so a cut depends on every batch before it. Part-way through an
epoch the state then holds the balancer's state and the counts *at the epoch's
start* (``replays_epoch``), and the resumed pass replays the epoch from there.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import warnings

from streamaug.core.shard_names import shard_file_name
from streamaug.samplers.stable_name import plain_repr

from .epoch_plan import slices_rotate

FORMAT = "streamaug.StreamLoader/2"


def _digest(obj) -> str:
    return hashlib.blake2b(json.dumps(obj, sort_keys=True, default=str).encode(), digest_size=8).hexdigest()


def data_fingerprint(index, urls: list[str]) -> str:
    """Hash of what the shards are: per shard its file name, sample count and class counts
    (with an index), else the shard file names. Paths are left out, so a dataset that
    moved (another machine, another mount) still matches."""
    if index is None:
        return f"{len(urls)} shards, no index, names #{_digest([shard_file_name(u) for u in urls])}"
    return (f"{len(index.shards)} shards, {index.total} samples, names and counts "
            f"#{_digest([[shard_file_name(s.url), s.count, list(s.class_counts)] for s in index.shards])}")


def plugin_details(loader) -> str:
    """What the augment and mixup reprs leave out and their batches depend on: the stage's
    seed, each op's own seed, a mix op's class count and class counts (a digest)."""
    details = {}
    for name in ("augment", "mixup"):
        stage = getattr(loader, name)
        if stage is not None:
            counts = getattr(stage, "class_counts", None)
            details[name] = {"seed": getattr(stage, "seed", None),
                             "op_seeds": [getattr(op, "seed", None) for op in getattr(stage, "ops", ())],
                             "num_classes": getattr(stage, "num_classes", None),
                             "class_counts": None if counts is None else [float(c) for c in counts]}
    return f"#{_digest(details)}"


# fingerprint fields a state saved before they existed lacks: the value every loader then had,
# or None where there was no such value (that field is then not compared)
ADDED_LATER = {"plugin_details": None, "jpeg_draft": True, "balance_targets": None, "rank_slices": "fixed"}


def balance_targets(balancer) -> list[list[int]] | str | None:
    """The synthetic samples per class a fitted balancer plans for an epoch (all ranks), with an
    index: what its ``sampling_strategy`` resolved to. A callable strategy's digest covers its
    code, not what it reads (a global changed between save and resume was accepted, and the
    resumed epoch matched neither plan). ``[[class, n], ...]`` for up to 16 classes, else their
    number, total and digest, so a state stays small however many classes there are."""
    if balancer is None or getattr(balancer, "online_", True):
        return None
    pairs = [[int(c), int(n)] for c, n in sorted(balancer.targets_.items())]
    if len(pairs) <= 16:
        return pairs
    return f"{len(pairs)} classes, {sum(n for _, n in pairs)} synthetic samples #{_digest(pairs)}"


def fingerprint(loader) -> dict:
    """Everything a position depends on (not the rank: a state resumes any rank). The plug-in
    details are those the loader was built with (a plug-in's ``manual_seed`` may set its
    ``seed`` to each batch's)."""
    # (addresses left out: a plug-in without a __repr__ of its own was refused in every new process)
    plug = {name: plain_repr(getattr(loader, name)) for name in ("balance", "augment", "mixup")}
    details = getattr(loader, "plugin_details", None) or plugin_details(loader)
    return {"plugin_details": details, "shards": data_fingerprint(loader.index, loader.urls), "seed": loader.seed,
            "batch_size": loader.batch_size, "read_workers": loader.read_workers, "shuffle": loader.shuffle,
            "drop_last": loader.drop_last, "world_size": loader.world_size,
            "resize": list(loader.decoder.resize) if loader.decoder.resize else None,
            "jpeg_draft": loader.decoder.jpeg_draft, "decode": loader.decode,
            "balance_targets": balance_targets(loader.balance),
            "rank_slices": "rotated" if loader.index is not None and slices_rotate(loader.world_size, loader.shuffle)
            else "fixed", **plug}


def indexed(print_: dict) -> bool:
    """Whether a fingerprint is of a loader with an index (see ``data_fingerprint``)."""
    return "no index" not in str(print_.get("shards"))


def workers_free(print_: dict) -> bool:
    """Whether the batches of a loader with this fingerprint are the same for any ``num_workers``:
    with an index and no shuffling, batches come in dataset order, and every plug-in draws from
    (seed, epoch, rank, batch), so a state resumes across a change of workers (red team s40: it
    was refused, saying the position would not mean the same batches)."""
    return not print_.get("shuffle") and indexed(print_)


def check_fingerprint(saved: dict, current: dict, ignore=(), note: str = "") -> None:
    """Refuse ``saved`` where it differs from ``current`` outside ``ignore``; ``note`` is added
    where the world size differs."""
    shown = {"read_workers": "num_workers"}        # the constructor's name for it
    saved = {**{k: v for k, v in ADDED_LATER.items() if v is not None}, **saved}
    diffs = [f"{shown.get(k, k)}: saved {saved.get(k)!r}, this loader {current.get(k)!r}"
             for k in sorted(set(saved) | set(current))
             if saved.get(k) != current.get(k) and not (k in ADDED_LATER and k not in saved) and k not in ignore]
    if diffs:
        world = saved.get("world_size") != current.get("world_size") and "world_size" not in ignore
        raise ValueError("this state was saved by a loader configured differently, and its position would not "
                         "mean the same batches here: " + "; ".join(diffs) + (note if world else ""))


def check_format(sd: dict) -> None:
    if not isinstance(sd, dict):
        raise TypeError(f"a loader state is a dict, got {type(sd).__name__}")
    if sd.get("format") != FORMAT:
        found = sd.get("format", "no 'format' field (saved before streamaug 0.2?)")
        raise ValueError(f"not a {FORMAT} state: {found}; fields {sorted(sd)}")
    for name in ("epoch", "batches_done", "rank"):    # (an edited or hand-made state: named, not a TypeError later)
        value = sd.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"loader state field {name!r} must be an int >= 0, got {value!r}")
    for name in ("explicit_epoch", "epoch_ended"):
        if not isinstance(sd.get(name, False), bool):
            raise ValueError(f"loader state field {name!r} must be true or false, got {sd.get(name)!r}")
    value = sd.get("next_epoch")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ValueError(f"loader state field 'next_epoch' must be an int >= 0 or null, got {value!r}")
    for name in ("fingerprint", "stats"):
        if not isinstance(sd.get(name), dict):
            raise ValueError(f"loader state field {name!r} must be a dict, got {type(sd.get(name)).__name__}")


def position_fields(pos) -> dict:
    """The position part of a state (``restore_position`` reads it back)."""
    return {"epoch": pos.epoch, "batches_done": pos.batches_done, "explicit_epoch": pos.explicit_epoch,
            "epoch_ended": pos.ended, "next_epoch": pos.next_epoch}


def save_state(loader) -> dict:
    pos = loader.position
    sd = {"format": FORMAT, **position_fields(pos),
          "rank": loader.rank,
          "fingerprint": fingerprint(loader),
          "stats": loader.stats.as_dict()}
    if loader.balance is not None:
        sd["balance"] = loader.balance.state_dict()   # {} with an index: the position is enough
        sd["balance_filled"] = bool(getattr(loader.balance, "_filled", False))   # its skips are in "stats"
    if loader._rebatches:                            # noqa: SLF001
        start = loader._epoch_start                 # noqa: SLF001 - a pass begun and not over: replay it
        replays = start is not None and pos.batches_done > 0 and not pos.ended
        if replays:
            sd["balance"], sd["stats"] = copy.deepcopy(start)
        sd["replays_epoch"] = replays
    return sd


def restore_position(loader, sd: dict) -> None:
    loader.position.restore(sd["epoch"], sd["batches_done"], sd["explicit_epoch"], sd.get("epoch_ended", False),
                            sd.get("next_epoch"))


def restore_state(loader, sd: dict, position: bool = True) -> None:
    """Check ``sd`` against ``loader`` and set its position (unless ``position=False``: set
    already); the next pass resumes there. Counts in ``stats`` are restored only on the rank
    that saved them."""
    check_format(sd)
    at_boundary = sd["batches_done"] == 0 or sd.get("epoch_ended", False)
    current = fingerprint(loader)
    # (the ranks' slices moved in a later version: a state at an epoch's start means the same either way)
    ignore = ("rank_slices",) if at_boundary else ()
    if at_boundary and not sd.get("balance"):
        # an epoch's start or end is the same place in any world (nothing of the epoch is read
        # yet, or all of it), so another number of ranks resumes it; part-way, each rank's share
        # of the epoch read so far depends on the world size. (A balancer keeping per-rank state
        # here, stratified or without an index, holds what this rank's slice showed.)
        ignore += ("world_size",)
    if workers_free(sd["fingerprint"]) and workers_free(current):
        ignore += ("read_workers",)
    note = (". A state saved at an epoch's start or end resumes on another number of ranks; one saved part-way "
            "does not, as each rank's share of what was read depends on it") if not sd.get("balance") else (
            ". This balancer's state (stratified=True, or without an index) is the saving rank's, so it resumes "
            "only the same ranks")
    check_fingerprint(sd["fingerprint"], current, ignore=ignore, note=note)
    replays = bool(sd.get("replays_epoch", False))
    if loader._rebatches and sd["batches_done"] > 0 and "replays_epoch" not in sd:     # noqa: SLF001
        warnings.warn("this state was saved by an earlier streamaug, which cut balanced batches without an "
                      "index differently; if it was saved part-way through an epoch, the resume replays the "
                      "epoch from the balancer's saved state, and the batches after the resume point differ "
                      "from an unbroken run's", RuntimeWarning, stacklevel=3)
        replays = True
    loader._epoch_start = copy.deepcopy((sd.get("balance", {}), sd["stats"])) if replays else None   # noqa: SLF001
    if loader.balance is not None:
        loader.balance.load_state_dict(sd.get("balance", {}))
    if position:
        restore_position(loader, sd)
    loader.stats.__init__()                   # in place: a bound balancer counts into this object
    restored = sd["rank"] == loader.rank
    if restored:
        loader.stats.merge(sd["stats"])
        loader.stats.real, loader.stats.synthetic = sd["stats"]["real"], sd["stats"]["synthetic"]
    if hasattr(loader.balance, "restore_fill_counts"):
        loader.balance.restore_fill_counts(restored and sd.get("balance_filled", False), loader.stats)


class LoadedState:
    """The state ``load_state_dict`` took, kept until a pass starts from it.

    If world size and rank change before then (the process group comes up after the load,
    as in a ``torchrun`` script that restores before ``init_process_group``), the state is
    checked again against them, and the balancer's part and the counts restored into the
    re-planned loader: before, it was checked against the single-process world it was loaded
    in, so a state of another world size was taken and a correct one refused. A state whose
    world size is the launcher's ``WORLD_SIZE``, loaded while no process group exists yet, is
    *held*: its position is set at once (it means the same in any world, and a later
    ``set_epoch`` acts on it as on any resume point), the rest when the pass starts. A state
    that fails the check stays, and fails it again, until another is loaded."""

    def __init__(self):
        self.sd: dict | None = None
        self.held = False                 # checked against no world yet (see awaits_process_group)

    @staticmethod
    def awaits_process_group(loader, sd: dict) -> bool:
        import torch.distributed as dist
        launched = os.environ.get("WORLD_SIZE", "1")
        if loader._world_override is not None or (dist.is_available() and dist.is_initialized()):   # noqa: SLF001
            return False
        saved = sd.get("fingerprint", {}).get("world_size") if isinstance(sd, dict) else None
        return launched.isdigit() and int(launched) > 1 and saved == int(launched) != loader.world_size

    def clear(self) -> None:
        self.sd, self.held = None, False

    def load(self, loader, sd: dict) -> None:
        self.clear()
        if self.awaits_process_group(loader, sd):
            check_format(sd)
            restore_position(loader, sd)
            self.sd, self.held = copy.deepcopy(sd), True
            return
        restore_state(loader, sd)
        self.sd = copy.deepcopy(sd)

    def topology_changed(self, loader) -> None:
        """World size or rank changed: a state not yet started from is checked again (it raises
        here, and at every later check, if it does not belong to the new world)."""
        if self.sd is not None and (self.held or loader.position.resume_pending):
            self._recheck(loader)

    def pass_starts(self, loader) -> None:
        """A held state is checked now, against the world the pass runs in; then it is used up."""
        if self.held:
            self._recheck(loader)
        self.clear()

    def saved(self, loader) -> dict | None:
        """What ``state_dict()`` hands back while a state is held: that state, at the position
        the loader has now (``set_epoch`` may have moved it)."""
        if not self.held:
            return None
        return {**copy.deepcopy(self.sd), **position_fields(loader.position)}

    def _recheck(self, loader) -> None:
        restore_state(loader, self.sd, position=False)     # raises, keeping the state, if it does not fit
        self.held = False
