"""A Lightning job with StreamLoader train and val loaders passed straight to ``Trainer.fit()``.

No overrides: no ``use_distributed_sampler=False``, no hooks on the loaders. Every train and val
batch each rank sees is appended to ``<out>/<tag>-rank<r>.jsonl`` (keys, real keys, a checksum of
the pixels and targets), so a test can compare ranks and runs.

    python lightning_job.py --train DIR --val DIR --out DIR --tag ref --devices 2 --save-at 7
    python lightning_job.py ... --tag resumed --devices 2 --resume DIR/step7.ckpt
"""
from __future__ import annotations

import json
import os

import lightning as L
import torch
import torch.nn.functional as F

from digits_shards import job_arguments, make_loaders, record

from streamaug.core.process_exit import exit_now

class TinyDigits(L.LightningModule):
    """A tiny CNN on 8×8 digits; it logs what it is fed into ``self.seen``."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(),
                                       torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(32, 10))
        self.seen: list[dict] = []

    def forward(self, images):
        return self.net(images.float() / 255)

    def _note(self, stage: str, batch, batch_idx: int) -> None:
        self.seen.append({"stage": stage, "epoch": self.current_epoch, "step": self.global_step,
                          "idx": batch_idx, **record(batch)})

    def training_step(self, batch, batch_idx):
        self._note("train", batch, batch_idx)
        images, targets = batch          # targets: soft (N, 10) on mixed batches
        return F.cross_entropy(self(images), targets)

    def validation_step(self, batch, batch_idx):
        self._note("sanity" if self.trainer.sanity_checking else "val", batch, batch_idx)
        logits = self(batch.images)
        return (logits.argmax(1) == batch.hard_labels).float().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class SaveAtStep(L.Callback):
    """Save a checkpoint after global step ``step`` (mid-epoch), on every rank (the save is collective)."""

    def __init__(self, path: str, step: int):
        self.path, self.step = path, step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)


def trainer_for(devices: int, epochs: int, callbacks=(), **kw) -> L.Trainer:
    extra = {"strategy": "ddp"} if devices > 1 else {}
    return L.Trainer(accelerator="cpu", devices=devices, max_epochs=epochs, callbacks=list(callbacks),
                     logger=False, enable_progress_bar=False, enable_model_summary=False,
                     enable_checkpointing=False, deterministic=True, **extra, **kw)


def main() -> None:
    p = job_arguments()
    p.add_argument("--devices", type=int, default=2)
    p.add_argument("--epochs", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(1)
    L.seed_everything(0, workers=True, verbose=False)
    train_loader, val_loader = make_loaders(args.train, args.val)    # built before the process group exists
    model = TinyDigits()
    callbacks = [SaveAtStep(os.path.join(args.out, f"step{args.save_at}.ckpt"), args.save_at)] if args.save_at else []
    trainer = trainer_for(args.devices, args.epochs, callbacks)
    trainer.fit(model, train_loader, val_loader, ckpt_path=args.resume)
    with open(os.path.join(args.out, f"{args.tag}-rank{trainer.global_rank}.jsonl"), "w") as f:
        for row in model.seen:
            f.write(json.dumps(row) + "\n")
    if torch.distributed.is_initialized():             # (Lightning's atexit would destroy it: skipped)
        torch.distributed.barrier()
        exit_now(0)                      # no interpreter finalization for gloo's threads to abort in


if __name__ == "__main__":
    main()
