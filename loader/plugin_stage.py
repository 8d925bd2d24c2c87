"""The main process's per-batch stages: balance → augment → mixup → output format.

They run on the device, on whole batches, each plug-in reseeded for every batch from
``(base seed, epoch, rank, batch)`` (so a loader's state is only its position). Counting
and planning use host copies of labels and masks, so nothing here waits for the device.
When the stages already ran in the reading worker (``worker_stages``), only the
counts and the output format are left.
"""
from __future__ import annotations

import weakref

from streamaug.core.flight import BatchInFlight
from streamaug.core.plugin import Augmenter, Balancer, Mixer
from streamaug.core.seeding import derive_seed
from streamaug.core.transfer import to_device
from streamaug.ops.compose import Compose

from .batch import Batch
from .epoch_plan import EpochPlan


PLUGINS = {"balance": Balancer, "augment": Augmenter, "mixup": Mixer}


def plugin_seeds(stages: dict, seed: int, num_classes: int | None) -> dict[str, int]:
    """Each given stage checked against its protocol (and its kind), and its base seed: its own,
    else derived from the loader's; the same on every rank (per batch it is mixed with
    ``(epoch, rank, batch)``)."""
    seeds = {}
    for name, protocol in PLUGINS.items():
        stage = stages.get(name)
        if stage is None:
            continue
        if not isinstance(stage, protocol):
            extra = ", bind, synthetic_counts" if name == "balance" else ""
            raise TypeError(f"{name}= must meet streamaug.core.plugin.{protocol.__name__} (seed, manual_seed, "
                            f"state_dict, load_state_dict, __call__{extra}), got {type(stage).__name__}"
                            + _what_to_pass(name, stage))
        check_plugin_kind(name, stage, num_classes)
        seeds[name] = stage.seed if stage.seed is not None else derive_seed(seed, name)
    return seeds


_BALANCER_OWNERS: dict[int, weakref.ref] = {}      # id(balancer) -> the loader built with it last


def claim_balancer(balancer, loader) -> None:
    """``loader`` was built with ``balancer``: it binds the balancer's reservoirs, slots and counts
    to itself (see :func:`check_balancer_owner`)."""
    key = id(balancer)
    _BALANCER_OWNERS[key] = weakref.ref(loader, lambda r, k=key: _BALANCER_OWNERS.get(k) is r and _BALANCER_OWNERS.pop(k))


def check_balancer_owner(loader) -> None:
    """A balancer given to a second loader is that loader's from then on; the first, still used,
    failed at its next batch with a count of slots that named no cause (red team s33). A loader
    built again under the same name, or one per fold, is fine: only the older one's use raises."""
    ref = _BALANCER_OWNERS.get(id(loader.balance))
    other = ref() if ref is not None else None
    if other is not None and other is not loader and getattr(other, "balance", None) is loader.balance:
        raise RuntimeError(f"balance={loader.balance!r} was given to another StreamLoader built after this one, "
                           "and is bound to that one now: a balancer holds its loader's reservoirs and slots. Give "
                           "each loader its own (build another, or copy.deepcopy(balancer) before building)")


def _what_to_pass(name: str, stage) -> str:
    """A hint for the usual mistakes: one op or a list of ops as ``augment=``, a transform from
    another library (it works on one image; the stages work on whole batches on the device)."""
    if name == "augment" and isinstance(stage, (list, tuple)):
        return ": wrap the ops in one streamaug.ops.Compose([...])"
    if name == "augment" and getattr(stage, "kind", None) in ("geometric", "intensity"):
        return f": wrap the op in streamaug.ops.Compose([{type(stage).__name__}(...)])"
    if name == "augment" and callable(stage):
        return (": a per-image transform (torchvision, albumentations) does not run on batches; build the "
                "augmentation from streamaug.ops (Flip, Rotate, RandomResizedCrop, BrightnessContrast, ...) in a Compose")
    if name == "balance":
        named = stage if isinstance(stage, type) else type(stage)        # (the class itself: balance=SMOTE)
        synthesizer = named.__name__ if hasattr(named, "synthesize") else "SMOTE"
        return (f": pass a streamaug.samplers.ClassBalancer, e.g. balance=ClassBalancer(\"auto\", "
                f"synthesizer={synthesizer}()) (a synthesizer alone, a name or True is not a balancer)")
    return ""


def check_plugin_kind(name: str, stage, num_classes: int | None) -> None:
    """A streamaug op given to the wrong stage, or a mix op whose class count is not the
    loader's, fails when the loader is built, not at the first batch."""
    kind = getattr(stage, "kind", None)
    if name == "augment" and kind == "mix":
        raise TypeError(f"augment={stage!r} is a mix op: pass it as the loader's mixup= (augment= takes a Compose)")
    if name == "mixup" and (kind in ("geometric", "intensity") or isinstance(stage, Compose)):
        raise TypeError(f"mixup={stage!r} is not a mix op: pass it as the loader's augment= (mixup= takes "
                        "MixUp or CutMix)")
    own = getattr(stage, "num_classes", None) if name == "mixup" else None
    if own is not None and num_classes is not None and own != num_classes:
        raise ValueError(f"mixup={stage!r} has num_classes={own}, the loader {num_classes} (its targets are "
                         "one column per class): leave the op's num_classes out, or give the loader the same")


def seed_plugins(loader, epoch: int, batch_id: int, names=("balance", "augment", "mixup")) -> None:
    """Reseed ``loader``'s plug-ins ``names`` for batch ``batch_id`` of ``epoch``."""
    for name, base in loader._plugin_seeds.items():          # noqa: SLF001
        if name in names:
            getattr(loader, name).manual_seed(derive_seed(base, "batch", epoch, loader.rank, batch_id))


def apply_plugins(loader, batch: BatchInFlight, plan: EpochPlan | None, epoch: int) -> Batch:
    """``loader``: the :class:`~streamaug.loader.StreamLoader` whose stages, seeds, stats
    and output format apply."""
    if loader.balance is not None:
        check_balancer_owner(loader)
    if not batch.stages_done:
        seed_plugins(loader, epoch, batch.batch_id)
    if loader.balance is not None and not batch.stages_done:
        batch = loader.balance(batch, None if plan is None else plan.synthetic[batch.batch_id])
    return finish_batch(loader, batch)


def count_rows(loader, batch: BatchInFlight) -> None:
    stats = loader.stats
    stats.real += int(batch.real.sum())
    stats.padded += int(batch.is_padding.sum())
    stats.synthetic += int(batch.is_synthetic.sum())


def finish_batch(loader, batch: BatchInFlight) -> Batch:
    """Count a balanced batch's rows, then augment, mix and format it."""
    count_rows(loader, batch)
    labels = to_device(batch.labels, loader.device)
    if batch.stages_done:
        images = batch.images
        targets = labels if batch.targets is None else to_device(batch.targets, loader.device)
    else:
        images, targets = batch.images, labels
        if loader.augment is not None:
            images = loader.augment(images)
        if loader.mixup is not None:
            images, targets = loader.mixup(images, batch.labels, num_classes=loader.num_classes)
    if not loader.output.is_identity:
        images = loader.output(images)
    return Batch(images, targets, hard_labels=labels, keys=batch.keys,
                 is_synthetic=to_device(batch.is_synthetic, loader.device),
                 is_padding=to_device(batch.is_padding, loader.device), provenance=batch.provenance,
                 batch_id=batch.batch_id)
