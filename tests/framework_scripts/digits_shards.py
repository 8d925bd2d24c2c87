"""Small, imbalanced 8×8 digits shards (scikit-learn's bundled digits) for the framework tests."""
from __future__ import annotations

import os

import numpy as np

from streamaug.loader import write_shards

TRAIN_PER_CLASS = (8, 8, 8, 8, 20, 20, 20, 20, 20, 20)   # classes 0-3 are the minority
VAL_PER_CLASS = 6


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
