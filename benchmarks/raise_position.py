"""Where an error arrives under ``on_error="raise"``: how many batches come before it.

    python -m streamaug.benchmarks.raise_position

Two shards of 64 ``.npy`` samples each, indexed; sample 41 does not decode. With
``batch_size=4`` and ``shuffle=False`` its batch is 10 with an index (dataset order). For
each layout (with and without an index; 0, 2 and 3 reading workers) it counts the batches a
pass hands on before the ``StreamError``, and the batch that holds the bad sample's place
in the same pass under ``on_error="skip"`` (without an index, the workers' batches
interleave, so that is not 10). DataLoader hands on exactly the batches before it. The loader
reads ahead of the loop (a worker holds its last batch for trailing counts; a look-ahead
finds the epoch's last batch), and each such stage hands on what it holds before the error.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import tarfile
import tempfile

import numpy as np

from streamaug.loader import ShardIndex, StreamError, StreamLoader
from streamaug.loader.shard_index import ShardInfo

PER_SHARD, BAD, BATCH = 64, 41, 4


def _npy(i: int) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.full((8, 8, 3), i % 256, np.uint8))
    return buf.getvalue()


def write_corpus(folder: str) -> ShardIndex:
    """Shards a.tar and b.tar (samples 0..127) and their index; sample ``BAD``'s image is not NPY."""
    infos = []
    for s, name in enumerate(("a.tar", "b.tar")):
        path = os.path.join(folder, name)
        labels = []
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(s * PER_SHARD, (s + 1) * PER_SHARD):
                labels.append(i % 2)
                for ext, data in (("npy", b"not an npy" if i == BAD else _npy(i)), ("cls", str(i % 2).encode())):
                    info = tarfile.TarInfo(f"s_{i:05d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        infos.append(ShardInfo(path, PER_SHARD, (labels.count(0), labels.count(1))))
    index = ShardIndex(infos, 2, ["0", "1"], "npy", (8, 8, 3), os.path.join(folder, "index.json"))
    index.save(os.path.join(folder, "index.json"))
    return ShardIndex.load(os.path.join(folder, "index.json"))


def measure(index: ShardIndex, indexed: bool, workers: int) -> dict:
    kw = dict(index=index) if indexed else dict(index=False, num_classes=2)
    made = lambda **more: StreamLoader(index.urls, batch_size=BATCH, shuffle=False, num_workers=workers,  # noqa: E731
                                       device="cpu", persistent_workers=False, **kw, **more)
    handed_on = 0
    try:
        with made() as loader:
            for _ in loader:
                handed_on += 1
        raised = False
    except StreamError:
        raised = True
    neighbours = {f"s_{BAD - 1:05d}", f"s_{BAD + 1:05d}"} if indexed else {f"s_{BAD - 1:05d}"}
    with made(on_error="skip") as loader:
        holds = next(j for j, b in enumerate(loader) if neighbours & set(b.keys))
    return {"index": indexed, "workers": workers, "raised": raised, "batches_before_error": handed_on,
            "bad_sample_batch": holds}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2, 3])
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    if any(w < 0 for w in args.workers):
        parser.error(f"--workers must be 0 or more, got {args.workers}")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        index = write_corpus(folder)
        for indexed in (True, False):
            for workers in args.workers:
                row = measure(index, indexed, workers)
                rows.append(row)
                print(f"index={str(indexed):5} workers={workers}: {row['batches_before_error']} batches before "
                      f"the error; the bad sample's batch is {row['bad_sample_batch']}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
