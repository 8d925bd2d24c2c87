"""3×3 affine matrices in pixel coordinates (centres at integers, y down), as numpy arrays.

Conventions, shared by every backend:

* A matrix maps a **source** pixel to its **destination** (forward map).
* Rotation and shear are about the image centre ``((W-1)/2, (H-1)/2)``.
* A positive angle turns the image **counter-clockwise** as displayed, so
  rotating by 90° equals ``torch.rot90(x, 1, dims=(-2, -1))``.

Matrices are ``(N, 3, 3)`` float64 ``numpy`` arrays, built and multiplied on the host
whatever the images' device: they are a few numbers per row, and numpy does each step in
about a microsecond where a torch op on a small CPU tensor takes several (the host's time
per batch is what bounds a GPU feed at small image sizes: ``benchmarks/host_overhead.py``).
Every function also takes torch tensors of parameters (as ops draw them).
"""
from __future__ import annotations

import numpy as np
import torch


def _values(v) -> np.ndarray:
    """Per-row parameters (a CPU torch tensor, an array or a list) as float64."""
    return np.atleast_1d(np.asarray(v.numpy() if hasattr(v, "numpy") else v, dtype=np.float64))


def _rows(n: int, a=1.0, b=0.0, c=0.0, d=0.0, e=1.0, f=0.0) -> np.ndarray:
    """``n`` matrices ``[[a, b, c], [d, e, f], [0, 0, 1]]`` (each entry a number or one per row)."""
    m = np.zeros((n, 3, 3))
    m[:, 0, 0], m[:, 0, 1], m[:, 0, 2] = a, b, c
    m[:, 1, 0], m[:, 1, 1], m[:, 1, 2] = d, e, f
    m[:, 2, 2] = 1.0
    return m


def about_center(m: np.ndarray, height: int, width: int) -> np.ndarray:
    """Conjugate ``m`` (N,3,3) by a translation so it acts about the image centre:
    ``T(c) · m · T(-c)``, i.e. the same linear part and translation ``t + c - A·c``."""
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    out = np.array(m, dtype=np.float64)
    out[:, 0, 2] += cx - (m[:, 0, 0] * cx + m[:, 0, 1] * cy)
    out[:, 1, 2] += cy - (m[:, 1, 0] * cx + m[:, 1, 1] * cy)
    return out


def rotation(degrees) -> np.ndarray:
    """Counter-clockwise (as displayed, y down) rotation about the origin, (N,3,3)."""
    t = np.deg2rad(_values(degrees))
    c, s = np.cos(t), np.sin(t)
    return _rows(len(t), c, s, 0.0, -s, c, 0.0)


def shear(shear_x_deg, shear_y_deg) -> np.ndarray:
    """``x' = x + tan(sx)·y`` then ``y' = y + tan(sy)·x`` (as one matrix), (N,3,3)."""
    tx, ty = np.tan(np.deg2rad(_values(shear_x_deg))), np.tan(np.deg2rad(_values(shear_y_deg)))
    return _rows(len(tx), 1.0, tx, 0.0, ty, ty * tx + 1.0, 0.0)      # [[1,0],[ty,1]] · [[1,tx],[0,1]]


def translation(dx, dy) -> np.ndarray:
    dx, dy = _values(dx), _values(dy)
    return _rows(len(dx), c=dx, f=dy)


def scaling(sx, sy) -> np.ndarray:
    sx, sy = _values(sx), _values(sy)
    return _rows(len(sx), a=sx, e=sy)


def fuse_affine(matrices: list):
    """Ops applied in list order → one forward matrix: ``M_k @ ... @ M_1``; a float64 tensor
    if any input is a torch tensor (as it always did), else a numpy array."""
    out = np.asarray(matrices[0], dtype=np.float64)
    for m in matrices[1:]:
        out = np.asarray(m, dtype=np.float64) @ out
    return torch.from_numpy(out) if any(isinstance(m, torch.Tensor) for m in matrices) else out


def affine_inverse(m: np.ndarray) -> np.ndarray:
    """Inverses of affine (N,3,3) matrices in closed form: ``[A⁻¹, −A⁻¹·t]``. A row whose
    last row is not ``[0, 0, 1]`` or whose linear part is singular is refused, naming it."""
    m = np.asarray(m, dtype=np.float64)
    if not np.isfinite(m).all():
        bad = int(np.flatnonzero(~np.isfinite(m).all(axis=(1, 2)))[0])
        raise ValueError(f"row {bad}: the matrix {m[bad].tolist()} has entries that are not finite "
                         "(an op parameter is NaN or infinite, or a crop box has no width or height)")
    if not np.array_equal(m[:, 2], np.broadcast_to([0.0, 0.0, 1.0], m[:, 2].shape)):
        bad = int(np.flatnonzero(np.any(m[:, 2] != [0.0, 0.0, 1.0], axis=1))[0])
        raise ValueError(f"row {bad}: not an affine matrix (last row {m[bad, 2].tolist()}, expected [0, 0, 1])")
    a, b, c = m[:, 0, 0], m[:, 0, 1], m[:, 0, 2]
    d, e, f = m[:, 1, 0], m[:, 1, 1], m[:, 1, 2]
    det = a * e - b * d
    if not np.all(np.isfinite(det)) or np.any(det == 0):
        bad = int(np.flatnonzero(~np.isfinite(det) | (det == 0))[0])
        raise ValueError(f"row {bad}: the matrix {m[bad].tolist()} has no inverse in float64 (determinant "
                         f"{det[bad]}: singular, or so ill-conditioned, e.g. a shear within 1e-8° of 90°, "
                         "that its determinant cancels)")
    ia, ib, id_, ie = e / det, -b / det, -d / det, a / det
    return _rows(len(m), ia, ib, -(ia * c + ib * f), id_, ie, -(id_ * c + ie * f))


def is_identity(m: np.ndarray, atol: float = 1e-12) -> np.ndarray:
    """Rows equal to the identity within ``atol``: a bool (N,) array."""
    return np.abs(m - np.eye(3)).max(axis=(-2, -1), initial=0.0) <= atol


def flip_axes(m: np.ndarray, height: int, width: int, atol: float = 1e-9) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose matrix is exactly a horizontal and/or vertical flip: (flip_x, flip_y) bool masks."""
    hx, vy = np.eye(3), np.eye(3)
    hx[0, 0], hx[0, 2] = -1, width - 1
    vy[1, 1], vy[1, 2] = -1, height - 1
    close = lambda ref: np.abs(m - ref).max(axis=(-2, -1), initial=0.0) <= atol  # noqa: E731
    only_x, only_y, both = close(hx), close(vy), close(vy @ hx)
    return only_x | both, only_y | both
