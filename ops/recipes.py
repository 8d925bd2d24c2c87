"""Ready-made augmentation pipelines."""
from __future__ import annotations

from .compose import Compose
from .geometric.flip import Flip
from .geometric.rotate import Rotate
from .geometric.shear import Shear
from .geometric.translate import Translate
from .intensity.gaussian_noise import GaussianNoise


def default_augment(backend: str = "auto", flip: bool = False, seed: int | None = None) -> Compose:
    """Rotate ±15°, shear (10°, 5°), translate ±8%, Gaussian noise σ=0.03; ``flip`` adds a
    horizontal flip first (leave it out where a mirror image is another class, as with digits)."""
    ops = [Flip(p=0.5)] if flip else []
    return Compose(ops + [Rotate(15), Shear(x=10, y=5), Translate(0.08, 0.08), GaussianNoise(0.03)],
                   backend=backend, seed=seed)
