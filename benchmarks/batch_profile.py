"""Where one batch's time goes: the ``streamaug bench`` pipeline, in-process, on one thread.

    python -m streamaug.benchmarks.batch_profile --json benchmarks/results/batch_profile_cpu.json

Reads the bench's own shards (``make_bench_shards``: 2,000 224×224 jpg by default) with
``StreamLoader(num_workers=0, device="cpu")`` and the bench's stages (flip, rotate,
shear, noise, then MixUp α=0.2), so reading, decoding and every stage run in this
process, on the one intra-op thread the loader gives its stages here. After one
warm-up batch it profiles ``--batches`` batches with ``cProfile`` and prints the
functions with the most time of their own, in milliseconds per batch. This is what one
reading worker does per batch when the stages run in the workers (``worker_stages``).
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import tempfile
import time

from streamaug.benchmarks.cli_arguments import at_least_one


def profile_batches(kind: str, n: int, backend: str, batches: int, data: str, top: int) -> dict:
    from streamaug.benchmarks.bench_data import make_bench_shards
    from streamaug.benchmarks.bench_pipelines import ops
    from streamaug.loader import StreamLoader
    from streamaug.ops import MixUp

    index = make_bench_shards(data, kind, n)
    loader = StreamLoader(index.urls, batch_size=256, num_workers=0, seed=0, device="cpu", index=index,
                          augment=ops(backend), mixup=MixUp(0.2))
    it = iter(loader)
    next(it)                                         # warm-up: imports, workspaces
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    for _ in range(batches):
        next(it)
    profiler.disable()
    per_batch_ms = (time.perf_counter() - start) / batches * 1000
    stats = pstats.Stats(profiler).stats             # {(file, line, name): (cc, nc, tottime, cumtime, callers)}
    rows = sorted(((v[2] / batches * 1000, f"{os.path.basename(k[0])}:{k[1]}({k[2]})") for k, v in stats.items()),
                  reverse=True)[:top]
    return {"kind": kind, "samples": n, "backend": backend, "batch": 256, "batches": batches,
            "per_batch_ms_profiled": per_batch_ms, "top_own_time_ms_per_batch": [{"function": f, "ms": ms} for ms, f in rows]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kind", default="jpg224", choices=["jpg224", "npy32"])
    p.add_argument("--n", type=at_least_one, default=2000, help="samples in the bench shards (the bench's 2,000 at 224²)")
    p.add_argument("--backend", default="opencv", choices=["opencv", "kornia"])
    p.add_argument("--batches", type=at_least_one, default=4)
    p.add_argument("--top", type=at_least_one, default=12)
    p.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "streamaug-bench-data"))
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    result = profile_batches(args.kind, args.n, args.backend, args.batches, args.data, args.top)
    print(f"{args.kind} {args.backend}: {result['per_batch_ms_profiled']:.0f} ms per batch of 256 under cProfile")
    for row in result["top_own_time_ms_per_batch"]:
        print(f"{row['ms']:8.1f} ms  {row['function']}")
    if args.json:
        from streamaug.benchmarks.timing import write_result

        write_result(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
