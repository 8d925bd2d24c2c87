"""Kornia backend: torch tensors on any device.

The fused warp builds one sampling grid per row from the fused matrix
(Kornia's ``normalize_homography`` moves it to normalized coordinates) and
resamples once with ``grid_sample`` (bilinear, zeros outside, size kept). Rows
whose matrix is the identity are untouched and pure flips are indexed, so both
stay bit-exact.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from kornia.geometry.conversions import normalize_homography

from streamaug.core.transfer import to_device

from ..base import from_float, to_float
from ..geometric.affine_matrix import flip_axes, is_identity


def sampling_grid(forward: torch.Tensor, height: int, width: int, device, dtype=torch.float32) -> torch.Tensor:
    """(N,3,3) forward pixel matrices → (N,H,W,2) ``grid_sample`` grid (align_corners=True).

    The grid holds, for every destination pixel, where to read in the source:
    the inverse map, in Kornia's normalized [-1, 1] coordinates.
    """
    inverse = normalize_homography(torch.linalg.inv(forward), (height, width), (height, width))
    t = to_device(inverse[:, :2].to(dtype), device).view(-1, 2, 3, 1, 1)
    xs = torch.linspace(-1, 1, width, device=device, dtype=dtype).view(1, 1, width)
    ys = torch.linspace(-1, 1, height, device=device, dtype=dtype).view(1, height, 1)
    grid = torch.empty(forward.shape[0], height, width, 2, device=device, dtype=dtype)
    for k in range(2):
        torch.add(t[:, k, 0] * xs + t[:, k, 2], t[:, k, 1] * ys, out=grid[..., k])   # one full-size pass
    return grid


def warp_rows(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Resample float NCHW ``x`` by forward matrices ``m`` (N,3,3 float64, CPU)."""
    h, w = x.shape[-2:]
    ident = is_identity(m)
    fx, fy = flip_axes(m, h, w)
    general = ~(ident | fx | fy)
    if bool(general.all()):
        return F.grid_sample(x, sampling_grid(m, h, w, x.device, x.dtype), mode="bilinear",
                             padding_mode="zeros", align_corners=True)
    if bool(ident.all()):
        return x
    out = x.clone()
    for mask, dims in ((fx & ~fy, (-1,)), (fy & ~fx, (-2,)), (fx & fy, (-2, -1))):
        if bool(mask.any()):
            idx = to_device(mask.nonzero().squeeze(1), x.device)
            out[idx] = x[idx].flip(dims)
    if bool(general.any()):
        rows = general.nonzero().squeeze(1)
        grid = sampling_grid(m[rows], h, w, x.device, x.dtype)
        idx = to_device(rows, x.device)
        out[idx] = F.grid_sample(x[idx], grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out


def run_kornia(compose, images: torch.Tensor, params) -> torch.Tensor:
    h, w = images.shape[-2:]
    x = to_float(images)
    for kind, indices in compose.stages:
        if kind == "warp":
            x = warp_rows(x, compose.fused_matrix(indices, params, h, w))
        else:
            x = compose.ops[indices[0]].apply_torch(x, params[indices[0]])
    return from_float(x, images)
