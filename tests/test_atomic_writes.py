"""Shards and index.json written by several processes at once, as every rank of a torchrun
job does when its script runs ``write_shards`` before reading (the README's accelerate
example did, and failed under 3 processes: ``FileNotFoundError: 'shards/index.json.tmp'``).
"""
from __future__ import annotations

import multiprocessing as mp
import os

import numpy as np
import pytest

from streamaug.loader import ShardIndex, StreamLoader, build_index, write_shards

WRITERS = 4
N = 240


def arrays():
    rng = np.random.default_rng(5)
    return rng.integers(0, 255, (N, 6, 6, 3), np.uint8), np.arange(N) % 4


def _write(out, barrier, errors):
    try:
        barrier.wait(30)
        for _ in range(3):
            write_shards(arrays(), out, maxcount=10, progress=False)
    except BaseException as e:                # noqa: BLE001 - reported to the test
        errors.put(f"{type(e).__name__}: {e}")


def _read_while_written(out, barrier, errors, done):
    """Reads the listed shards over and over while the writers rewrite them."""
    try:
        barrier.wait(30)
        while not done.is_set():
            index = ShardIndex.load(os.path.join(out, "index.json"))
            rows = sum(len(b.keys) for b in StreamLoader(index.urls, 50, False, index=index))
            if rows != N:
                errors.put(f"read {rows} of {N} samples while the shards were rewritten")
    except BaseException as e:                # noqa: BLE001
        errors.put(f"reader: {type(e).__name__}: {e}")


def test_ranks_writing_the_same_shards_at_once_all_succeed_and_readers_see_whole_shards(tmp_path):
    ctx = mp.get_context("fork")
    out = str(tmp_path / "shards")
    write_shards(arrays(), out, maxcount=10, progress=False)      # what the reader starts from
    barrier, errors, done = ctx.Barrier(WRITERS + 1), ctx.Queue(), ctx.Event()
    writers = [ctx.Process(target=_write, args=(out, barrier, errors)) for _ in range(WRITERS)]
    reader = ctx.Process(target=_read_while_written, args=(out, barrier, errors, done))
    for p in (*writers, reader):
        p.start()
    for p in writers:
        p.join(120)
    done.set()
    reader.join(60)
    found = []
    while not errors.empty():
        found.append(errors.get())
    assert not found, found[:5]
    assert [p.exitcode for p in (*writers, reader)] == [0] * (WRITERS + 1)
    assert sorted(os.listdir(out)) == ["index.json"] + [f"train-{i:06d}.tar" for i in range(N // 10)]
    assert build_index(ShardIndex.load(os.path.join(out, "index.json")).urls).class_counts == [N // 4] * 4


def test_a_write_that_fails_leaves_no_cut_short_shard_and_no_partial_file(tmp_path):
    folder = tmp_path / "images"
    for name in ("a", "b"):
        (folder / name).mkdir(parents=True)
    from shard_factory import npy_bytes

    for i in range(7):
        (folder / "a" / f"{i}.npy").write_bytes(npy_bytes(np.zeros((4, 4, 3), np.uint8)))
    (folder / "b" / "bad.npy").write_bytes(b"not an array")
    out = tmp_path / "shards"
    with pytest.raises(ValueError, match="bad.npy"):
        write_shards(str(folder), str(out), maxcount=3, shuffle_seed=None, progress=False)
    # shards 0 and 1 were complete before the error; shard 2 held one sample when it came
    assert sorted(os.listdir(out)) == ["train-000000.tar", "train-000001.tar"]
