"""Shards and index.json appear whole or not at all: written by several processes at once, as
every rank of a torchrun job does when its script runs ``write_shards`` before reading (the
README's accelerate example did, and failed under 3 processes: ``FileNotFoundError:
'shards/index.json.tmp'``), and when a write fails part-way.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import re
import subprocess
import sys
import time

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
    assert sorted(os.listdir(out)) == [".train.writing", "train-000000.tar", "train-000001.tar"]   # (see write_marks)


FULL_DISK = """
import os, resource, signal, sys
import numpy as np
from streamaug.loader import write_shards
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)            # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
try:
    write_shards((np.zeros((200, 32, 32, 3), np.uint8), np.arange(200) % 2), sys.argv[1], maxcount=50,
                 progress=False)
except OSError as e:
    print("refused:", e.strerror)
print(sorted(os.listdir(sys.argv[1])))
"""


def test_a_full_disk_leaves_no_partial_file(tmp_path):
    """Red team: the end-of-archive blocks failed again on the full disk, the partial file
    (100,000 bytes) stayed, hidden, and that second error replaced the first."""
    out = tmp_path / "shards"
    done = subprocess.run([sys.executable, "-c", FULL_DISK, str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == ["refused: File too large", "[]"], done.stdout   # (no shard was placed: no mark)


def test_rewriting_keeps_a_symlinked_shard_a_link_and_a_shards_mode(tmp_path):
    """Red team: the rename replaced a symlinked shard by a file (its target in the shared store
    kept the old content) and reset a shard's permission bits."""
    images, labels = arrays()
    out, store = tmp_path / "shards", tmp_path / "store"
    write_shards((images, labels), str(out), maxcount=100, progress=False)
    store.mkdir()
    os.replace(out / "train-000000.tar", store / "train-000000.tar")
    os.symlink(store / "train-000000.tar", out / "train-000000.tar")
    os.chmod(out / "train-000001.tar", 0o600)
    write_shards((images[::-1].copy(), labels[::-1].copy()), str(out), maxcount=100, progress=False)
    assert os.path.islink(out / "train-000000.tar")
    assert oct(os.stat(out / "train-000001.tar").st_mode & 0o777) == "0o600"
    assert sorted(os.listdir(store)) == ["train-000000.tar"] and sorted(os.listdir(out)) == \
        ["index.json", "train-000000.tar", "train-000001.tar", "train-000002.tar"]
    loader = StreamLoader(str(out), batch_size=N, shuffle=False)
    assert sorted(loader.index.class_counts) == [N // 4] * 4 and len(next(iter(loader)).keys) == N


def test_the_shard_writer_calls_post_after_each_shard_is_in_place(tmp_path):
    from streamaug.loader.shard_writer import UstarShardWriter

    seen = []
    with UstarShardWriter(str(tmp_path / "s-%02d.tar"), maxcount=10, post=lambda f: seen.append(
            (os.path.basename(f), os.path.exists(f)))) as sink:
        for i in range(25):
            sink.write({"__key__": f"k{i:03d}", "cls": b"0"})
    assert seen == [("s-00.tar", True), ("s-01.tar", True), ("s-02.tar", True)]
    with pytest.raises(TypeError, match="takes no opener="):
        UstarShardWriter(str(tmp_path / "t-%02d.tar"), opener=open)


KILLED_WRITER = """
import time, numpy as np
import streamaug.loader.shard_writer as sw
from streamaug.loader import write_shards
encode = sw.encode_image
sw.encode_image = lambda *a: (time.sleep(0.005), encode(*a))[1]     # slow enough to be killed mid-shard
rng = np.random.default_rng(0)
write_shards((rng.integers(0, 255, (4000, 6, 6, 3), np.uint8), np.arange(4000) % 4), "out", maxcount=1000,
             progress=False)
"""


def test_partial_files_of_a_killed_write_are_named_by_the_next_write(tmp_path):
    """A SIGKILLed writer leaves its hidden partial file (nothing else can remove it): the next
    write into the folder names it, with its size, and a partial file whose writer still runs
    (another rank writing the same shards) is not named."""
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER], cwd=tmp_path)
    out = tmp_path / "out"
    try:
        for _ in range(600):                          # (up to 60 s for its imports and first samples)
            if out.is_dir() and any(f.endswith(".partial") for f in os.listdir(out)):
                break
            assert writer.poll() is None, "the writer ended before it could be killed"
            time.sleep(0.1)
        else:
            pytest.fail("no partial file appeared")
    finally:
        writer.kill()
        writer.wait()
    left = sorted(f for f in os.listdir(out) if f.endswith(".partial"))
    assert len(left) == 1 and left[0].startswith(f".train-000000.tar.{writer.pid}.")
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / f".train-000001.tar.{running.pid}.0123abcd.partial").write_bytes(b"x")
        (out / ".other-000000.tar.999999999.0123abcd.partial").write_bytes(b"x")   # another prefix's
        with pytest.warns(RuntimeWarning, match=r"holds 1 hidden partial file\(s\) \(\d+\.\d MB\) left by a write "
                          r"of train-\*\.tar shards that was killed before it finished \(" + re.escape(left[0])
                          + r"\); nothing reads them: remove them"):
            index = write_shards(arrays(), str(out), maxcount=100, progress=False)
    finally:
        running.kill()
        running.wait()
    assert sum(s.count for s in index.shards) == N and (out / left[0]).exists()   # named, never removed

