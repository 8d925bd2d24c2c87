"""A torchrun job (CPU, gloo) whose ranks may build their loaders differently, as scripts do.

    torchrun --nproc_per_node=2 rank_seed_job.py SHARDS OUT [--seed-per-rank] [--shuffle N]
             [--shuffle-rank0-only] [--rank0-loaders OTHER] [--epochs N] [--no-check]
             [--rank-zero-everywhere]

Each rank builds ``StreamLoader(SHARDS, seed=7 [+ rank], ...)`` and reads it, writing the keys it
read and the warnings it saw to ``OUT/rank{r}.json``. With ``--epochs N`` the loader is built
anew every epoch with ``seed=7 + epoch``, as scripts that make their loaders per epoch do.
``--rank0-loaders OTHER`` first has rank 0 alone read two loaders, as a script that looks at
samples on rank 0 does: one over SHARDS with ``world_size=1``, and one over the shards OTHER
with the process group's ranks (a validation loop on rank 0 only). Neither may wait for the
other ranks, nor change what the check compares.
"""
from __future__ import annotations

import argparse
import json
import os
import warnings

import torch
import torch.distributed as dist

from streamaug.loader import StreamLoader


def read(loader) -> list[str]:
    return [k for batch in loader for k, pad in zip(batch.keys, batch.is_padding.tolist()) if not pad]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("shards")
    p.add_argument("out")
    p.add_argument("--seed-per-rank", action="store_true")
    p.add_argument("--shuffle", type=int, default=1000)
    p.add_argument("--shuffle-rank0-only", action="store_true")
    p.add_argument("--rank0-loaders", default=None)
    p.add_argument("--epochs", type=int, default=0)
    p.add_argument("--no-check", action="store_true")
    p.add_argument("--rank-zero-everywhere", action="store_true")      # rank=0 with the group's world size
    args = p.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    if args.rank0_loaders and rank == 0:
        read(StreamLoader(args.shards, batch_size=8, seed=123, world_size=1, rank=0))
        read(StreamLoader(args.rank0_loaders, batch_size=8, shuffle=False))
    shuffle = 0 if args.shuffle_rank0_only and rank > 0 else args.shuffle
    seed = 7 + (rank if args.seed_per_rank else 0)
    ranks = dict(world_size=dist.get_world_size(), rank=0) if args.rank_zero_everywhere else {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if args.epochs:
            keys = [read(StreamLoader(args.shards, batch_size=8, shuffle=shuffle, seed=seed + e,
                                      check_ranks=not args.no_check, **ranks)) for e in range(args.epochs)]
        else:
            keys = [read(StreamLoader(args.shards, batch_size=8, shuffle=shuffle, seed=seed,
                                      check_ranks=not args.no_check, **ranks))]
    with open(os.path.join(args.out, f"rank{rank}.json"), "w") as f:
        json.dump({"keys": keys, "warnings": [str(w.message) for w in caught]}, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
