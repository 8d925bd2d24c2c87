"""Kornia backend: torch tensors on any device; the fused warp is Kornia's ``warp_affine``."""
from __future__ import annotations

import torch
from kornia.geometry.transform import warp_affine

from ..base import from_float, to_float
from ..geometric.affine_matrix import flip_axes, is_identity


def warp_rows(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Resample float NCHW ``x`` by forward matrices ``m`` (N,3,3 float64, CPU).

    Identity rows are untouched and pure flips are indexed, both bit-exact; the
    rest go through one bilinear ``warp_affine`` (zeros outside, size kept).
    """
    h, w = x.shape[-2:]
    ident = is_identity(m)
    fx, fy = flip_axes(m, h, w)
    general = ~(ident | fx | fy)
    out = x.clone() if bool((fx | fy | general).any()) else x
    dev = x.device
    for mask, dims in ((fx & ~fy, (-1,)), (fy & ~fx, (-2,)), (fx & fy, (-2, -1))):
        if bool(mask.any()):
            idx = mask.nonzero().squeeze(1).to(dev)
            out[idx] = x[idx].flip(dims)
    if bool(general.any()):
        idx = general.nonzero().squeeze(1)
        mats = m[idx, :2].to(device=dev, dtype=torch.float32)
        idx = idx.to(dev)
        out[idx] = warp_affine(x[idx], mats, (h, w), mode="bilinear", padding_mode="zeros", align_corners=True)
    return out


def run_kornia(compose, images: torch.Tensor, params) -> torch.Tensor:
    h, w = images.shape[-2:]
    x = to_float(images)
    for kind, indices in compose.stages:
        if kind == "warp":
            x = warp_rows(x, compose.fused_matrix(indices, params, h, w))
        else:
            x = compose.ops[indices[0]].apply_torch(x, params[indices[0]])
    if images.dtype != torch.uint8 and x is images:
        return images
    return from_float(x, images)
