"""A real multi-process training job: DDP over ``StreamLoader``, resumable mid-epoch.

    torchrun --standalone --nproc_per_node=2 -m streamaug.benchmarks.train --data shards/ --epochs 2
    # several nodes: same command on each node, with
    torchrun --nnodes=2 --node_rank=$NODE --nproc_per_node=8 \\
             --rdzv-backend=c10d --rdzv-endpoint=$HEAD:29500 -m streamaug.benchmarks.train \\
             --data 'https://bucket.example/shards/train-{000000..000999}.tar' --index https://bucket.example/shards/index.json

Each rank streams a disjoint part of every epoch (``StreamLoader`` reads rank and
world size from ``torch.distributed``), every rank yields the same number of
batches, and each rank checkpoints its model, optimizer and loader state; a
restarted job continues with bit-identical batches. Logs per-rank throughput
and the global class mix (summed over ranks with ``all_reduce``).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import time

import torch
import torch.distributed as dist

from streamaug.benchmarks.small_cnn import ResNet18Like, SmallCNN
from streamaug.core.process_exit import exit_now
from streamaug.loader import ShardIndex, StreamLoader
from streamaug.loader.shard_index import INDEX_NAME
from streamaug.ops import MixUp
from streamaug.ops.recipes import default_augment
from streamaug.samplers import SMOTE, ClassBalancer


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="shard folder, or URL pattern (with --index)")
    p.add_argument("--index", default=None, help="index.json path/URL (default: in --data folder)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--balance", action="store_true", help="ClassBalancer('auto') with SMOTE")
    p.add_argument("--augment", action="store_true", help="the default augmentation + mixup")
    p.add_argument("--model", default="small", choices=["small", "resnet18"])
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--ckpt", default=None, help="checkpoint prefix; rank r writes PREFIX-rank{r}.pt at the end of "
                   "each epoch (and see --ckpt-every); its folder is made")
    p.add_argument("--ckpt-every", type=int, default=0, help="also checkpoint every this many steps (0: epoch ends only)")
    p.add_argument("--resume", action="store_true", help="continue from --ckpt's checkpoint when there is one")
    p.add_argument("--stop-after", type=int, default=None, help="save and exit hard after this many steps")
    p.add_argument("--trace", default=None, help="JSON-lines per-batch trace prefix; rank r writes PREFIX-rank{r}.jsonl")
    return p.parse_args(argv)


def save_checkpoint(path: str, model, opt, loader, step: int) -> None:
    """Written beside ``path`` and renamed into place: a job killed mid-save keeps the last one."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "loader": loader.state_dict(), "step": step},
               path + ".partial")
    os.replace(path + ".partial", path)


def setup() -> tuple[int, int, torch.device, bool]:
    """``(rank, world size, device, whether this call started the process group)``: under
    torchrun it starts one unless the caller already has."""
    started = "RANK" in os.environ and not dist.is_initialized()
    if started:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local), started
    return rank, world, torch.device("cpu"), started


def main(argv=None) -> int:
    args = parse(argv)
    if args.ckpt_every < 0:
        raise SystemExit(f"--ckpt-every must be 0 (epoch ends only) or a number of steps > 0, got {args.ckpt_every}")
    if not (args.index or os.path.isdir(args.data)):
        raise SystemExit(f"--data {args.data!r} is not a folder of shards; for a URL pattern pass --index")
    rank, world, device, started_group = setup()
    index = ShardIndex.load(args.index or os.path.join(args.data, INDEX_NAME))
    urls = index.urls if os.path.isdir(args.data) else args.data
    kw = {}
    if args.balance:
        kw["balance"] = ClassBalancer("auto", SMOTE())
    if args.augment:
        kw.update(augment=default_augment("dali" if device.type == "cuda" else "kornia", flip=True),
                  mixup=MixUp(alpha=0.2, p=0.5))
    loader = StreamLoader(urls, batch_size=args.batch_size, num_workers=args.workers, seed=args.seed,
                          device=device, index=index, **kw)
    channels = index.image_shape[2] if index.image_shape else 3
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(args.seed)                     # the same initial weights on every rank
        model = (SmallCNN(channels, index.num_classes) if args.model == "small"
                 else ResNet18Like(channels, index.num_classes, small_input=(index.image_shape or (224,))[0] < 64))
    model = model.to(device)
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if dist.is_initialized() else model
    opt = torch.optim.SGD(ddp.parameters(), lr=args.lr, momentum=0.9)
    step, ckpt = 0, (f"{args.ckpt}-rank{rank}.pt" if args.ckpt else None)
    if args.resume and ckpt and os.path.exists(ckpt):
        state = torch.load(ckpt, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        loader.load_state_dict(state["loader"])
        step = state["step"]
    if args.trace:
        os.makedirs(os.path.dirname(args.trace) or ".", exist_ok=True)
    log = open(f"{args.trace}-rank{rank}.jsonl", "a") if args.trace else None
    class_mix = torch.zeros(index.num_classes, dtype=torch.float64, device=device)
    seen, start = 0, time.perf_counter()
    while loader.epoch < args.epochs:
        for batch in loader:
            images, targets = batch
            loss = torch.nn.functional.cross_entropy(ddp(images), targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            seen += len(images)
            class_mix += torch.bincount(batch.hard_labels[~batch.is_padding], minlength=index.num_classes).double()
            if log:
                digest = hashlib.sha1(images.cpu().numpy().tobytes()).hexdigest()[:16]
                log.write(json.dumps({"rank": rank, "epoch": loader.epoch, "step": step, "keys": batch.keys,
                                      "labels": batch.hard_labels.tolist(), "padding": batch.is_padding.tolist(),
                                      "synthetic": batch.is_synthetic.tolist(), "pixels": digest,
                                      "loss": loss.item()}) + "\n")
                log.flush()
            if ckpt and args.ckpt_every and step % args.ckpt_every == 0:
                save_checkpoint(ckpt, model, opt, loader, step)
            if args.stop_after is not None and step == args.stop_after:
                if ckpt:
                    save_checkpoint(ckpt, model, opt, loader, step)
                if log:
                    log.close()
                os._exit(0)                               # like a kill: no cleanup, no barrier
        if ckpt:                                          # the epoch is over: a restart begins the next
            save_checkpoint(ckpt, model, opt, loader, step)
    elapsed = time.perf_counter() - start
    rate = torch.tensor([seen / max(elapsed, 1e-9)], device=device, dtype=torch.float64)
    if dist.is_initialized():
        dist.all_reduce(class_mix)
        rates = [torch.zeros_like(rate) for _ in range(world)]
        dist.all_gather(rates, rate)
    else:
        rates = [rate]
    summary = {"rank": rank, "world_size": world, "device": str(device), "steps": step,
               "samples_per_s_per_rank": [float(r) for r in rates], "global_class_mix": class_mix.long().tolist(),
               "loader_stats": loader.stats.as_dict()}
    if log:
        log.write(json.dumps({"summary": summary}) + "\n")
        log.close()
    if rank == 0:
        print(json.dumps(summary))
    loader.close()
    if started_group:                                     # a caller's group is the caller's to end
        dist.barrier()                                    # no rank tears gloo down mid-collective
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    exit_now(main())      # no interpreter shutdown for gloo's threads to abort in (see core/process_exit)
