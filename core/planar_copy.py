"""An HWC image copied into CHW planes (what ``collate_rows`` does for every decoded row).

NumPy's copy through a transposed view reads with a 3-element stride; ``cv2.split`` into
the planes deinterleaves with SIMD. For 256 rows at 224², 20.4 ms against 8.5 ms on this
project's 2-core Xeon (``python -m streamaug.benchmarks.planar_copy``,
``benchmarks/results/planar_copy_cpu.json``). OpenCV is used only
when something has imported it already (the OpenCV backend, uint8 MixUp, SMOTE's row
blend): importing it just for this would cost a plain loader's worker more than it saves.
The two give the same bytes.
"""
from __future__ import annotations

import sys

import numpy as np


def hwc_into_chw(src: np.ndarray, dst: np.ndarray) -> None:
    """Write uint8 ``src`` (H, W, C) into ``dst`` (C, H, W), whose planes are C-contiguous."""
    cv2 = sys.modules.get("cv2")
    h, w, c = src.shape
    if (cv2 is not None and 1 < c <= 4 and h and w and src.dtype == np.uint8 and dst.dtype == np.uint8
            and dst.shape == (c, h, w) and dst.flags.c_contiguous):
        cv2.split(np.ascontiguousarray(src), [dst[i] for i in range(c)])
    else:
        dst[...] = src.transpose(2, 0, 1)
