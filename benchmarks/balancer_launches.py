"""Device operations per balanced batch: neighbour tables (fixed reservoirs) vs a search per batch.

    python -m streamaug.benchmarks.balancer_launches --json benchmarks/results/balancer_launches_cpu.json

With an index the balancer's reservoirs are fixed, and the synthesizers look neighbours
up in host tables (``samplers.neighbour_tables``); a streamed reservoir searches the
batch's seeds on the device and reads the result back, which is what every reservoir did
before. Both run here on the same reservoirs (10 classes, one of 500 and nine of 50,
3×32×32 uint8, ``"auto"``): per batch of 128 real rows and 128 synthetic ones, the ATen
operations dispatched (on a GPU, about one kernel launch each: the host cost of a batch
when the images are small) and the CPU milliseconds (fastest of ``--repeats`` passes).
The device reads are not counted here (on the CPU nothing is a device read):
``tests/test_sync_free.py`` shows the table path has none; the search path has one per
synthesized class and batch (``.cpu()`` of the neighbour indices).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from streamaug.benchmarks.cli_arguments import at_least_one
from streamaug.core.flight import BatchInFlight
from streamaug.core.threads import IntraOpThreads
from streamaug.samplers import ADASYN, SMOTE, BorderlineSMOTE, ClassBalancer

SYNTHESIZERS = {"random oversampling": lambda: None, "SMOTE": lambda: SMOTE(),
                "SMOTE thumbnail": lambda: SMOTE(neighbour_space="thumbnail"),
                "Borderline-SMOTE 2": lambda: BorderlineSMOTE(kind="borderline-2"), "ADASYN": lambda: ADASYN()}
COUNTS = [500] + [50] * 9


class DispatchCount(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


def balancer(make, fixed: bool, size: int) -> ClassBalancer:
    rng = np.random.default_rng(0)
    bal = ClassBalancer("auto", make())
    bal.fit(COUNTS)
    for c, n in enumerate(COUNTS):
        rows = torch.from_numpy(rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8))
        bal.reservoir_.fill(c, rows, [("shard", f"{c}_{i}") for i in range(n)])
    bal.reservoir_.fixed = fixed
    bal._filled, bal._rows = True, object()         # filled as the loader's index pass leaves it
    bal.synthesizer.prepare(bal.reservoir_, list(range(len(COUNTS))))
    return bal


def batch(rng: np.random.Generator, size: int) -> BatchInFlight:
    n = 128
    return BatchInFlight(images=torch.from_numpy(rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8)),
                         labels=torch.zeros(n, dtype=torch.int64), keys=[f"r{i}" for i in range(n)],
                         urls=["shard"] * n, is_padding=torch.zeros(n, dtype=torch.bool), batch_id=0)


def measure(make, fixed: bool, size: int, batches: int, repeats: int) -> dict:
    bal, rng = balancer(make, fixed, size), np.random.default_rng(1)
    inputs = [batch(rng, size) for _ in range(batches)]
    bal(batch(rng, size), 128)                       # first batch: lazily built tables, warm-up
    with DispatchCount() as count:
        bal(batch(rng, size), 128)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for b in inputs:                              # batch_id 0: each starts the epoch's slots again
            bal(BatchInFlight(b.images, b.labels, b.keys, b.urls, b.is_padding, 0), 128)
        best = min(best, (time.perf_counter() - start) / batches)
    return {"aten_ops_per_batch": count.ops, "cpu_ms_per_batch": best * 1e3}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=at_least_one, default=32)
    p.add_argument("--batches", type=at_least_one, default=20)
    p.add_argument("--repeats", type=at_least_one, default=3)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    results = {}
    print("| synthesizer | ATen ops/batch, tables | search per batch | CPU ms/batch, tables | search per batch |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, make in SYNTHESIZERS.items():
        with IntraOpThreads(1):        # the caller's thread counts come back after
            r = {mode: measure(make, mode == "tables", args.size, args.batches, args.repeats)
                 for mode in ("tables", "search per batch")}
        results[name] = r
        t, s = r["tables"], r["search per batch"]
        print(f"| {name} | {t['aten_ops_per_batch']} | {s['aten_ops_per_batch']} | "
              f"{t['cpu_ms_per_batch']:.2f} | {s['cpu_ms_per_batch']:.2f} |")
    if args.json:
        from streamaug.benchmarks.timing import write_result

        write_result(args.json, {"size": args.size, "batch": 128, "synthetic_per_batch": 128, "counts": COUNTS,
                                 "threads": 1, "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
