"""What Gaussian noise costs a reading worker: streamaug's byte-lookup field against a
Gaussian sampler, on a uint8 batch and on a float batch, with albumentations' GaussNoise.

    python -m streamaug.benchmarks.noise_field_speed --json benchmarks/results/noise_field_speed_cpu.json

One thread (torch and OpenCV), as in a ``StreamLoader`` worker. A batch of ``--rows``
uint8 3×size×size images gets σ = 0.05 noise (the ``streamaug bench`` setting) by:

- ``uint8 lookup``: ``opencv_uint8.add_noise_uint8`` (what ``backend="opencv"`` runs);
- ``uint8 normal_``: a torch ``normal_`` field per chunk, added with ``cv2.addWeighted``
  (the kernel before the lookup field, kept here as the reference);
- ``float lookup`` / ``float normal_``: the same on a float32 [0, 1] batch
  (``noise_field.add_gaussian_field_`` against ``normal_`` + ``add_``: the Kornia
  backend on the CPU);
- ``albumentations``: ``A.GaussNoise(std_range=(0.05, 0.05))`` image by image, as the bench's
  DataLoader + albumentations pipeline runs it.

All are timed side by side, idle and "with N busy workers" (``timing.paired_rates``);
rows/s and the ratios (medians of the paired repeats) are printed and written.
"""
from __future__ import annotations

import numpy as np
import torch

from streamaug.benchmarks.cli_arguments import kernel_bench_arguments
from streamaug.benchmarks.timing import paired_rates, paired_ratio, write_result


def routes(rows: int, size: int) -> dict:
    import cv2

    from streamaug.ops.backends.opencv_uint8 import add_noise_uint8
    from streamaug.ops.intensity.noise_field import add_gaussian_field_, row_chunks

    x = torch.randint(0, 256, (rows, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    xf = x.float() / 255
    sigma = torch.full((rows,), 0.05)
    chunks = row_chunks(x.shape)

    def uint8_normal() -> int:          # a new batch, as add_noise_uint8 makes
        src, dst = x.numpy().reshape(rows, -1), torch.empty_like(x).numpy().reshape(rows, -1)
        for i, sl in enumerate(chunks):
            field = torch.empty(x[sl].shape).normal_(0.0, 1.0, generator=torch.Generator().manual_seed(i))
            f = field.numpy().reshape(len(field), -1)
            for k, r in enumerate(range(sl.start, sl.stop)):
                cv2.addWeighted(src[r], 1.0, f[k], 255 * 0.05, 0.0, dst=dst[r], dtype=cv2.CV_8U)
        return rows

    def float_normal() -> int:
        y = xf.clone()
        for i, sl in enumerate(chunks):
            field = torch.empty(y[sl].shape).normal_(0.0, 1.0, generator=torch.Generator().manual_seed(i))
            y[sl].add_(field, alpha=0.05)
        return rows

    def float_lookup() -> int:
        add_gaussian_field_(xf.clone(), sigma, 1)
        return rows

    found = {"uint8 lookup": lambda: (add_noise_uint8(x, sigma, 1), rows)[1], "uint8 normal_": uint8_normal,
             "float lookup": float_lookup, "float normal_": float_normal}
    try:
        import albumentations as A
    except ImportError:
        return found
    noise = A.GaussNoise(std_range=(0.05, 0.05), p=1.0)
    hwc = [np.ascontiguousarray(im.permute(1, 2, 0).numpy()) for im in x]

    def albumentations() -> int:
        for im in hwc:
            noise(image=im)
        return rows
    found["albumentations"] = albumentations
    return found


def main(argv=None) -> int:
    a = kernel_bench_arguments(__doc__, argv, repeats=7)
    import cv2

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    results = paired_rates(routes(a.rows, a.size), a.busy, a.repeats)
    pairs = [("uint8 lookup", "uint8 normal_"), ("float lookup", "float normal_"), ("uint8 lookup", "albumentations")]
    ratios = {f"{x} / {y}": paired_ratio(results, x, y) for x, y in pairs if y in results}
    for name, r in results.items():
        busy = f"; with {a.busy} busy {r['busy']['items_per_s']:,.0f} ({r['busy_vs_idle']:.2f})" if a.busy else ""
        print(f"{name:>16}: {r['items_per_s']:,.0f} rows/s idle, {1000 * r['cpu_s_per_item']:.3f} CPU ms/row{busy}")
    for name, v in ratios.items():
        print(f"{name}: {v:.2f}x")
    if a.json:
        write_result(a.json, {"rows": a.rows, "size": a.size, "sigma": 0.05, "threads": 1, "repeats": a.repeats,
                              "busy": a.busy, "results": results, "ratios": ratios})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
