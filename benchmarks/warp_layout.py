"""uint8 warps at 224²: one ``cv2.warpAffine`` per plane against ``opencv_backend.warp_rows``
(3-channel rows merged, warped in one call, split back).

    python -m streamaug.benchmarks.warp_layout --json benchmarks/results/warp_layout_cpu.json

256 uint8 3×224×224 rows (``--rows``, ``--size``), each with its own rotation about the
centre and a shear (the bench's ops: no row is skipped as a flip or the identity), one
OpenCV thread as in a reading worker; the two ways timed side by side, idle and "with N
busy workers" (``timing.paired_rates``); the ratio is the median of the paired repeats.
Both give the same bytes (``tests/test_ops_geometry.py``).
"""
from __future__ import annotations

import numpy as np
import torch

from streamaug.benchmarks.cli_arguments import kernel_bench_arguments
from streamaug.benchmarks.timing import paired_rates, paired_ratio, write_result


def main(argv=None) -> int:
    import cv2

    from streamaug.ops.backends.opencv_backend import warp_rows

    a = kernel_bench_arguments(__doc__, argv)
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    n, s = a.rows, a.size
    x = torch.randint(0, 256, (n, 3, s, s), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    rng = np.random.default_rng(0)
    m = np.zeros((n, 3, 3))
    m[:, 2, 2] = 1.0
    for i in range(n):
        m[i, :2] = cv2.getRotationMatrix2D((s / 2 - 0.5, s / 2 - 0.5), rng.uniform(-30, 30), 1.0)
        m[i, 0, 1] += rng.uniform(-0.25, 0.25)
    src = x.numpy()

    def planar() -> int:
        out = torch.empty_like(x).numpy()            # a new batch, as warp_rows makes
        for i in range(n):
            for c in range(3):
                cv2.warpAffine(src[i, c], m[i, :2], (s, s), dst=out[i, c], flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        return n

    def interleaved() -> int:
        warp_rows(x, m)
        return n
    results = paired_rates({"per plane": planar, "warp_rows (interleaved)": interleaved}, a.busy, a.repeats)
    ratio = paired_ratio(results, "warp_rows (interleaved)", "per plane")
    for name, r in results.items():
        print(f"{name:>24}: {n * 1000 / r['items_per_s']:.1f} ms per {n} rows idle"
              + (f", {n * 1000 / r['busy']['items_per_s']:.1f} with {a.busy} busy" if a.busy else ""))
    busy_ratio = paired_ratio(results, "warp_rows (interleaved)", "per plane", busy=True) if a.busy else None
    print(f"warp_rows / per plane: {ratio:.2f}x rows/s (median of paired repeats)"
          + (f", {busy_ratio:.2f}x with {a.busy} busy" if a.busy else ""))
    if a.json:
        write_result(a.json, {"rows": n, "size": s, "repeats": a.repeats, "busy": a.busy,
                              "results": results, "speedup": ratio, "speedup_busy": busy_ratio})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
