"""Random resized crop, as an affine map, so it fuses with the other geometric ops."""
from __future__ import annotations

import math

import numpy as np
import torch

from ..base import GeometricOp, Params, check_range
from .affine_matrix import scaling, translation


class RandomResizedCrop(GeometricOp):
    """Crop a box of area ``U(scale)·H·W`` and aspect ratio log-uniform in ``ratio``,
    then stretch it to the full (unchanged) output size. Boxes are drawn as in
    torchvision: up to 10 tries, then a centre crop of the clamped ratio."""

    def __init__(self, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), p: float = 1.0, seed: int | None = None):
        super().__init__(p, seed)
        self.scale = check_range("scale", scale, low=0.0)
        self.ratio = check_range("ratio", ratio, low=1e-6)
        if self.scale[1] > 1 or self.scale[0] <= 0:
            size_like = isinstance(scale, int) or (isinstance(scale, (tuple, list)) and all(
                isinstance(v, int) and v > 1 for v in scale))
            raise ValueError(f"scale must lie in (0, 1], got {scale!r}" + (
                ": RandomResizedCrop's first argument is scale=(low, high), the crop's share of the area; the "
                "crop is resized back to the batch's size, which the loader's resize= sets (torchvision's "
                "RandomResizedCrop(size) is resize=size plus this op)" if size_like else ""))

    TRIES = 10

    def _draw(self, n: int, height: int, width: int) -> Params:
        """Every row's boxes at once: ``TRIES`` candidate (area, aspect) pairs per row, the
        first that fits is kept, its corner drawn uniformly; a row none of whose tries fits
        takes the centre crop. The generator advances by the same amount whatever fits."""
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        target = height * width * self.rng.uniform(*self.scale, (n, self.TRIES))
        aspect = np.exp(self.rng.uniform(*log_ratio, (n, self.TRIES)))
        corner = self.rng.random((n, 2))
        ws, hs = np.sqrt(target * aspect), np.sqrt(target / aspect)
        fits = (ws >= 1) & (ws <= width) & (hs >= 1) & (hs <= height)
        pick = (np.arange(n), fits.argmax(axis=1))
        w, h = ws[pick], hs[pick]
        x0, y0 = corner[:, 0] * (width - w), corner[:, 1] * (height - h)
        centre = ~fits.any(axis=1)
        if centre.any():
            a = float(np.clip(width / height, *self.ratio))
            cw, ch = (width, width / a) if width / height < a else (height * a, height)
            w[centre], h[centre], x0[centre], y0[centre] = cw, ch, (width - cw) / 2, (height - ch) / 2
        boxes = np.stack([x0, y0, w, h], axis=1).reshape(n, 4)
        return {"box": torch.from_numpy(boxes)}          # x0, y0, w, h in pixels (edges)

    def _matrices(self, params: Params, height: int, width: int) -> np.ndarray:
        x0, y0, w, h = np.asarray(params["box"], dtype=np.float64).reshape(-1, 4).T
        # A box at the image's edge is moved in by under half a pixel, (1 − w/W)/2, so the output's
        # edge pixels sample inside the image: otherwise they blend with the zero fill beyond it
        # (a dark rim where torchvision's crop-and-resize, which clamps there, has none).
        x0, y0 = _inside(x0, w, width), _inside(y0, h, height)
        # Edges map to edges: source edge coordinate u = x + 0.5 → (u - x0)·W/w.
        sx, sy = width / w, height / h
        half = np.full_like(sx, -0.5)
        return translation(half, half) @ scaling(sx, sy) @ translation(0.5 - x0, 0.5 - y0)


def _inside(start: np.ndarray, extent: np.ndarray, size: int) -> np.ndarray:
    margin = 0.5 * (1.0 - extent / size)
    return np.clip(start, np.minimum(margin, 0.5 * (size - extent)), np.maximum(size - extent - margin, 0.5 * (size - extent)))
