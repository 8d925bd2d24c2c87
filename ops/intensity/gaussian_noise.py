"""Additive Gaussian noise, independent per row and pixel, on the [0, 1] scale."""
from __future__ import annotations

import numpy as np
import torch

from ..base import IntensityOp, Params, check_range


class GaussianNoise(IntensityOp):
    """Add ``N(0, σ²)`` per pixel, ``σ ~ U(std)`` per row (``std`` on the [0, 1]
    scale, a number means that exact σ), then clip to the valid range.

    The noise field is drawn on the images' device from ``params["noise_seed"]``,
    so a call replays exactly on the Kornia backend. DALI draws its own field
    (``fn.noise.gaussian``) from the pipeline's seed: same σ per row, same
    distribution, a different field.
    """

    def __init__(self, std=0.05, p: float = 1.0, seed: int | None = None):
        super().__init__(p, seed)
        self.std = check_range("std", std)
        if self.std[0] < 0:
            raise ValueError(f"std must be >= 0, got {std!r}")

    def _draw(self, n: int, height: int, width: int) -> Params:
        return {"std": torch.from_numpy(self.rng.uniform(*self.std, n)).float(),
                "noise_seed": torch.tensor(int(self.rng.integers(0, 2**62)), dtype=torch.int64)}

    def row_std(self, params: Params) -> torch.Tensor:
        return torch.where(params["apply"], params["std"], torch.zeros_like(params["std"]))

    def apply_torch(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        sigma = self.row_std(params).to(x.device)
        if not bool((sigma > 0).any()):
            return x
        gen = torch.Generator(device=x.device)
        gen.manual_seed(int(params["noise_seed"]))
        noise = torch.empty(x.shape, device=x.device, dtype=torch.float32).normal_(0.0, 1.0, generator=gen)
        return x.add(noise.mul_(sigma.view(-1, 1, 1, 1)).to(x.dtype))

    dali_argument_names = ("stddev",)

    def dali_arguments(self, params: Params) -> dict[str, list[np.ndarray]]:
        return {"stddev": [np.float32(s) for s in self.row_std(params).tolist()]}

    def dali_apply(self, fn, images, arguments: dict, uint8: bool):
        scale = 255.0 if uint8 else 1.0
        return fn.noise.gaussian(images, stddev=arguments["stddev"] * scale)
