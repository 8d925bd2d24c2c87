"""``streamaug preview``: draw what the loader yields — real, augmented, SMOTE-synthetic
(with both parents) and mixup samples — as one labelled grid.

    streamaug preview --data shards/ --out grid.png
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings

import numpy as np
import torch

from streamaug.benchmarks.cli_arguments import strategy_argument, strategy_error
from streamaug.benchmarks.demo_data import RESIZE
from streamaug.loader import ShardIndex, StreamLoader, write_shards
from streamaug.loader.shard_index import INDEX_NAME
from streamaug.loader.shard_urls import SHARD_SUFFIXES
from streamaug.loader.shard_writer import MixedImageSizes
from streamaug.ops import Compose, MixUp
from streamaug.ops.recipes import default_augment
from streamaug.samplers import SMOTE, ClassBalancer

CELL_INCHES, DPI = 1.1, 100


def _hwc(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().permute(1, 2, 0).numpy()


def collect(index: ShardIndex, augment: Compose, strategy="auto", seed: int = 0, per_row: int = 9,
            resize: tuple[int, int] | None = None) -> list[list]:
    """Rows of (HWC uint8 image, caption) cells; ``resize`` as the loader's."""
    names = index.class_names
    plain = StreamLoader(index.urls, batch_size=max(64, per_row), seed=seed, device="cpu", index=index, resize=resize)
    x, y = next(iter(plain))
    real, labels = x[:per_row], y[:per_row]
    augment.manual_seed(seed)
    augmented = augment(real)
    rows = [[(_hwc(im), f"real: {names[c]}") for im, c in zip(real, labels.tolist())],
            [(_hwc(im), f"aug: {names[c]}") for im, c in zip(augmented, labels.tolist())]]

    balanced = StreamLoader(index.urls, batch_size=64, seed=seed, device="cpu", index=index, resize=resize,
                            balance=ClassBalancer(strategy, SMOTE()))
    triplets = []
    for batch in balanced:
        for row, label, prov in zip(batch[0], batch.hard_labels.tolist(), batch.provenance):
            if prov is not None and prov["neighbour"] is not None and len(triplets) < per_row // 3:
                triplets.append((row, label, prov))
        if len(triplets) >= per_row // 3:
            break
    parents = balanced.fetch_rows([p for _, _, prov in triplets for p in (prov["seed"], prov["neighbour"])])
    smote_row = []
    for row, label, prov in triplets:
        smote_row += [(_hwc(parents[prov["seed"]]), f"seed: {names[label]}"),
                      (_hwc(row), f"SMOTE u={prov['u']:.2f}"),
                      (_hwc(parents[prov["neighbour"]]), f"neighbour: {names[label]}")]
    rows.append(smote_row)

    mix = MixUp(alpha=0.4, p=1.0, seed=seed)
    mixed, targets = mix(real, labels, num_classes=len(names))
    mix_row = []
    for im, t in zip(mixed, targets):
        top = torch.topk(t, 2)
        parts = [f"{names[c]}:{w:.2f}" for w, c in zip(top.values.tolist(), top.indices.tolist()) if w > 0]
        mix_row.append((_hwc(im), "mix " + " ".join(parts)))
    rows.append(mix_row)
    return rows


def draw(rows: list[list], path: str, title: str = "") -> tuple[int, int]:
    """Save the grid; returns the PNG's (width, height) in pixels: one cell per sample."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = max(len(r) for r in rows)
    size = (int(round(ncols * CELL_INCHES * DPI)), int(round(len(rows) * CELL_INCHES * DPI)))
    fig, axes = plt.subplots(len(rows), ncols, figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI, squeeze=False)
    for r, row in enumerate(rows):
        for c in range(ncols):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(row):
                image, caption = row[c]
                ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=255)
                ax.set_title(caption, fontsize=6)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.9 if title else 0.95, wspace=0.1, hspace=0.35)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return size


def image_size(text: str) -> tuple[int, int]:   # (argparse names it in its message)
    sides = [int(v) for v in text.replace("x", ",").split(",")]
    if len(sides) not in (1, 2) or min(sides) < 1:
        raise argparse.ArgumentTypeError(f"one side (a square) or H,W in positive ints, got {text!r}")
    return (sides[0], sides[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="streamaug preview", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="folder with shards and index.json, the index.json itself, or an "
                   "image folder (one subfolder per class; written to temporary shards first)")
    p.add_argument("--out", default="preview.png", help="the picture to write (PNG)")
    p.add_argument("--strategy", type=strategy_argument, default="auto",
                   help="sampling_strategy (imbalanced-learn's): auto, minority, not minority, not majority, all, "
                        "or a minority/majority ratio such as 0.5 (two classes)")
    p.add_argument("--backend", default="kornia", choices=["kornia", "dali"])
    p.add_argument("--flip", action="store_true", help="include horizontal flips in the augmentation")
    p.add_argument("--seed", type=int, default=0, help="seed of the balancer and the augmentation")
    p.add_argument("--resize", type=image_size, default=None, help="resize every image to H,W (or one side, a square); "
                   f"default: {RESIZE[0]}x{RESIZE[1]} where image sizes vary (as the demo), else none")
    args = p.parse_args(argv)
    if not os.path.splitext(args.out)[1]:
        args.out += ".png"                  # what matplotlib writes for a name without an extension
    try:                                    # (now, not after the loaders ran: red team s36)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    except OSError as e:
        why = "a file is in the way" if isinstance(e, (FileExistsError, NotADirectoryError)) else e.strerror
        print(f"streamaug preview: --out {args.out!r} cannot be written: {why} ({e.filename!r})", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="streamaug-preview-") as scratch:
        try:
            index = _index_of(args.data, scratch)
        except ValueError as e:              # (ShardIndexError, StreamError): one line, as the other commands print
            print(f"streamaug preview: {e}", file=sys.stderr)
            return 2
        problem = strategy_error(args.strategy, index.class_counts)
        if problem:
            print(f"streamaug preview: {problem}", file=sys.stderr)
            return 2
        resize = args.resize or (None if index.image_shape else RESIZE)
        if resize and not args.resize:
            print(f"images were resized to {resize[0]}x{resize[1]}: their sizes differ, and a batch needs one "
                  "size (--resize chooses another)")
        rows = collect(index, default_augment(args.backend, args.flip), args.strategy, args.seed, resize=resize)
    w, h = draw(rows, args.out, "rows: real | augmented | SMOTE (seed, synthetic, neighbour) | mixup")
    print(f"wrote {args.out} ({w}x{h})")
    return 0


def _index_of(data: str, scratch: str) -> ShardIndex:
    """The index of ``--data``: an index file, a shard folder's, or that of an image folder
    written to shards in ``scratch``."""
    if not os.path.exists(data) and "://" not in data:
        raise ValueError(f"--data {data!r} does not exist (a folder of shards with {INDEX_NAME}, an index "
                         f"file, or an image folder)")
    if os.path.isfile(data) and not data.endswith(".json"):
        raise ValueError(f"--data {data!r} is a file, not a folder of shards or an {INDEX_NAME}: pass the folder "
                         f"{os.path.dirname(data) or '.'!r}, or the {INDEX_NAME} that lists its shards")
    if data.endswith(".json") or not os.path.isdir(data) or os.path.exists(os.path.join(data, INDEX_NAME)):
        return ShardIndex.load(data if data.endswith(".json") else os.path.join(data, INDEX_NAME))
    if any(f.endswith(SHARD_SUFFIXES) for f in os.listdir(data)):
        raise ValueError(f"--data folder {data!r} holds shards but no {INDEX_NAME}: write one with "
                         f"`streamaug index {data}` (the preview balances by each class's count)")
    print(f"{data!r} has no shards: reading it as an image folder (one subfolder per class)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MixedImageSizes)     # (resized here)
        return write_shards(data, scratch, progress=False)
