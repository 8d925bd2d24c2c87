"""Kornia backend: torch tensors on any device.

The fused warp builds one sampling grid per row from the fused matrix
(moved to normalized coordinates as Kornia's ``normalize_homography`` does, in numpy) and
resamples once with ``grid_sample`` (bilinear, zeros outside, size kept, pixel-edge
normalization: ``align_corners=False``). Rows
whose matrix is the identity are untouched and pure flips are indexed, so both
stay bit-exact.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from streamaug.core.transfer import to_device

from ..base import from_float, to_float
from ..geometric.affine_matrix import affine_inverse, flip_axes, is_identity


def normalized_inverse(forward: np.ndarray, height: int, width: int) -> np.ndarray:
    """(N,3,3) forward pixel matrices → inverse maps in ``grid_sample``'s normalized [-1, 1]
    coordinates with ``align_corners=False``: ``S · M⁻¹ · S⁻¹``, ``S`` the pixel → normalized map
    ``x ↦ (2x + 1)/W − 1`` (±1 are the outer pixel edges). What Kornia's ``normalize_homography``
    computes with ``align_corners=False``, on the host in numpy, where it costs about a fifth of
    Kornia's call on torch's small CPU tensors. (With ``align_corners=True`` an axis of size 1
    has no extent: ``grid_sample`` reads pixel 0 wherever the map points, so a moved 1-pixel-wide
    image was never filled with zeros.)"""
    sx, tx = 2.0 / width, 1.0 / width - 1.0
    sy, ty = 2.0 / height, 1.0 / height - 1.0
    to_norm = np.array([[sx, 0.0, tx], [0.0, sy, ty], [0.0, 0.0, 1.0]])
    from_norm = np.array([[1.0 / sx, 0.0, -tx / sx], [0.0, 1.0 / sy, -ty / sy], [0.0, 0.0, 1.0]])
    return to_norm @ affine_inverse(forward) @ from_norm


def pixel_centres(size: int, device, dtype) -> torch.Tensor:
    """Normalized coordinates of an axis's pixel centres (``align_corners=False``)."""
    edge = 1.0 - 1.0 / size
    return torch.linspace(-edge, edge, size, device=device, dtype=dtype)


def sampling_grid(forward: np.ndarray, height: int, width: int, device, dtype=torch.float32) -> torch.Tensor:
    """(N,3,3) forward pixel matrices → (N,H,W,2) ``grid_sample`` grid (align_corners=False).

    The grid holds, for every destination pixel, where to read in the source:
    the inverse map, in normalized [-1, 1] coordinates.
    """
    inverse = normalized_inverse(forward, height, width)
    t = to_device(torch.from_numpy(np.ascontiguousarray(inverse[:, :2])).to(dtype), device).view(-1, 2, 3, 1, 1)
    xs = pixel_centres(width, device, dtype).view(1, 1, width)
    ys = pixel_centres(height, device, dtype).view(1, height, 1)
    grid = torch.empty(forward.shape[0], height, width, 2, device=device, dtype=dtype)
    for k in range(2):
        torch.add(t[:, k, 0] * xs + t[:, k, 2], t[:, k, 1] * ys, out=grid[..., k])   # one full-size pass
    return grid


def _rows(mask: np.ndarray, device) -> torch.Tensor:
    return to_device(torch.from_numpy(np.flatnonzero(mask)), device)


def warp_rows(x: torch.Tensor, m: np.ndarray) -> torch.Tensor:
    """Resample float NCHW ``x`` by forward matrices ``m`` (N,3,3 float64 numpy, see ``affine_matrix``)."""
    h, w = x.shape[-2:]
    m = np.asarray(m, dtype=np.float64)          # (torch tensors are taken too)
    ident = is_identity(m)
    fx, fy = flip_axes(m, h, w)
    general = ~(ident | fx | fy)
    if general.all():
        return F.grid_sample(x, sampling_grid(m, h, w, x.device, x.dtype), mode="bilinear",
                             padding_mode="zeros", align_corners=False)
    if ident.all():
        return x
    out = x.clone()
    for mask, dims in ((fx & ~fy, (-1,)), (fy & ~fx, (-2,)), (fx & fy, (-2, -1))):
        if mask.any():
            idx = _rows(mask, x.device)
            out[idx] = x[idx].flip(dims)
    if general.any():
        grid = sampling_grid(m[general], h, w, x.device, x.dtype)
        idx = _rows(general, x.device)
        out[idx] = F.grid_sample(x[idx], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out


def run_kornia(compose, images: torch.Tensor, params) -> torch.Tensor:
    h, w = images.shape[-2:]
    x = to_float(images)
    last = len(compose.stages) - 1
    for pos, (kind, indices) in enumerate(compose.stages):
        if kind == "warp":
            x = warp_rows(x, compose.fused_array(indices, params, h, w))
        else:
            x = compose.ops[indices[0]].apply_torch(x, params[indices[0]])
            if pos != last:               # every intensity op's output is a valid image (as on DALI)
                x.clamp_(0.0, 1.0)
    return from_float(x, images)
