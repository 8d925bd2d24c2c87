"""Weighted sums of uint8 rows in one OpenCV pass per row: the CPU kernel of MixUp and SMOTE.

``out[r] = round(w[r]·source[first[r]] + (1 − w[r])·source[second[r]])`` for ``w`` in
[0, 1] (so no value leaves 0..255). ``cv2.addWeighted`` reads the two rows where they
are and writes the uint8 row: no gathered copy of the rows and no float copy of the
batch. It sums in float and rounds half to even; against the exact value it can be
one level off only where that value is a tie or within float error of one (tested in
``tests/test_ops_intensity_mix.py`` and ``tests/test_class_balancer.py``).

OpenCV is optional (it comes with the ``bench`` extra): :func:`opencv_blend` returns
None without it, and the callers keep their torch route.

For 256 rows at 224² on one thread: MixUp 90 → 28 ms; SMOTE's 170 synthetic rows,
gather plus interpolation, 101 → 9 ms (``benchmarks/batch_profile.py`` profiles the
bench's batch).
"""
from __future__ import annotations

import functools
import importlib
from typing import Callable, Sequence

import torch

from .batch_memory import empty_batch


def blend_rows(source: torch.Tensor, first: Sequence[int], second: Sequence[int],
               weight: Sequence[float]) -> torch.Tensor:
    """A new ``(len(first), *source.shape[1:])`` uint8 tensor (see the module). ``source``:
    a contiguous uint8 CPU tensor of rows."""
    import cv2

    if source.dtype != torch.uint8 or source.device.type != "cpu" or not source.is_contiguous():
        raise ValueError(f"blend_rows takes contiguous uint8 CPU rows, got {source.dtype} on {source.device}")
    out = empty_batch((len(first), *source.shape[1:]), torch.uint8)
    if len(out) == 0:
        return out
    src = source.numpy().reshape(len(source), -1)
    dst = out.numpy().reshape(len(out), -1)
    for r, (i, j, w) in enumerate(zip(first, second, weight)):
        cv2.addWeighted(src[i], float(w), src[j], 1.0 - float(w), 0.0, dst=dst[r])
    return out


@functools.cache
def opencv_blend() -> Callable | None:
    """:func:`blend_rows` where OpenCV imports, else None."""
    try:
        importlib.import_module("cv2")
    except ImportError:
        return None
    return blend_rows
