"""uint8 kernels in OpenCV: element-wise stages computed straight into a uint8 batch
(MixUp's and SMOTE's row blend, shared with the samplers, is ``core.row_blend``).

The float route for a uint8 batch costs two full-batch conversions (uint8 → float32 and
back) around the arithmetic; at 224² they were 83 of a worker's 573 ms per batch
(``benchmarks/results/batch_profile_cpu.json`` at ea5745c). The noise kernel here reads
the uint8 rows and writes uint8 rows: each row's noise is looked up in float32 from the
field's bytes (``cv2.LUT``, see ``noise_field``) and added with one saturating ``cv2.add``
(rounded half to even), so no float copy of the batch is made.

They compute the same formula as the float route and round once, as it does; the
results agree with it up to one level where the exact value is a tie or within float
error of one (tested in ``tests/test_ops_intensity_mix.py``).
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

from streamaug.core.batch_memory import empty_batch

from ..intensity.noise_field import HALF_LEVELS, chunk_bytes, row_chunks, run_chunks


def _rows(t: torch.Tensor) -> np.ndarray:
    """A contiguous CPU batch as an (N, C·H·W) array sharing its memory."""
    return t.numpy().reshape(len(t), -1)


def add_noise_uint8(x: torch.Tensor, sigma: torch.Tensor, seed: int, in_place: bool = False) -> torch.Tensor:
    """``saturate(round(x + 255·sigma[row]·gaussian_field(x.shape, seed)))``: a new uint8 batch
    (``core.batch_memory.empty_batch``), or ``x`` itself, overwritten, with ``in_place``.

    The float route gives ``round(255·(x/255 + sigma·field))``, the same up to float
    error. The field is ``gaussian_field``'s, from the same bytes (its chunks, its
    generators): each row's values are looked up with ``cv2.LUT`` in the half-levels
    scaled by that row's σ, summed, and added while the chunk is in cache. ``x``:
    contiguous uint8 NCHW on the CPU; ``sigma``: (N,) on the [0, 1] scale.
    """
    if x.dtype != torch.uint8 or x.device.type != "cpu" or not x.is_contiguous():
        raise ValueError(f"add_noise_uint8 takes a contiguous uint8 CPU batch, got {x.dtype} on {x.device}")
    out = x if in_place else empty_batch(x.shape, torch.uint8)
    if x.numel() == 0:
        return out
    src, dst = _rows(x), _rows(out)
    scale = (sigma.double() * 255.0).tolist()
    chunks = row_chunks(x.shape)
    per_row = src.shape[1]

    def fill(i: int) -> None:
        rows = chunks[i]
        picks = chunk_bytes(seed, i, rows.stop - rows.start, per_row, x.device).numpy()
        for k, r in enumerate(range(rows.start, rows.stop)):
            if scale[r] == 0.0:
                if not in_place:
                    dst[r] = src[r]
                continue
            table = HALF_LEVELS * np.float32(scale[r])     # the row's noise, A and B, by byte
            # rows as (1, n) arrays: OpenCV reads a 1-D array of 4 or fewer values as a scalar,
            # and then returns a new array instead of writing ``dst``
            noise = cv2.LUT(picks[0, k].reshape(1, -1), table)
            cv2.add(noise, cv2.LUT(picks[1, k].reshape(1, -1), table), dst=noise)
            cv2.add(src[r].reshape(1, -1), noise, dst=dst[r].reshape(1, -1), dtype=cv2.CV_8U)
    run_chunks(fill, len(chunks), x.device)
    return out
