"""Additive Gaussian noise, independent per row and pixel, on the [0, 1] scale."""
from __future__ import annotations

import torch

from streamaug.core.transfer import to_device

from ..base import IntensityOp, Params, check_range
from .noise_field import add_gaussian_field_, gaussian_field


class GaussianNoise(IntensityOp):
    """Add ``N(0, σ²)`` per pixel, ``σ ~ U(std)`` per row (``std`` on the [0, 1]
    scale, a number means that exact σ), then clip to the valid range. The standard
    normal is ``noise_field``'s: the sum of two 256-level half-draws, which matches
    N(0, 1) in mean and variance, within 1/512 in CDF, and is cut off at ±4.2.

    The noise field is drawn on the images' device from ``params["noise_seed"]``
    (``gaussian_field``), on both backends: the DALI pipeline is fed the same field
    and adds it. A call therefore replays exactly on either backend.
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
        sigma = self.row_std(params)
        if not bool((sigma > 0).any()):
            return x
        if x.device.type == "cpu" and x.dtype == torch.float32 and x.is_contiguous():
            return add_gaussian_field_(x, sigma, int(params["noise_seed"]))
        noise = gaussian_field(x.shape, int(params["noise_seed"]), x.device)
        return x.addcmul_(noise, to_device(sigma, x.device).view(-1, 1, 1, 1).to(x.dtype))

    dali_field_names = ("noise",)

    def dali_fields(self, params: Params, shape_nhwc: torch.Size, device: torch.device,
                    uint8: bool) -> dict[str, torch.Tensor]:
        n, h, w, c = shape_nhwc
        sigma = self.row_std(params) * (255.0 if uint8 else 1.0)
        field = gaussian_field(torch.Size((n, c, h, w)), int(params["noise_seed"]), device)
        field.mul_(to_device(sigma, device).view(-1, 1, 1, 1))
        return {"noise": field.permute(0, 2, 3, 1).contiguous()}

    dali_keeps_dtype = True

    def dali_apply(self, fn, images, arguments: dict, uint8: bool):
        from nvidia.dali import types

        noisy = images + arguments["noise"]
        return fn.cast(noisy, dtype=types.UINT8) if uint8 else noisy     # the cast saturates
