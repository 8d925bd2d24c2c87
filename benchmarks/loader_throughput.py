"""Loader-only throughput: samples/s of one epoch, after a warm-up epoch.

    python -m streamaug.benchmarks.loader_throughput --n 4000 --workers 0 2
"""
from __future__ import annotations

import argparse
import json
import time

from streamaug.benchmarks.bench_data import make_bench_shards
from streamaug.benchmarks.machine_info import machine_info
from streamaug.loader import StreamLoader


def epoch_rate(loader) -> float:
    start, n = time.perf_counter(), 0
    for _, labels in loader:
        n += len(labels)
    return n / (time.perf_counter() - start)


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=4000)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--data", default="/tmp/streamaug-bench")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    rows = []
    for kind in ("npy32", "jpg224"):
        index = make_bench_shards(args.data, kind, args.n)
        for w in args.workers:
            loader = StreamLoader(index.urls, batch_size=256, num_workers=w, seed=0, device="cpu")
            epoch_rate(loader)                                  # warm-up (page cache, worker start)
            rates = sorted(epoch_rate(loader) for _ in range(args.repeats))
            rows.append({"data": kind, "num_workers": w, "samples_per_s": rates[len(rates) // 2]})
            print(f"{kind:7s} workers={w}: {rows[-1]['samples_per_s']:8.0f} samples/s (median of {args.repeats})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine_info(), "n": args.n, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
