"""Shards for benchmarks, generated here so nothing is downloaded.

* ``photo_crops``: 224×224 RGB crops of scikit-learn's two bundled photos
  (random position, scale and flip), stored as JPEG (``jpg224``); ``jpg512`` is the same at
  512×512 (crops up-scaled: the photos are 427×640), for the large-image regime.
* ``tiny_images``: 32×32 RGB images (down-scaled crops), stored as ``.npy``.

Labels are imbalanced: class ``c`` of ``num_classes`` has weight ``ratio**c``
so the last class is ``ratio**(C-1)`` times rarer than the first.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

from streamaug.loader import ShardIndex, write_shards
from streamaug.loader.shard_index import INDEX_NAME


KINDS = ("npy32", "jpg224", "jpg512")


def imbalanced_labels(n: int, num_classes: int = 10, ratio: float = 0.7, seed: int = 0) -> np.ndarray:
    weights = ratio ** np.arange(num_classes)
    return np.random.default_rng(seed).choice(num_classes, size=n, p=weights / weights.sum()).astype(np.int64)


def photo_crops(n: int, size: int = 224, seed: int = 0) -> np.ndarray:
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images            # two 427×640 RGB photos
    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        photo = photos[i % len(photos)]
        side = int(rng.integers(size // 2, min(photo.shape[:2])))
        y, x = rng.integers(0, photo.shape[0] - side), rng.integers(0, photo.shape[1] - side)
        crop = Image.fromarray(photo[y:y + side, x:x + side]).resize((size, size), Image.BILINEAR)
        out[i] = np.asarray(crop)[:, ::-1] if rng.random() < 0.5 else np.asarray(crop)
    return out


def make_bench_shards(out: str, kind: str, n: int, num_classes: int = 10, seed: int = 0,
                      maxcount: int = 500) -> ShardIndex:
    """Write (or reuse) ``n`` samples of ``kind`` in :data:`KINDS` under ``out``."""
    path = os.path.join(out, f"{kind}-{n}")
    if os.path.exists(os.path.join(path, INDEX_NAME)):
        return ShardIndex.load(os.path.join(path, INDEX_NAME))
    labels = imbalanced_labels(n, num_classes, seed=seed)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    images, fmt = photo_crops(n, int(kind[3:]), seed), kind[:3]
    return write_shards((images, labels), path, image_format=fmt, maxcount=maxcount,
                        num_classes=num_classes, jpeg_quality=90, progress=False)
