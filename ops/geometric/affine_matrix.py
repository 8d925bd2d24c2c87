"""3×3 affine matrices in pixel coordinates (centres at integers, y down).

Conventions, shared by every backend:

* A matrix maps a **source** pixel to its **destination** (forward map).
* Rotation and shear are about the image centre ``((W-1)/2, (H-1)/2)``.
* A positive angle turns the image **counter-clockwise** as displayed, so
  rotating by 90° equals ``torch.rot90(x, 1, dims=(-2, -1))``.
"""
from __future__ import annotations

import math

import torch


def about_center(m: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Conjugate ``m`` (N,3,3) by a translation so it acts about the image centre."""
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    to = torch.tensor([[1, 0, cx], [0, 1, cy], [0, 0, 1]], dtype=torch.float64)
    back = torch.tensor([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]], dtype=torch.float64)
    return to @ m @ back


def rotation(degrees: torch.Tensor) -> torch.Tensor:
    """Counter-clockwise (as displayed, y down) rotation about the origin, (N,3,3)."""
    t = degrees.double() * (math.pi / 180.0)
    c, s = torch.cos(t), torch.sin(t)
    z, o = torch.zeros_like(t), torch.ones_like(t)
    return torch.stack([torch.stack([c, s, z], -1), torch.stack([-s, c, z], -1), torch.stack([z, z, o], -1)], -2)


def shear(shear_x_deg: torch.Tensor, shear_y_deg: torch.Tensor) -> torch.Tensor:
    """``x' = x + tan(sx)·y`` then ``y' = y + tan(sy)·x`` (as one matrix), (N,3,3)."""
    tx = torch.tan(shear_x_deg.double() * (math.pi / 180.0))
    ty = torch.tan(shear_y_deg.double() * (math.pi / 180.0))
    z, o = torch.zeros_like(tx), torch.ones_like(tx)
    sx = torch.stack([torch.stack([o, tx, z], -1), torch.stack([z, o, z], -1), torch.stack([z, z, o], -1)], -2)
    sy = torch.stack([torch.stack([o, z, z], -1), torch.stack([ty, o, z], -1), torch.stack([z, z, o], -1)], -2)
    return sy @ sx


def translation(dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    z, o = torch.zeros_like(dx, dtype=torch.float64), torch.ones_like(dx, dtype=torch.float64)
    return torch.stack([torch.stack([o, z, dx.double()], -1), torch.stack([z, o, dy.double()], -1),
                        torch.stack([z, z, o], -1)], -2)


def scaling(sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    z, o = torch.zeros_like(sx, dtype=torch.float64), torch.ones_like(sx, dtype=torch.float64)
    return torch.stack([torch.stack([sx.double(), z, z], -1), torch.stack([z, sy.double(), z], -1),
                        torch.stack([z, z, o], -1)], -2)


def fuse_affine(matrices: list[torch.Tensor]) -> torch.Tensor:
    """Ops applied in list order → one forward matrix: ``M_k @ ... @ M_1``."""
    out = matrices[0]
    for m in matrices[1:]:
        out = m @ out
    return out


def is_identity(m: torch.Tensor, atol: float = 1e-12) -> torch.Tensor:
    return (m - torch.eye(3, dtype=m.dtype)).abs().amax(dim=(-2, -1)) <= atol


def flip_axes(m: torch.Tensor, height: int, width: int, atol: float = 1e-9) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows whose matrix is exactly a horizontal and/or vertical flip: (flip_x, flip_y) bool masks."""
    eye = torch.eye(3, dtype=m.dtype)
    hx = eye.clone()
    hx[0, 0], hx[0, 2] = -1, width - 1
    vy = eye.clone()
    vy[1, 1], vy[1, 2] = -1, height - 1
    close = lambda ref: (m - ref).abs().amax(dim=(-2, -1)) <= atol  # noqa: E731
    only_x, only_y, both = close(hx), close(vy), close(vy @ hx)
    return only_x | both, only_y | both
