"""The loader's last step on the device: dtype, normalization and memory format.

What DALI's ``crop_mirror_normalize`` and FFCV's ``NormalizeImage`` do, applied
after augmentation and mixup as one fused step (one read of the uint8 batch, one
write of the output), so a training script needs no conversion of its own:

>>> fmt = OutputFormat(torch.float32, normalize=((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
>>> out = fmt(torch.full((2, 3, 4, 4), 255, dtype=torch.uint8))
>>> round(float(out[0, 0, 0, 0]), 4)      # (1 - 0.485) / 0.229
2.2489

Conventions (torchvision's): float output is scaled to ``[0, 1]`` (divided by 255)
and ``mean``/``std`` are given on that scale, one value per channel (or one for
all). ``dtype=torch.uint8`` (the default) leaves the batch as it is and refuses
``normalize``. ``channels_last`` returns ``torch.channels_last`` memory format
(same NCHW shape; what convolutions on tensor cores prefer).
"""
from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch

FLOAT_TYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _per_channel(name: str, value) -> tuple[float, ...]:
    values = (value,) if isinstance(value, numbers.Real) else tuple(value)
    if not values or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values):
        raise ValueError(f"normalize {name} must be a number or a sequence of numbers, got {value!r}")
    return tuple(float(v) for v in values)


class OutputFormat:
    def __init__(self, dtype: torch.dtype = torch.uint8,
                 normalize: tuple[Sequence[float] | float, Sequence[float] | float] | None = None,
                 channels_last: bool = False):
        if dtype != torch.uint8 and dtype not in FLOAT_TYPES:
            raise ValueError(f"dtype must be torch.uint8 or a float dtype {FLOAT_TYPES}, got {dtype!r}")
        if normalize is not None:
            if dtype == torch.uint8:
                raise ValueError("normalize= needs a float dtype, e.g. dtype=torch.float32")
            if not isinstance(normalize, (tuple, list)) or len(normalize) != 2:
                raise ValueError(f"normalize must be (mean, std), got {normalize!r}")
            mean, std = _per_channel("mean", normalize[0]), _per_channel("std", normalize[1])
            if any(s <= 0 for s in std):
                raise ValueError(f"normalize std must be > 0, got {std}")
            if max(mean) > 1 or max(std) > 1:     # (0-255 values: the output would be about -1 everywhere)
                raise ValueError(f"normalize mean and std are on the [0, 1] scale (torchvision's), got mean {mean}, "
                                 f"std {std}; for 0-255 values pass them divided by 255, e.g. "
                                 f"(({', '.join(f'{m / 255:.4g}' for m in mean)},), "
                                 f"({', '.join(f'{v / 255:.4g}' for v in std)},))")
            normalize = (mean, std)
        if not isinstance(channels_last, bool):
            raise ValueError(f"channels_last must be a bool, got {channels_last!r}")
        self.dtype, self.normalize, self.channels_last = dtype, normalize, channels_last
        self._affine: dict = {}

    @property
    def is_identity(self) -> bool:
        return self.dtype == torch.uint8 and not self.channels_last

    def check_channels(self, channels: int) -> None:
        """Refuse a ``normalize`` whose mean/std do not fit ``channels`` (one value, or one per channel)."""
        mean, std = self.normalize if self.normalize is not None else ((0.0,), (1.0,))
        for name, v in (("mean", mean), ("std", std)):
            if len(v) not in (1, channels):
                raise ValueError(f"normalize {name} {v} has {len(v)} values for {channels}-channel images")

    def _scale_shift(self, channels: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``out = x * scale + shift`` per channel: ``(x/255 - mean)/std`` folded into one multiply-add."""
        key = (channels, device)
        if key not in self._affine:
            self.check_channels(channels)
            mean, std = self.normalize if self.normalize is not None else ((0.0,), (1.0,))
            mean_t = torch.tensor(mean, dtype=torch.float32).expand(channels)
            std_t = torch.tensor(std, dtype=torch.float32).expand(channels)
            scale = (1.0 / (255.0 * std_t)).view(1, -1, 1, 1)
            shift = (-mean_t / std_t).view(1, -1, 1, 1)
            self._affine[key] = (scale.to(device, non_blocking=True), shift.to(device, non_blocking=True))
        return self._affine[key]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.dtype != torch.uint8:
            scale, shift = self._scale_shift(images.shape[1], images.device)
            if images.dtype == torch.uint8:
                images = torch.addcmul(shift, images.to(torch.float32), scale)
            else:                        # augmentation already made floats (still on the 0-255 scale)
                images = torch.addcmul(shift, images.float(), scale)
            if self.dtype != torch.float32:
                images = images.to(self.dtype)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def __repr__(self) -> str:
        return f"OutputFormat(dtype={self.dtype}, normalize={self.normalize}, channels_last={self.channels_last})"
