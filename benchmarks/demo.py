"""``streamaug demo``: imbalanced real data → one small CNN trained with each set of
stages (plain, augment, random oversampling, SMOTE, mixup variants), side by side.

    streamaug demo                       # digits, the 5 default arms, 3 seeds: ~3-4 minutes on 2 CPU cores
    streamaug demo --arms plain,ros,smote --seeds 5
    streamaug demo --arms all --data my_images/ --steps 600

Writes ``demo-out/preview.png`` (what the model sees), ``demo-out/curves.png``
(balanced accuracy per step) and ``demo-out/results.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score, f1_score, recall_score
from tqdm.auto import tqdm

from streamaug.benchmarks.busy_workers import load_average
from streamaug.benchmarks.cli_arguments import strategy_argument, strategy_error
from streamaug.benchmarks.demo_arms import ARMS, parse_arms, stages
from streamaug.benchmarks.demo_data import DemoData, prepare
from streamaug.benchmarks.demo_table import plot_curves, summarize, table
from streamaug.benchmarks.machine_info import machine_info
from streamaug.benchmarks.preview import collect, draw
from streamaug.benchmarks.small_cnn import SmallCNN
from streamaug.core.threads import available_cores
from streamaug.loader import StreamLoader
from streamaug.ops.recipes import default_augment


def make_loader(data: DemoData, arm: str, seed: int, args, device) -> StreamLoader:
    kw = stages(ARMS[arm], args.backend, args.strategy, data.index.class_counts, args.mixup_alpha)
    return StreamLoader(data.index.urls, batch_size=args.batch_size, seed=seed, shuffle=500, device=device,
                        num_workers=args.workers, index=data.index, **kw)


@torch.no_grad()
def predict(model, images: np.ndarray, device) -> np.ndarray:
    model.eval()
    x = torch.from_numpy(images).permute(0, 3, 1, 2).to(device)
    out = torch.cat([model(x[i:i + 512]).argmax(1) for i in range(0, len(x), 512)]).cpu().numpy()
    model.train()
    return out


def minority_recall(labels, pred, minority, num_classes) -> float:
    recalls = recall_score(labels, pred, labels=list(range(num_classes)), average=None, zero_division=0)
    return float(np.mean(recalls[minority]))


def train(data: DemoData, arm: str, seed: int, args, device, progress) -> dict:
    loader = make_loader(data, arm, seed, args, device)
    num_classes = data.index.num_classes
    channels = data.index.image_shape[2] if data.index.image_shape else 3
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)                                   # model init only, global state restored
        model = SmallCNN(channels, num_classes, width=args.width).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps)
    curve, step, seen, busy = [], 0, 0, 0.0
    minority_rows = 0
    minority = torch.tensor(data.minority)
    while step < args.steps:
        start = time.perf_counter()
        for images, targets in loader:
            loss = torch.nn.functional.cross_entropy(model(images), targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            seen += len(images)
            hard = targets if targets.ndim == 1 else targets.argmax(1)
            minority_rows += int(torch.isin(hard.cpu(), minority).sum())
            progress.update(1)
            if step % args.eval_every == 0 or step == args.steps:
                busy += time.perf_counter() - start
                pred = predict(model, data.test_images, device)
                curve.append((step, float(balanced_accuracy_score(data.test_labels, pred))))
                start = time.perf_counter()
            if step == args.steps:
                break
        busy += time.perf_counter() - start
    pred = predict(model, data.test_images, device)
    train_pred = predict(model, data.train_images, device)
    return {"samples_per_s": seen / busy, "balanced_accuracy": float(balanced_accuracy_score(data.test_labels, pred)),
            "macro_f1": float(f1_score(data.test_labels, pred, average="macro")),
            "minority_recall": minority_recall(data.test_labels, pred, data.minority, num_classes),
            "train_minority_recall": minority_recall(data.train_labels, train_pred, data.minority, num_classes),
            "minority_rows_per_batch": minority_rows / step, "curve": curve,
            "synthetic": loader.stats.synthetic, "real": loader.stats.real}


def parse(argv):
    p = argparse.ArgumentParser(prog="streamaug demo", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default=None, help="shards folder (with index.json) or image folder (one subfolder per "
                   "class, any image size, grayscale or colour); default: scikit-learn digits")
    p.add_argument("--arms", default="default", help="comma-separated arms, 'default' or 'all'; arms: "
                   + ", ".join(f"{k} ({a.label})" for k, a in ARMS.items()))
    p.add_argument("--steps", type=int, default=300, help="training steps per arm and seed")
    p.add_argument("--seeds", type=int, default=3, help="runs per arm, each with its own seed")
    p.add_argument("--backend", default=None, choices=["kornia", "dali"], help="default: dali on a GPU, else kornia")
    p.add_argument("--out", default="demo-out", help="folder for shards, results JSON and pictures")
    p.add_argument("--strategy", type=strategy_argument, default="auto",
                   help="sampling_strategy (imbalanced-learn's): auto, minority, not minority, not majority, all, "
                        "or a minority/majority ratio such as 0.5 (two classes)")
    p.add_argument("--mixup-alpha", type=float, default=0.2, help="MixUp's Beta(alpha, alpha)")
    p.add_argument("--minority-classes", type=int, default=None,
                   help="classes of the training split cut to --minority-fraction of the largest (default: 4 of "
                        "the bundled digits, 0 with --data: its own imbalance is kept); the classes scored as "
                        "minority are those under half the largest class's count, or else the smallest")
    p.add_argument("--minority-fraction", type=float, default=0.08,
                   help="what a cut class keeps, as a fraction of the largest class")
    p.add_argument("--batch-size", type=int, default=64, help="rows per batch, real and synthetic")
    p.add_argument("--workers", type=int, default=0, help="the loader's num_workers")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads for the training step (default: torch's, one per core, the "
                        "fastest on an idle machine, or 1 when the load average is already at the core count: "
                        "where other CPU-bound jobs share the cores, torch's threads stall waiting for each other)")
    p.add_argument("--width", type=int, default=24, help="channels of the small CNN's first layer")
    p.add_argument("--lr", type=float, default=4e-3, help="AdamW's peak learning rate (one-cycle schedule)")
    p.add_argument("--eval-every", type=int, default=25, help="steps between test evaluations (the curves)")
    p.add_argument("--no-pictures", action="store_true", help="skip preview.png and curves.png")
    args = p.parse_args(argv)
    if args.workers < 0:
        p.error(f"--workers must be >= 0, got {args.workers}")
    for name in ("steps", "seeds", "batch_size", "width", "eval_every") + (("threads",) if args.threads is not None else ()):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.minority_classes is not None and args.minority_classes < 0:
        p.error(f"--minority-classes must be >= 0, got {args.minority_classes}")
    if not 0 < args.minority_fraction <= 1:
        p.error(f"--minority-fraction must be in (0, 1], got {args.minority_fraction}")
    try:
        args.arms = parse_arms(args.arms)
    except ValueError as e:
        p.error(str(e))
    return args


def busy_machine_threads(load: float, cores: int) -> int | None:
    """The demo's thread count when ``--threads`` is not given: 1 where other jobs already keep
    the cores busy (a 1-minute load average of at least the core count), else None (torch's
    default). On a loaded 2-core machine torch's default threads stalled: a newcomer's demo
    showed about 37 minutes to go, and took 8 with one thread."""
    return 1 if cores > 1 and load >= cores else None


def main(argv=None) -> int:
    args = parse(argv)
    caller_threads = torch.get_num_threads()
    if args.threads is None and not torch.cuda.is_available() and hasattr(os, "getloadavg"):
        load, cores = os.getloadavg()[0], available_cores()
        args.threads = busy_machine_threads(load, cores)
        if args.threads is not None:
            print(f"this machine is busy (load average {load:.1f} on {cores} cores): training on 1 thread, "
                  "which other jobs stall less (--threads N to choose)", flush=True)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        return run(args)
    finally:
        torch.set_num_threads(caller_threads)          # (main() called in-process: the caller's count back)


def run(args) -> int:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args.backend = args.backend or ("dali" if device.type == "cuda" else "kornia")
    t0 = time.perf_counter()
    try:
        data = prepare(args.out, args.data, minority_fraction=args.minority_fraction, n_minority=args.minority_classes)
    except ValueError as e:                      # (StreamError and ShardIndexError are ValueErrors)
        print(f"streamaug demo: {e}", file=sys.stderr)
        return 2
    counts = data.index.class_counts
    problem = strategy_error(args.strategy, counts)
    if problem:
        print(f"streamaug demo: {problem}", file=sys.stderr)
        return 2
    print(f"data: {data.source}; training counts per class {counts} (minority classes {data.minority}); "
          f"balanced test split: {len(data.test_labels)} samples; device {device}, backend {args.backend}")
    if data.resize_note:
        print(data.resize_note)
    runs: dict[str, list[dict]] = {a: [] for a in args.arms}
    with tqdm(total=len(args.arms) * args.seeds * args.steps, desc=f"training {len(args.arms)} arms x seeds",
              unit="step") as bar:
        for seed in range(args.seeds):
            for arm in args.arms:
                runs[arm].append(train(data, arm, seed, args, device, bar))
    summary = summarize(runs)
    printed = table(summary, {a: ARMS[a].label for a in args.arms})
    print(printed)
    os.makedirs(args.out, exist_ok=True)
    size = None
    if not args.no_pictures:
        rows = collect(data.index, default_augment(args.backend), args.strategy, seed=0)
        size = draw(rows, os.path.join(args.out, "preview.png"),
                    "rows: real | augmented | SMOTE (seed, synthetic, neighbour) | mixup")
        plot_curves(runs, {a: ARMS[a].label for a in args.arms}, os.path.join(args.out, "curves.png"))
    result = {"data": data.source, "resize_note": data.resize_note, "train_class_counts": counts,
              "minority_classes": data.minority, "test_size": int(len(data.test_labels)), "device": str(device),
              "backend": args.backend, "arms": {a: ARMS[a].label for a in args.arms}, "steps": args.steps,
              "seeds": args.seeds, "batch_size": args.batch_size, "strategy": args.strategy,
              "mixup_alpha": args.mixup_alpha, "torch_threads": torch.get_num_threads(), "summary": summary,
              "table": printed, "preview_size": list(size) if size else None, "runs": runs,
              "seconds": time.perf_counter() - t0, "machine": machine_info(), "loadavg_at_end": load_average()}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}/results.json" + ("" if args.no_pictures else ", preview.png, curves.png")
          + f" in {result['seconds']:.0f}s")
    return 0
