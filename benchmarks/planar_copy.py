"""HWC rows into a CHW batch: NumPy's transposed copy against ``core.planar_copy`` (``cv2.split``).

    python -m streamaug.benchmarks.planar_copy --json benchmarks/results/planar_copy_cpu.json

256 uint8 224×224×3 rows (``--rows``, ``--size``), one OpenCV thread as in a reading worker;
the two ways timed side by side, idle and "with N busy workers" (``timing.paired_rates``);
the ratio is the median of the paired repeats.
"""
from __future__ import annotations

import numpy as np

from streamaug.benchmarks.cli_arguments import kernel_bench_arguments
from streamaug.benchmarks.timing import paired_rates, paired_ratio, write_result


def main(argv=None) -> int:
    import cv2

    from streamaug.core.planar_copy import hwc_into_chw

    a = kernel_bench_arguments(__doc__, argv)
    cv2.setNumThreads(1)
    rows = list(np.random.default_rng(0).integers(0, 256, (a.rows, a.size, a.size, 3), dtype=np.uint8))
    out = np.empty((a.rows, 3, a.size, a.size), dtype=np.uint8)

    def numpy_transpose() -> int:
        for i, r in enumerate(rows):
            out[i] = r.transpose(2, 0, 1)
        return len(rows)

    def planar_copy() -> int:
        for i, r in enumerate(rows):
            hwc_into_chw(r, out[i])
        return len(rows)
    results = paired_rates({"numpy transpose": numpy_transpose, "hwc_into_chw (cv2.split)": planar_copy},
                           a.busy, a.repeats)
    ratio = paired_ratio(results, "hwc_into_chw (cv2.split)", "numpy transpose")
    for name, r in results.items():
        print(f"{name:>26}: {a.rows * 1000 / r['items_per_s']:.1f} ms per {a.rows} rows idle"
              + (f", {a.rows * 1000 / r['busy']['items_per_s']:.1f} with {a.busy} busy" if a.busy else ""))
    print(f"hwc_into_chw / numpy transpose: {ratio:.2f}x rows/s")
    if a.json:
        write_result(a.json, {"rows": a.rows, "size": a.size, "repeats": a.repeats, "busy": a.busy,
                              "results": results, "speedup": ratio})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
