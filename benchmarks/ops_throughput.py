"""Augmentation throughput on one uint8 batch: streamaug (fused, each backend) vs Kornia's
``AugmentationSequential`` (one pass per op) vs albumentations per sample in DataLoader workers.

    python -m streamaug.benchmarks.ops_throughput --json benchmarks/results/ops_cpu.json

Ops: horizontal flip p=.5, rotate ±30°, shear ±15° (x and y), Gaussian noise σ=0.05
(on the [0, 1] scale), optionally MixUp α=0.2; batch 256 at 32×32 and 224×224.

Every in-process case is timed idle and "with N busy workers" (``--busy``, default 1:
N CPU-bound processes spin during the timed calls, see ``busy_workers.py``), alternately;
the JSON has both rates, ``busy_vs_idle`` and the load average. The streamaug cases run
as the loader runs them, inside ``IntraOpThreads(main_process_threads(0))``
(``--threads 0``: torch's default instead; ``K``: K threads).
"""
from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch
from tqdm.auto import tqdm

from streamaug.benchmarks.timing import idle_and_busy_rate, write_result
from streamaug.core.threads import IntraOpThreads, main_process_threads
from streamaug.ops import Compose, Flip, GaussianNoise, MixUp, Rotate, Shear


def streamaug_pipeline(backend: str):
    return Compose([Flip(p=0.5), Rotate(30), Shear(x=15, y=15), GaussianNoise(0.05)], backend=backend, seed=0)


def kornia_pipeline():
    import kornia.augmentation as K

    return K.AugmentationSequential(K.RandomHorizontalFlip(p=0.5), K.RandomRotation(30.0, p=1.0),
                                    K.RandomAffine(degrees=0.0, shear=(-15.0, 15.0, -15.0, 15.0), p=1.0),
                                    K.RandomGaussianNoise(std=0.05, p=1.0))


class AlbumentationsSet(torch.utils.data.Dataset):
    """Per-sample albumentations on HWC uint8, as a torch DataLoader would run it."""

    def __init__(self, images_hwc: np.ndarray, repeat: int):
        import albumentations as A

        self.images, self.repeat = images_hwc, repeat
        self.transform = A.Compose([A.HorizontalFlip(p=0.5), A.Affine(rotate=(-30, 30), shear={"x": (-15, 15), "y": (-15, 15)}, p=1.0),
                                    A.GaussNoise(std_range=(0.05, 0.05), p=1.0)])

    def __len__(self):
        return len(self.images) * self.repeat

    def __getitem__(self, i):
        return torch.from_numpy(self.transform(image=self.images[i % len(self.images)])["image"]).permute(2, 0, 1)


def albumentations_rate(x: torch.Tensor, workers: int, repeats: int, batches: int, busy: int = 0) -> dict:
    import cv2

    cv2.setNumThreads(1)
    data = AlbumentationsSet(x.permute(0, 2, 3, 1).contiguous().numpy(), batches)
    loader = torch.utils.data.DataLoader(data, batch_size=len(x), num_workers=workers, persistent_workers=workers > 0)

    def epoch():
        return sum(len(b) for b in loader)
    return idle_and_busy_rate(epoch, busy, repeats=repeats)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 224])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--workers", type=int, default=None, help="albumentations DataLoader workers (default: cores)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--busy", type=int, default=1, help="busy workers for the contention figure (0: skip it)")
    p.add_argument("--threads", type=int, default=-1,
                   help="streamaug stage threads: -1 the loader's scope (default), 0 torch's default, K fixed")
    p.add_argument("--backends", nargs="+", default=["kornia", "opencv", "dali"])
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    scope = (None if args.threads == 0 else
             IntraOpThreads(main_process_threads(0) if args.threads < 0 else args.threads))
    warnings.filterwarnings("ignore")
    device = torch.device(args.device)
    workers = args.workers if args.workers is not None else len(__import__("os").sched_getaffinity(0))
    rows = []
    for size in args.sizes:
        x = torch.randint(0, 256, (args.batch, 3, size, size), generator=torch.Generator().manual_seed(0),
                          dtype=torch.uint8)
        xd = x.to(device)
        labels = torch.arange(args.batch, device=device) % 10
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

        def timed(fn, scoped=False):
            def call():
                if scoped and scope is not None:
                    with scope:
                        fn()
                else:
                    fn()
                sync()
                return args.batch
            return call

        cases = {}
        for backend in args.backends:
            if backend == "opencv" and device.type != "cpu":
                continue
            aug = streamaug_pipeline(backend)
            mix = MixUp(0.2, seed=0)
            cases[f"streamaug-{backend}"] = timed(lambda aug=aug: aug(xd), scoped=True)
            cases[f"streamaug-{backend}+mixup"] = timed(lambda aug=aug, mix=mix: mix(aug(xd), labels, num_classes=10),
                                                        scoped=True)
        kaug = kornia_pipeline().to(device)
        cases["kornia-unfused"] = timed(lambda: (kaug(xd.float() / 255).clamp(0, 1) * 255).round().to(torch.uint8))
        for name, fn in tqdm(list(cases.items()), desc=f"ops {size}x{size}"):
            rows.append({"size": size, "pipeline": name, **idle_and_busy_rate(fn, args.busy, args.repeats)})
        if device.type == "cpu":
            rows.append({"size": size, "pipeline": f"albumentations-{workers}workers",
                         **albumentations_rate(x, workers, max(3, args.repeats // 2), batches=4, busy=args.busy)})
    table = ratios(rows)
    print_table(table)
    if args.json:
        write_result(args.json, {"batch": args.batch, "device": str(device), "albumentations_workers": workers,
                                 "busy_workers": args.busy, "stage_threads": None if scope is None else scope.n,
                                 "ops": "flip p=.5, rotate ±30°, shear ±15° x/y, noise σ=.05 (+mixup α=.2)",
                                 "rows": table})
    return 0


def ratios(rows: list[dict]) -> list[dict]:
    for r in rows:
        same = {q["pipeline"]: q["items_per_s"] for q in rows if q["size"] == r["size"]}
        r["vs_kornia_unfused"] = r["items_per_s"] / same["kornia-unfused"]
        alb = [v for k, v in same.items() if k.startswith("albumentations")]
        r["vs_albumentations"] = r["items_per_s"] / alb[0] if alb else None
    return rows


def print_table(rows: list[dict]) -> None:
    busy = next((r["busy"]["workers"] for r in rows if "busy" in r), 0)
    print(f"{'size':>5} {'pipeline':28s} {'img/s':>10} {'vs kornia':>10} {'vs albu':>8} "
          f"{f'with {busy} busy':>12} {'busy/idle':>9} {'load':>5}")
    for r in rows:
        alb = f"{r['vs_albumentations']:.2f}" if r["vs_albumentations"] else "-"
        loaded = (f"{r['busy']['items_per_s']:>12.0f} {r['busy_vs_idle']:>9.2f}" if "busy" in r else f"{'-':>12} {'-':>9}")
        load = f"{r['loadavg'][0]:>5.2f}" if "loadavg" in r else f"{'-':>5}"
        print(f"{r['size']:>5} {r['pipeline']:28s} {r['items_per_s']:>10.0f} {r['vs_kornia_unfused']:>10.2f} {alb:>8} "
              f"{loaded} {load}")


if __name__ == "__main__":
    raise SystemExit(main())
