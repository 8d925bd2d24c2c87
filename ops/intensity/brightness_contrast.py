"""Brightness and contrast jitter with DALI's ``brightness_contrast`` formula."""
from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from streamaug.core.transfer import to_device

from ..base import IntensityOp, Params, check_range


class BrightnessContrast(IntensityOp):
    """``out = b · (0.5 + c · (x − 0.5))`` on the [0, 1] scale, per row
    ``b ~ U(1 ± brightness)``, ``c ~ U(1 ± contrast)`` (or explicit ranges).
    The same formula as DALI's ``fn.brightness_contrast`` with its default centre."""

    def __init__(self, brightness=0.2, contrast=0.2, p: float = 1.0, seed: int | None = None):
        super().__init__(p, seed)
        self.brightness = self._factor_range("brightness", brightness)
        self.contrast = self._factor_range("contrast", contrast)

    @staticmethod
    def _factor_range(name, value) -> tuple[float, float]:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):      # numpy scalars too
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
            return max(0.0, 1.0 - float(value)), 1.0 + float(value)
        return check_range(name, value, low=0.0)

    def _draw(self, n: int, height: int, width: int) -> Params:
        return {"brightness": torch.from_numpy(self.rng.uniform(*self.brightness, n)).float(),
                "contrast": torch.from_numpy(self.rng.uniform(*self.contrast, n)).float()}

    def factors(self, params: Params) -> tuple[torch.Tensor, torch.Tensor]:
        one = torch.ones_like(params["brightness"])
        return (torch.where(params["apply"], params["brightness"], one),
                torch.where(params["apply"], params["contrast"], one))

    def apply_torch(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        b, c = (to_device(f, x.device).view(-1, 1, 1, 1) for f in self.factors(params))
        return x.sub(0.5).mul_(c).add_(0.5).mul_(b)

    dali_argument_names = ("brightness", "contrast")

    def dali_arguments(self, params: Params) -> dict[str, list[np.ndarray]]:
        b, c = self.factors(params)
        return {"brightness": [np.float32(v) for v in b.tolist()], "contrast": [np.float32(v) for v in c.tolist()]}

    dali_keeps_dtype = True

    def dali_apply(self, fn, images, arguments: dict, uint8: bool):
        return fn.brightness_contrast(images, brightness=arguments["brightness"], contrast=arguments["contrast"],
                                      contrast_center=127.5 if uint8 else 0.5)
