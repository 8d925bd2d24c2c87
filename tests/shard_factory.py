"""Build shards for tests: numbered images whose pixels encode their index,
and hand-made tars with broken samples."""
from __future__ import annotations

import io
import os
import tarfile

import numpy as np

from streamaug.loader import ShardIndex, write_shards
from streamaug.loader.shard_index import ShardInfo


def numbered_images(n: int, size: int = 8, channels: int = 3, num_classes: int = 4,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Image i has a distinct random texture; labels cycle unevenly over classes."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(n) % 256
    labels = (np.arange(n) * 7 % 11) % num_classes
    return images, labels.astype(np.int64)


def index_of_key(key: str) -> int:
    return int(key.rsplit("_", 1)[1])


def make_shards(tmp: str, n: int = 100, maxcount: int = 16, fmt: str = "npy", **kw):
    images, labels = numbered_images(n, **kw)
    index = write_shards((images, labels), tmp, image_format=fmt, maxcount=maxcount, progress=False)
    return index, images, labels


def write_tar(path: str, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def good_members(n: int, start: int = 0, size: int = 8) -> list[tuple[str, bytes]]:
    out = []
    for i in range(start, start + n):
        out += [(f"s_{i:05d}.npy", npy_bytes(np.full((size, size, 3), i % 256, np.uint8))),
                (f"s_{i:05d}.cls", str(i % 2).encode())]
    return out


def write_custom(tmp: str, shards: dict[str, list[tuple[str, bytes]]], counts: dict[str, list[int]],
                 num_classes: int = 2, image_shape=(8, 8, 3)) -> ShardIndex:
    """Write the given tar members and an index that claims ``counts`` per shard."""
    infos = []
    for name, members in shards.items():
        path = os.path.join(tmp, name)
        write_tar(path, members)
        cc = counts[name]
        infos.append(ShardInfo(path, sum(cc), tuple(cc)))
    index = ShardIndex(infos, num_classes, [str(i) for i in range(num_classes)], "npy",
                       tuple(image_shape) if image_shape else None, os.path.join(tmp, "index.json"))
    index.save(os.path.join(tmp, "index.json"))
    return ShardIndex.load(os.path.join(tmp, "index.json"))
