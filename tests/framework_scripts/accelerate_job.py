"""An accelerate job under ``torchrun --nproc_per_node=2`` (CPU, gloo) with a StreamLoader.

The loader is built before ``Accelerator()`` creates the process group, passed through
``prepare``, its batches moved with ``send_to_device``, and it is registered for checkpointing.
Every batch each rank trains on goes to ``<out>/<tag>-rank<r>.jsonl``.

    torchrun --nproc_per_node=2 accelerate_job.py --train DIR --val DIR --out DIR --tag ref --save-at 7 --skip 3
    torchrun --nproc_per_node=2 accelerate_job.py --train DIR --val DIR --out DIR --tag resumed --resume DIR/state
"""
from __future__ import annotations

import json
import os

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import send_to_device

from digits_shards import job_arguments, make_loaders, record

from streamaug.core.process_exit import exit_now

EPOCHS = 2


def tiny_cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2),
                               torch.nn.Flatten(), torch.nn.Linear(32, 10))


def skip_check(args, accelerator) -> list[dict]:
    """accelerate's resume recipe for a DataLoader, on fresh loaders: a full pass, then the same pass
    with the first ``args.skip`` batches skipped. An error is recorded, so the training rows survive."""
    full, _ = make_loaders(args.train, args.val)
    rows = [{"stage": "full", **record(b)} for b in full]
    fresh, _ = make_loaders(args.train, args.val)
    try:
        rows += [{"stage": "skipped", **record(b)} for b in accelerator.skip_first_batches(fresh, args.skip)]
    except Exception as e:  # noqa: BLE001 - reported to the test, which fails on it
        rows.append({"stage": "skip_error", "error": f"{type(e).__name__}: {e}"})
    return rows


def main() -> None:
    p = job_arguments()
    p.add_argument("--skip", type=int, default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    loader, _ = make_loaders(args.train, args.val)       # before the process group exists
    accelerator = Accelerator(cpu=True)
    model = tiny_cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    accelerator.register_for_checkpointing(loader)
    rows: list[dict] = []

    step, start_epoch = 0, 0
    if args.resume:
        accelerator.load_state(args.resume)
        with open(os.path.join(args.resume, "step.txt")) as f:
            step = int(f.read())
        start_epoch = step // len(loader)    # len() is per rank: the group exists now
    for epoch in range(start_epoch, EPOCHS):
        model.train()
        for batch in loader:
            batch = send_to_device(batch, accelerator.device)
            rows.append({"stage": "train", "epoch": epoch, "step": step, **record(batch)})
            images, targets = batch
            loss = F.cross_entropy(model(images.float() / 255), targets)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            if step == args.save_at:
                state = os.path.join(args.out, "state")
                accelerator.save_state(state)
                if accelerator.is_main_process:
                    with open(os.path.join(state, "step.txt"), "w") as f:
                        f.write(str(step))
                accelerator.wait_for_everyone()
    if args.skip is not None:
        rows += skip_check(args, accelerator)
    with open(os.path.join(args.out, f"{args.tag}-rank{accelerator.process_index}.jsonl"), "w") as f:
        f.write(json.dumps({"world_size": accelerator.num_processes, "distributed": str(accelerator.distributed_type),
                            "prepared_type": type(loader).__name__}) + "\n")
        for row in rows:
            f.write(json.dumps(row) + "\n")
    accelerator.wait_for_everyone()  # no rank tears gloo down while the other still uses it
    accelerator.end_training()       # accelerate's recipe: destroys the process group before exit
    exit_now(0)                      # no interpreter finalization for gloo's threads to abort in


if __name__ == "__main__":
    main()
