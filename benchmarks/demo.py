"""``streamaug demo``: imbalanced real data → plain, augmented, and SMOTE-balanced +
augmented training of one small CNN, side by side, with pictures.

    streamaug demo                       # digits, 3 seeds, about 2-3 minutes on 2 CPU cores
    streamaug demo --data my_shards/ --steps 600 --seeds 5

Writes ``demo-out/preview.png`` (what the model sees), ``demo-out/curves.png``
(balanced accuracy per step) and ``demo-out/results.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score, f1_score, recall_score
from tqdm.auto import tqdm

from streamaug.benchmarks.demo_data import DemoData, prepare
from streamaug.benchmarks.preview import collect, draw
from streamaug.benchmarks.small_cnn import SmallCNN
from streamaug.loader import StreamLoader
from streamaug.ops import MixUp
from streamaug.ops.recipes import default_augment
from streamaug.samplers import ClassBalancer

VARIANTS = {"a": "plain stream", "b": "augment + mixup", "c": "SMOTE balance + augment + mixup"}


def make_loader(data: DemoData, variant: str, seed: int, args, device) -> StreamLoader:
    kw = {}
    if variant in "bc":
        kw.update(augment=default_augment(args.backend), mixup=MixUp(alpha=0.2, p=0.5))
    if variant == "c":
        kw.update(balance=ClassBalancer(args.strategy))
    return StreamLoader(data.index.urls, batch_size=args.batch_size, seed=seed, shuffle=500, device=device,
                        num_workers=args.workers, index=data.index, **kw)


@torch.no_grad()
def predict(model, images: np.ndarray, device) -> np.ndarray:
    model.eval()
    x = torch.from_numpy(images).permute(0, 3, 1, 2).to(device)
    out = torch.cat([model(x[i:i + 512]).argmax(1) for i in range(0, len(x), 512)]).cpu().numpy()
    model.train()
    return out


def train(data: DemoData, variant: str, seed: int, args, device, progress) -> dict:
    loader = make_loader(data, variant, seed, args, device)
    channels = data.index.image_shape[2] if data.index.image_shape else 3
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)                                   # model init only, global state restored
        model = SmallCNN(channels, data.index.num_classes, width=args.width).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps)
    curve, step, seen, busy = [], 0, 0, 0.0
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
    recalls = recall_score(data.test_labels, pred, labels=list(range(data.index.num_classes)), average=None,
                           zero_division=0)
    return {"samples_per_s": seen / busy, "balanced_accuracy": float(balanced_accuracy_score(data.test_labels, pred)),
            "macro_f1": float(f1_score(data.test_labels, pred, average="macro")),
            "minority_recall": float(np.mean(recalls[data.minority])), "curve": curve,
            "synthetic": loader.stats.synthetic, "real": loader.stats.real}


METRICS = ("samples_per_s", "balanced_accuracy", "macro_f1", "minority_recall")


def summarize(runs: dict[str, list[dict]]) -> dict:
    return {v: {m: {"mean": float(np.mean([r[m] for r in rs])), "std": float(np.std([r[m] for r in rs]))}
                for m in METRICS} for v, rs in runs.items()}


def table(summary: dict) -> str:
    lines = ["| run | samples/s | balanced accuracy | macro-F1 | minority recall |", "| --- | ---: | ---: | ---: | ---: |"]
    for v, s in summary.items():
        cells = [f"{s['samples_per_s']['mean']:,.0f} ± {s['samples_per_s']['std']:,.0f}"]
        cells += [f"{s[m]['mean']:.3f} ± {s[m]['std']:.3f}" for m in METRICS[1:]]
        lines.append(f"| ({v}) {VARIANTS[v]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_curves(runs: dict[str, list[dict]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for v, rs in runs.items():
        steps = [s for s, _ in rs[0]["curve"]]
        acc = np.array([[a for _, a in r["curve"]] for r in rs])
        ax.plot(steps, acc.mean(0), label=f"({v}) {VARIANTS[v]}")
        ax.fill_between(steps, acc.min(0), acc.max(0), alpha=0.2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("balanced accuracy (test)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def parse(argv):
    p = argparse.ArgumentParser(prog="streamaug demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=None, help="shards folder (with index.json) or image folder; default: digits")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--backend", default=None, choices=["kornia", "dali"], help="default: dali on a GPU, else kornia")
    p.add_argument("--out", default="demo-out")
    p.add_argument("--strategy", default="auto", help="sampling_strategy (imbalanced-learn's); e.g. auto, all")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--width", type=int, default=24)
    p.add_argument("--lr", type=float, default=4e-3)
    p.add_argument("--eval-every", type=int, default=25)
    args = p.parse_args(argv)
    for name in ("steps", "seeds", "batch_size", "width", "eval_every"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


def main(argv=None) -> int:
    args = parse(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args.backend = args.backend or ("dali" if device.type == "cuda" else "kornia")
    t0 = time.perf_counter()
    data = prepare(args.out, args.data)
    counts = data.index.class_counts
    print(f"data: {data.source}; training counts per class {counts} (minority classes {data.minority}); "
          f"balanced test split: {len(data.test_labels)} samples; device {device}, backend {args.backend}")
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    with tqdm(total=len(VARIANTS) * args.seeds * args.steps, desc="training (a, b, c) x seeds", unit="step") as bar:
        for seed in range(args.seeds):
            for v in VARIANTS:
                runs[v].append(train(data, v, seed, args, device, bar))
    summary = summarize(runs)
    print(table(summary))
    gain = summary["c"]["balanced_accuracy"]["mean"] - summary["a"]["balanced_accuracy"]["mean"]
    print(f"(c) - (a) balanced accuracy: {gain * 100:+.1f} points (mean over {args.seeds} seeds)")
    os.makedirs(args.out, exist_ok=True)
    rows = collect(data.index, default_augment(args.backend), args.strategy, seed=0)
    size = draw(rows, os.path.join(args.out, "preview.png"),
                "rows: real | augmented | SMOTE (seed, synthetic, neighbour) | mixup")
    plot_curves(runs, os.path.join(args.out, "curves.png"))
    result = {"data": data.source, "train_class_counts": counts, "minority_classes": data.minority,
              "test_size": int(len(data.test_labels)), "device": str(device), "backend": args.backend,
              "steps": args.steps, "seeds": args.seeds, "batch_size": args.batch_size, "strategy": args.strategy,
              "summary": summary, "gain_c_minus_a_balanced_accuracy": gain, "preview_size": list(size),
              "runs": runs, "seconds": time.perf_counter() - t0}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}/preview.png, curves.png, results.json in {result['seconds']:.0f}s")
    return 0
