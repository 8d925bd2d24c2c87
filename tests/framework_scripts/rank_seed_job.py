"""A torchrun job (CPU, gloo) whose ranks may build their loaders differently, as scripts do.

    torchrun --nproc_per_node=2 rank_seed_job.py SHARDS OUT [--seed-per-rank] [--shuffle N]
             [--batch-per-rank] [--rank0-loader]

Each rank builds ``StreamLoader(SHARDS, seed=7 [+ rank], ...)`` and reads one epoch, writing the
keys it read to ``OUT/rank{r}.json``. ``--rank0-loader`` first has rank 0 alone read another
loader over the same shards (a validation loop on rank 0 only), which must not wait for the
other ranks.
"""
from __future__ import annotations

import argparse
import json
import os
import warnings

import torch
import torch.distributed as dist

from streamaug.loader import StreamLoader


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("shards")
    p.add_argument("out")
    p.add_argument("--seed-per-rank", action="store_true")
    p.add_argument("--batch-per-rank", action="store_true")
    p.add_argument("--shuffle", type=int, default=1000)
    p.add_argument("--rank0-loader", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    if args.rank0_loader and rank == 0:
        alone = StreamLoader(args.shards, batch_size=8, shuffle=False, seed=rank, world_size=1, rank=0)
        sum(len(b.keys) for b in alone)
    loader = StreamLoader(args.shards, batch_size=8 + (rank if args.batch_per_rank else 0), shuffle=args.shuffle,
                          seed=7 + (rank if args.seed_per_rank else 0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        keys = [k for batch in loader for k, pad in zip(batch.keys, batch.is_padding.tolist()) if not pad]
    with open(os.path.join(args.out, f"rank{rank}.json"), "w") as f:
        json.dump({"keys": keys, "warnings": [str(w.message) for w in caught]}, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
