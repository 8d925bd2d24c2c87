"""The arms of ``streamaug demo``: which stages each training run turns on.

Each arm answers one "what should I turn on?" question; all share the model,
optimizer, step budget, batch size and seeds, so they differ only in the stages.
"""
from __future__ import annotations

from dataclasses import dataclass

from streamaug.ops import Compose, GaussianNoise, MixUp, Rotate, Shear, Translate
from streamaug.ops.recipes import default_augment
from streamaug.samplers import SMOTE, ClassBalancer


@dataclass(frozen=True)
class Arm:
    label: str
    augment: bool = True
    balance: str | None = None         # None, "ros" (random oversampling), "smote", "smote-thumbnail", "smote-projection"
    mixup: str | None = None           # None, "mixup", "balanced", "remix"
    strength: float = 1.0              # augmentation strength (1 = the default recipe)


ARMS = {
    "plain": Arm("plain stream", augment=False),
    "augment": Arm("augment"),
    "augment-weak": Arm("augment at half strength", strength=0.5),
    "ros": Arm("random oversampling + augment", balance="ros"),
    "smote": Arm("SMOTE + augment", balance="smote"),
    "smote-mixup": Arm("SMOTE + augment + mixup", balance="smote", mixup="mixup"),
    "smote-thumb": Arm("SMOTE, thumbnail neighbours + augment", balance="smote-thumbnail"),
    "smote-proj": Arm("SMOTE, projection neighbours + augment", balance="smote-projection"),
    "mixup": Arm("augment + mixup", mixup="mixup"),
    "bmixup": Arm("augment + Balanced-MixUp", mixup="balanced"),
    "remix": Arm("augment + Remix", mixup="remix"),
    "ros-remix": Arm("random oversampling + augment + Remix", balance="ros", mixup="remix"),
}
DEFAULT_ARMS = ("plain", "augment", "ros", "smote", "smote-mixup")


def parse_arms(text: str) -> list[str]:
    """``"all"``, ``"default"`` or a comma-separated list of arm names."""
    if text == "all":
        return list(ARMS)
    if text == "default":
        return list(DEFAULT_ARMS)
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in ARMS]
    if unknown or not names:
        raise ValueError(f"--arms must be 'all', 'default' or names from {sorted(ARMS)}, got {text!r}")
    return names


def scaled_augment(backend: str, strength: float):
    """The default recipe with every range scaled by ``strength``."""
    if strength == 1.0:
        return default_augment(backend)
    s = strength
    return Compose([Rotate(15 * s), Shear(x=10 * s, y=5 * s), Translate(0.08 * s, 0.08 * s), GaussianNoise(0.03 * s)],
                   backend=backend)


def stages(arm: Arm, backend: str, strategy, class_counts: list[int], mixup_alpha: float) -> dict:
    """The StreamLoader keyword arguments of one arm."""
    kw = {}
    if arm.augment:
        kw["augment"] = scaled_augment(backend, arm.strength)
    if arm.balance == "ros":
        kw["balance"] = ClassBalancer(strategy, synthesizer=None)
    elif arm.balance is not None:
        space = {"smote": None, "smote-thumbnail": "thumbnail", "smote-projection": "projection"}[arm.balance]
        kw["balance"] = ClassBalancer(strategy, synthesizer=SMOTE(neighbour_space=space))
    if arm.mixup == "mixup":
        kw["mixup"] = MixUp(alpha=mixup_alpha, p=0.5)
    elif arm.mixup == "balanced":
        kw["mixup"] = MixUp(alpha=mixup_alpha, p=0.5, partners="balanced")
    elif arm.mixup == "remix":
        kw["mixup"] = MixUp(alpha=mixup_alpha, p=0.5, label_rule="remix", class_counts=class_counts)
    return kw
