"""Loader-only throughput: samples/s of one epoch, after a warm-up epoch.

    python -m streamaug.benchmarks.loader_throughput --n 4000 --workers 0 2

Each setting is also timed "with N busy workers" (``--busy``, default 1: N CPU-bound
processes spin during those epochs, see ``busy_workers.py``); idle and busy epochs
alternate, and the JSON records ``busy_vs_idle`` and the load average.
"""
from __future__ import annotations

import argparse
import json
import time

from streamaug.benchmarks.bench_data import make_bench_shards
from streamaug.benchmarks.busy_workers import busy_workers, load_average
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
    p.add_argument("--busy", type=int, default=1, help="busy workers for the contention figure (0: skip it)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    rows = []
    for kind in ("npy32", "jpg224"):
        index = make_bench_shards(args.data, kind, args.n)
        for w in args.workers:
            loader = StreamLoader(index.urls, batch_size=256, num_workers=w, seed=0, device="cpu")
            epoch_rate(loader)                                  # warm-up (page cache, worker start)
            idle, loaded = [], []
            for _ in range(args.repeats):
                idle.append(epoch_rate(loader))
                if args.busy:
                    with busy_workers(args.busy):
                        loaded.append(epoch_rate(loader))
            loader.close()
            row = {"data": kind, "num_workers": w, "samples_per_s": sorted(idle)[len(idle) // 2],
                   "loadavg": load_average()}
            text = ""
            if loaded:
                row["busy"] = {"workers": args.busy, "samples_per_s": sorted(loaded)[len(loaded) // 2]}
                row["busy_vs_idle"] = row["busy"]["samples_per_s"] / row["samples_per_s"]
                text = f", with {args.busy} busy: {row['busy']['samples_per_s']:8.0f} ({row['busy_vs_idle']:.2f}x)"
            rows.append(row)
            print(f"{kind:7s} workers={w}: {row['samples_per_s']:8.0f} samples/s{text} (median of {args.repeats}, "
                  f"load {row['loadavg'][0]:.2f})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine_info(), "n": args.n, "busy_workers": args.busy, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
