"""OpenCV backend: the CPU execution path, warping uint8 images without a float copy.

Each fused warp stage is one ``cv2.warpAffine`` per row (bilinear, zeros outside,
size kept) with the same forward matrix the Kornia backend resamples by; OpenCV
maps destination pixels back with the inverse (``WARP_INVERSE_MAP`` is not
passed, so it inverts the 2×3 forward matrix itself). Both put pixel centres at
integer coordinates, so the two agree up to OpenCV's fixed-point bilinear
(sub-pixel positions on a 1/32 grid, 15-bit weights): tested in
``tests/test_ops_geometry.py``. Rows whose matrix is the identity are untouched
and pure flips are indexed, bit-exact as on every backend.

Images stay uint8 through the warps (OpenCV's SIMD path), and are turned into
float only when an intensity op comes (those run in torch, as on the Kornia
backend). The warped uint8 image is thus rounded once before the intensity ops,
so the result can differ from Kornia's by one level (1/255) per pixel (tested).
Gaussian noise as the last stage on a uint8 batch is added in uint8 (``opencv_uint8``),
the same numbers up to one level at ties, without the two float conversions.
Float input is warped in float32 (float64 images keep float64 flips and untouched rows; their
warps are resampled in float32, as OpenCV's float64 warp quantizes coordinates). CPU tensors only.
"""
from __future__ import annotations

import contextlib
import threading

import cv2
import numpy as np
import torch

from streamaug.core.batch_memory import empty_batch, private_outputs

from ..geometric.affine_matrix import affine_inverse, flip_axes, is_identity
from ..intensity.gaussian_noise import GaussianNoise
from .opencv_uint8 import add_noise_uint8


def warp_rows(x: torch.Tensor, m: np.ndarray) -> torch.Tensor:
    """A new tensor: uint8 or float32 NCHW ``x`` (CPU) resampled by forward matrices ``m``
    (N,3,3 float64 numpy, see ``affine_matrix``)."""
    n, c, h, w = x.shape
    m = np.asarray(m, dtype=np.float64)          # (torch tensors are taken too)
    ident = is_identity(m)
    fx, fy = flip_axes(m, h, w)
    out = empty_batch(x.shape, x.dtype)
    if ident.any():                       # identity rows as they came; every other row is written below
        idx = torch.from_numpy(np.flatnonzero(ident))
        out[idx] = x[idx]
    for mask, dims in ((fx & ~fy, (-1,)), (fy & ~fx, (-2,)), (fx & fy, (-2, -1))):
        if mask.any():
            idx = torch.from_numpy(np.flatnonzero(mask))
            out[idx] = x[idx].flip(dims)
    general = np.flatnonzero(~(ident | fx | fy)).tolist()
    if not general:
        return out
    affine_inverse(m[general])            # refuses a matrix with no inverse, as the other backends do
    src, dst = x.numpy(), out.numpy()
    forward = np.ascontiguousarray(m[:, :2])
    wide = x.dtype == torch.float64       # OpenCV's CV_64F warp quantizes coordinates (5/255 off): use float32
    if x.dtype == torch.uint8 and c in (3, 4):
        _warp_interleaved(src, dst, forward, general)
        return out
    for i in general:
        mat = forward[i]
        for ch in range(c):               # one plane at a time: no NCHW ↔ NHWC copies
            if wide:
                dst[i, ch] = cv2.warpAffine(src[i, ch].astype(np.float32), mat, (w, h), flags=cv2.INTER_LINEAR,
                                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            else:
                cv2.warpAffine(src[i, ch], mat, (w, h), dst=dst[i, ch], flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out


def _warp_interleaved(src: np.ndarray, dst: np.ndarray, forward: np.ndarray, rows: list[int]) -> None:
    """uint8 rows of 3 or 4 channels: each gathered into one interleaved image (``cv2.merge``),
    warped in one call and split back into ``dst``'s planes. The same bytes as a warp per
    plane (bilinear weights do not depend on the channel, tested). For 256 rows at 224², a
    small gain: 1.04× the rows/s of three planar warps idle and 1.06× with one busy process
    (median of 15 paired repeats, ``benchmarks/results/warp_layout_cpu.json``); a run of 9
    read 1.12× and 0.93× (``python -m streamaug.benchmarks.warp_layout``). A worker's batch
    profile did not show it."""
    c, h, w = src.shape[1:]
    hwc_in, hwc_out = np.empty((h, w, c), np.uint8), np.empty((h, w, c), np.uint8)
    for i in rows:
        cv2.merge([src[i, ch] for ch in range(c)], dst=hwc_in)
        cv2.warpAffine(hwc_in, forward[i], (w, h), dst=hwc_out, flags=cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        cv2.split(hwc_out, [dst[i, ch] for ch in range(c)])


def _planes(t: torch.Tensor):
    """A contiguous NCHW tensor as one 2-D array of rows (what OpenCV's element-wise ops take)."""
    return t.numpy().reshape(-1, t.shape[-1])


class OpenCVRunner:
    """Runs a ``Compose`` on CPU tensors; keeps a float32 workspace between calls, one per
    thread, so converting a uint8 batch for the intensity ops does not page in fresh memory
    every batch, and calls from several threads do not share one (red team s43: two threads
    calling one ``Compose`` got each other's pixels, 17 of 200 calls, once this backend became
    the default on the CPU)."""

    def __init__(self):
        self._local = threading.local()

    @staticmethod
    def uint8_noise(op) -> bool:
        """Whether ``op`` takes the uint8 noise kernel (GaussianNoise itself: a subclass may apply differently)."""
        return type(op) is GaussianNoise

    def workspace(self, shape: torch.Size) -> torch.Tensor:
        buf = getattr(self._local, "workspace", None)
        if buf is None or buf.shape != shape:
            buf = self._local.workspace = torch.empty(shape, dtype=torch.float32)
        return buf

    def __call__(self, compose, images: torch.Tensor, params) -> torch.Tensor:
        if images.device.type != "cpu":
            raise ValueError(f"backend='opencv' runs on CPU tensors, got images on {images.device} "
                             "(use backend='kornia' or 'dali' there)")
        h, w = images.shape[-2:]
        x = images if images.dtype in (torch.uint8, torch.float32, torch.float64) else images.to(torch.float32)
        x = x.contiguous()
        owned = x is not images               # may x be written to?
        last = len(compose.stages) - 1
        for pos, (kind, indices) in enumerate(compose.stages):
            if kind == "warp":
                if x.dtype not in (torch.uint8, torch.float32, torch.float64):   # (a custom op's float16 or
                    x, owned = x.to(torch.float32), True                            # bfloat16: OpenCV warps neither)
                # the batch this call returns may be allocated shared (core.batch_memory): the last
                # stage's, or this warp's when uint8 noise comes last and is added into it in place
                returned = pos == last or (pos == last - 1 and x.dtype == torch.uint8
                                           and self.uint8_noise(compose.ops[compose.stages[last][1][0]]))
                with contextlib.nullcontext() if returned else private_outputs():
                    x, owned = warp_rows(x, compose.fused_array(indices, params, h, w)), True
                continue
            op, p = compose.ops[indices[0]], params[indices[0]]
            if x.dtype == torch.uint8 and pos == last and self.uint8_noise(op):
                sigma = op.row_std(p)         # uint8 in, uint8 out: no float copy of the batch
                if bool((sigma > 0).any()):
                    x, owned = add_noise_uint8(x, sigma, int(p["noise_seed"]), in_place=owned), True
                continue
            if x.dtype == torch.uint8:        # one SIMD pass into the reused workspace
                buf = self.workspace(x.shape)
                cv2.multiply(_planes(x), 1.0 / 255.0, dst=_planes(buf), dtype=cv2.CV_32F)
                x, owned = buf, True
            elif not owned:
                x, owned = x.clone(), True
            x = op.apply_torch(x, p).contiguous()
            if pos != last:                   # every intensity op's output is a valid image (as on DALI)
                x.clamp_(0.0, 1.0)
        if x.dtype == torch.uint8:
            return x if owned else x.clone()
        if images.dtype == torch.uint8:       # round and saturate in one pass (half to even at exact halves)
            out = empty_batch(x.shape, torch.uint8)
            cv2.multiply(_planes(x), 255.0, dst=_planes(out), dtype=cv2.CV_8U)
            return out
        return x.clamp(0.0, 1.0).to(images.dtype)
