"""Small, imbalanced 8×8 digits shards (scikit-learn's bundled digits), the StreamLoaders the framework
jobs use over them, and what a job records of each batch."""
from __future__ import annotations

import argparse
import glob
import hashlib
import os

import numpy as np

from streamaug.loader import StreamLoader, write_shards
from streamaug.ops import MixUp, default_augment
from streamaug.samplers import ClassBalancer

TRAIN_PER_CLASS = (8, 8, 8, 8, 20, 20, 20, 20, 20, 20)   # classes 0-3 are the minority
VAL_PER_CLASS = 6


def job_arguments() -> argparse.ArgumentParser:
    """The options every framework job takes: its loaders' shards, where to write, its tag, resume."""
    p = argparse.ArgumentParser()
    p.add_argument("--train", required=True)
    p.add_argument("--val", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--tag", required=True)
    p.add_argument("--save-at", type=int, default=None)
    p.add_argument("--resume", default=None)
    return p


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """Digits as uint8 (N, 8, 8, 1) images (0..16 scaled to 0..240) and int64 labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * 15).astype(np.uint8)[..., None]
    return images, digits.target.astype(np.int64)


def write_digits_shards(root: str) -> tuple[str, str]:
    """Write ``root/train`` (176 samples, imbalanced) and ``root/val`` (60, balanced); return both folders."""
    images, labels = digits_arrays()
    train, val = [], []
    for c in range(10):
        rows = np.flatnonzero(labels == c)
        train += list(rows[:TRAIN_PER_CLASS[c]])
        val += list(rows[TRAIN_PER_CLASS[c]:TRAIN_PER_CLASS[c] + VAL_PER_CLASS])
    folders = []
    for name, rows in (("train", train), ("val", val)):
        out = os.path.join(root, name)
        rows = np.array(sorted(rows))
        write_shards((images[rows], labels[rows]), out, prefix=name, maxcount=24, num_classes=10, progress=False)
        folders.append(out)
    return folders[0], folders[1]


BATCH = 16


def checksum(batch) -> str:
    h = hashlib.sha256(batch.images.cpu().contiguous().numpy().tobytes())
    h.update(batch.targets.cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def record(batch) -> dict:
    real = ~(batch.is_synthetic | batch.is_padding)
    return {"keys": list(batch.keys), "real": [k for k, r in zip(batch.keys, real.tolist()) if r],
            "synthetic": int(batch.is_synthetic.sum()), "sum": checksum(batch)}


def make_loaders(train: str, val: str, full: bool = True, **overrides) -> tuple[StreamLoader, StreamLoader]:
    """Train: balance (ClassBalancer + SMOTE) + augment + mixup when ``full``; val: in order, plain.
    ``overrides`` (e.g. ``world_size``, ``rank``) go to both; the job passes none."""
    plugins = dict(balance=ClassBalancer(), augment=default_augment(), mixup=MixUp(0.4, p=0.5)) if full else {}
    train_loader = StreamLoader(sorted(glob.glob(os.path.join(train, "*.tar"))), batch_size=BATCH, seed=3,
                                shuffle=40, device="cpu", **plugins, **overrides)
    val_loader = StreamLoader(sorted(glob.glob(os.path.join(val, "*.tar"))), batch_size=BATCH, seed=3, shuffle=0,
                              device="cpu", **overrides)
    return train_loader, val_loader
