"""``streamaug demo``: smoke run until the full demo lands. Writes digits shards,
streams one epoch, prints samples/s."""
from __future__ import annotations

import argparse
import os
import time

from streamaug.loader import StreamLoader, write_shards


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="streamaug demo")
    p.add_argument("--out", default="demo-out")
    p.add_argument("--workers", type=int, default=0)
    args = p.parse_args(argv)
    shards = os.path.join(args.out, "shards")
    index = write_shards("digits", shards, maxcount=300)
    loader = StreamLoader([s.url for s in index.shards], batch_size=64, num_workers=args.workers, seed=0)
    start, n = time.perf_counter(), 0
    for images, labels in loader:
        n += len(labels)
    dt = time.perf_counter() - start
    print(f"streamed {n} samples in {dt:.2f}s: {n / dt:.0f} samples/s ({args.workers} workers); stats {loader.stats}")
    return 0
