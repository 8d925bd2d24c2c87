"""What SMOTE costs at 224² with neighbours found in pixels vs in a reduced space.

    python -m streamaug.benchmarks.smote_neighbour_space --n 2048 --batch 64 --size 224

A stream of uint8 3×size×size batches (10% minority, binary, ``"auto"``: the
minority is synthesized up to the majority) goes through ``ClassBalancer`` with
``SMOTE(k_neighbors=5, neighbour_space=...)``; the timed part is the balancer
stage alone (stream generation excluded), as in ``smote_vs_imblearn``. The
synthetic images are full resolution in every case; only the neighbour search
changes. Each space runs twice, alternating, and the faster pass is kept.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from streamaug.benchmarks.busy_workers import load_average
from streamaug.benchmarks.machine_info import machine_info
from streamaug.core import BatchInFlight
from streamaug.samplers import SMOTE, ClassBalancer

SPACES = {"pixels": None, "thumbnail 8x8": "thumbnail", "projection 64": "projection"}


def run(space, n: int, batch: int, size: int) -> dict:
    y = np.zeros(n, dtype=np.int64)
    y[: n // 10] = 1
    y = np.random.default_rng(0).permutation(y)
    balancer = ClassBalancer("auto", SMOTE(k_neighbors=5, neighbour_space=space), random_state=0, reservoir_size=512)
    balancer.fit(np.bincount(y, minlength=2).tolist())
    total = balancer.synthetic_counts()[0]
    gen = torch.Generator().manual_seed(1)
    done, busy, made, batch_id = 0, 0.0, 0, 0
    while done < n:
        m = min(batch, n - done)
        images = torch.randint(0, 256, (m, 3, size, size), generator=gen, dtype=torch.uint8)
        s = round(total * (done + m) / n) - round(total * done / n)
        item = BatchInFlight(images=images, labels=torch.from_numpy(y[done:done + m]),
                             keys=[str(i) for i in range(done, done + m)], urls=["stream"] * m,
                             is_padding=torch.zeros(m, dtype=torch.bool), batch_id=batch_id)
        start = time.perf_counter()
        out = balancer(item, s)
        busy += time.perf_counter() - start
        made += int(out.is_synthetic.sum())
        done, batch_id = done + m, batch_id + 1
    return {"synthetic": made, "seconds": busy, "ms_per_batch": 1000 * busy / batch_id,
            "synthetic_per_s": made / busy, "reservoir_mib": balancer.reservoir_.memory_bytes() / 2**20}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=2048)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    best: dict[str, dict] = {}
    for _ in range(2):
        for name, space in SPACES.items():
            r = run(space, args.n, args.batch, args.size)
            if name not in best or r["seconds"] < best[name]["seconds"]:
                best[name] = r
    base = best["pixels"]["seconds"]
    print(f"| neighbour space | balancer ms/batch | synthetic/s | vs pixels | reservoir MiB |  "
          f"(N={args.n}, batch {args.batch}, 3x{args.size}x{args.size}, threads {torch.get_num_threads()})")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, r in best.items():
        print(f"| {name} | {r['ms_per_batch']:.1f} | {r['synthetic_per_s']:,.0f} | {base / r['seconds']:.1f}x faster"
              f" | {r['reservoir_mib']:.0f} |")
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": best, "machine": machine_info(),
                       "loadavg_at_end": load_average()}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
