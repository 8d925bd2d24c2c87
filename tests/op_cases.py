"""Every op with settings for the shared suite, and the backends × devices grid."""
from __future__ import annotations

import pytest
import torch

from streamaug.ops import (BrightnessContrast, Compose, CutMix, Flip, GaussianNoise, MixUp, RandomErasing,
                           RandomResizedCrop, Rotate, Shear, Translate)

BACKENDS = ["kornia", "dali", "opencv"]
CPU_ONLY_BACKENDS = {"opencv"}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# name -> factory(p, seed)
OPS = {
    "flip_h": lambda p=0.5, seed=None: Flip(p=p, seed=seed),
    "flip_v": lambda p=0.5, seed=None: Flip(horizontal=False, vertical=True, p=p, seed=seed),
    "rotate": lambda p=1.0, seed=None: Rotate(30, p=p, seed=seed),
    "shear": lambda p=1.0, seed=None: Shear(x=15, y=10, p=p, seed=seed),
    "translate": lambda p=1.0, seed=None: Translate(0.2, 0.1, p=p, seed=seed),
    "resized_crop": lambda p=1.0, seed=None: RandomResizedCrop(p=p, seed=seed),
    "noise": lambda p=1.0, seed=None: GaussianNoise((0.02, 0.1), p=p, seed=seed),
    "brightness_contrast": lambda p=1.0, seed=None: BrightnessContrast(0.3, 0.3, p=p, seed=seed),
    "erasing": lambda p=1.0, seed=None: RandomErasing(p=p, seed=seed),
}
MIX_OPS = {"mixup": lambda p=1.0, seed=None: MixUp(0.4, p=p, seed=seed),
           "cutmix": lambda p=1.0, seed=None: CutMix(1.0, p=p, seed=seed)}
# Every random quantity is a parameter (noise fields come from a parameter seed), so every call replays.
REPLAY_EXACT = {(name, be) for name in OPS for be in BACKENDS}


def grid():
    for be in BACKENDS:
        for dev in DEVICES:
            if dev != "cpu" and be in CPU_ONLY_BACKENDS:
                continue
            marks = [pytest.mark.skipif(dev == "cuda" and not torch.cuda.is_available(), reason="no GPU")]
            yield pytest.param(be, dev, id=f"{be}-{dev}", marks=marks)


def run(op_or_ops, x: torch.Tensor, backend: str, seed: int = 0, params=None):
    ops = op_or_ops if isinstance(op_or_ops, list) else [op_or_ops]
    aug = Compose(ops, backend=backend, seed=seed)
    return aug(x, params=params), aug


def images(n=16, c=3, h=24, w=24, dtype=torch.uint8, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8)
    return (x if dtype == torch.uint8 else x.to(dtype) / 255).to(device)


def smooth_images(n=8, c=3, h=32, w=32, device="cpu", seed=0):
    """Low-frequency float images: bilinear resampling is near-exact on them."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand((n, c, 4, 4), generator=g)
    return torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True).clamp(0, 1).to(device)
