"""Data for ``streamaug demo``: a real dataset, split, made imbalanced (unless it is already),
written as shards."""
from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image

from streamaug.loader import ShardIndex, StreamLoader, write_shards
from streamaug.loader.shard_index import INDEX_NAME
from streamaug.loader.shard_urls import SHARD_SUFFIXES
from streamaug.loader.shard_writer import MixedImageSizes


def load_digits_32(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8×8 digits, upsampled (bilinear) to 32×32 uint8 ``(N, 32, 32, 1)``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    small = np.clip(d.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    big = np.stack([np.asarray(Image.fromarray(im).resize((32, 32), Image.BILINEAR)) for im in small])
    return big[..., None], d.target.astype(np.int64)


RESIZE = (64, 64)


@dataclass
class DemoData:
    index: ShardIndex              # training shards (imbalanced)
    test_images: np.ndarray        # (N, H, W, C) uint8, balanced
    test_labels: np.ndarray
    class_names: list[str]
    minority: list[int]
    source: str
    train_images: np.ndarray       # the (un-augmented) training split, to measure what the model fits
    train_labels: np.ndarray
    resize_note: str = ""


def load_any(data: str | None) -> tuple[np.ndarray, np.ndarray, list[str], str, str]:
    """``None`` → bundled digits; a folder with ``index.json`` → its shards read into memory;
    any other folder → an ImageFolder of any image sizes, grayscale or colour (via a
    temporary shard write). Returns images, labels, class names, source, and a note
    saying whether and why images were resized."""
    if data is None:
        images, labels = load_digits_32()
        return images, labels, [str(i) for i in range(10)], "scikit-learn digits (8x8, upsampled to 32x32)", ""
    if not os.path.isdir(data):
        raise ValueError(f"--data must be a folder of shards (with {INDEX_NAME}) or an image folder, got {data!r}")
    if os.path.exists(os.path.join(data, INDEX_NAME)):
        return _read_shards(ShardIndex.load(os.path.join(data, INDEX_NAME)), data)
    if any(f.endswith(SHARD_SUFFIXES) for f in os.listdir(data)):
        raise ValueError(f"--data folder {data!r} holds shards but no {INDEX_NAME}: write one with "
                         f"`streamaug index {data}` (the demo needs each class's count)")
    with tempfile.TemporaryDirectory(prefix="streamaug-demo-") as shards, warnings.catch_warnings():
        warnings.simplefilter("ignore", MixedImageSizes)     # (resized here)
        return _read_shards(write_shards(data, shards, progress=False), data)      # read into memory, then gone


def _read_shards(index: ShardIndex, source: str) -> tuple[np.ndarray, np.ndarray, list[str], str, str]:
    resize = None if index.image_shape else RESIZE
    note = "" if resize is None else (
        f"images were resized to {RESIZE[0]}x{RESIZE[1]}: their sizes differ, and a batch (and the CNN's "
        f"input) needs one size; the channels are kept (grayscale stays 1 channel)")
    loader = StreamLoader(index.urls, batch_size=256, shuffle=0, index=index, device="cpu", resize=resize)
    xs, ys = [], []
    for x, y in loader:
        xs.append(x.permute(0, 2, 3, 1).numpy())
        ys.append(y.numpy())
    images = np.concatenate(xs)
    if index.image_shape is None and (images == images[..., :1]).all():
        images = images[..., :1]          # the loader made 3 equal channels of grayscale images: keep 1
    return images, np.concatenate(ys), index.class_names, source, note


def minority_of(counts: list[int]) -> list[int]:
    """The classes the demo scores as minority: those with under half the largest class's
    training samples, or the smallest one when none has."""
    small = [c for c, n in enumerate(counts) if n < 0.5 * max(counts)]
    return small or [int(np.argmin(counts))]


def prepare(out: str, data: str | None = None, minority_fraction: float = 0.08, n_minority: int | None = None,
            test_per_class: int | None = None, seed: int = 0) -> DemoData:
    """Split stratified 70/30, cut ``n_minority`` classes of the training part to
    ``minority_fraction`` of the largest (default: 4 of the bundled digits; none of ``data``,
    whose own imbalance is kept), balance the test part, write training shards."""
    if n_minority is None:
        n_minority = 4 if data is None else 0
    images, labels, names, source, note = load_any(data)
    rng = np.random.default_rng(seed)
    classes, sizes = np.unique(labels, return_counts=True)
    if sizes.min() < 2:
        few = [f"{names[c]!r} ({n})" for c, n in zip(classes, sizes) if n < 2]
        raise ValueError(f"{source}: class {', '.join(few)} has fewer than 2 samples; the demo needs one to train "
                         "on and one to test each class on")
    train_idx, test_idx = [], []
    for c in classes:
        idx = rng.permutation(np.flatnonzero(labels == c))
        cut = min(len(idx) - 1, max(1, int(round(0.7 * len(idx)))))     # at least one on each side
        train_idx.append(idx[:cut])
        test_idx.append(idx[cut:])
    per_test = test_per_class or min(len(t) for t in test_idx)
    test = np.concatenate([t[:per_test] for t in test_idx])
    largest = max(len(t) for t in train_idx)
    shrunk = sorted(rng.choice(classes, size=min(n_minority, len(classes) - 1), replace=False).tolist()) \
        if n_minority else []
    keep = max(2, int(round(minority_fraction * largest)))
    train = np.concatenate([t[:keep] if c in shrunk else t for c, t in zip(classes, train_idx)])
    minority = [int(classes[i]) for i in minority_of([int((labels[train] == c).sum()) for c in classes])]
    index = write_shards((images[train], labels[train]), os.path.join(out, "shards"), maxcount=200,
                         class_names=names, num_classes=len(names), progress=False, shuffle_seed=seed)
    return DemoData(index, images[test], labels[test], names, minority, source, images[train], labels[train], note)
