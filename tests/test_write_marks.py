"""Shards of a write that did not finish are refused by name, and a complete dataset is not
refused for a write that changed nothing or still runs (``loader/write_marker.py``).

Red team s36: after Ctrl-C, the shards written so far (and, over an earlier write, its
index.json and the shards not yet reached) stayed, whole, with nothing to show they were part
of the source; the loader's hint, `streamaug index`, indexed the fragment (1,200 of 6,000).
Review s36 of the first form (a ``.{prefix}.{pid}.writing`` file made at the write's start):
a SIGTERM before the first shard refused a complete dataset, a reused pid hid a killed write,
two writes in one process shared a mark, and every loader listed the shards' whole folder.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from interrupted_writes import interrupted_at
from streamaug.loader import ShardIndex, StreamLoader, build_index, write_shards
from streamaug.loader.write_marker import UnfinishedWrite

N = 240


def arrays():
    rng = np.random.default_rng(5)
    return rng.integers(0, 255, (N, 6, 6, 3), np.uint8), np.arange(N) % 4


def marks(out, prefix="train") -> list[str]:
    folder = out / f".{prefix}.writing"
    return sorted(n for n in os.listdir(folder) if not n.endswith(".shards")) if folder.is_dir() else []


def read_all(urls, **kw) -> int:
    return sum(len(b.keys) for b in StreamLoader(urls, batch_size=50, **kw))


def stopped_write(out, monkeypatch, sample: int, seed: int = 1) -> None:
    import streamaug.loader.shard_writer as sw

    monkeypatch.setattr(sw, "encode_image", interrupted_at(sample))
    with pytest.raises(KeyboardInterrupt):
        write_shards(arrays(), str(out), maxcount=10, shuffle_seed=seed, progress=False)
    monkeypatch.undo()


def test_shards_of_a_write_stopped_part_way_are_refused_until_it_is_run_again(tmp_path, monkeypatch):
    out = tmp_path / "shards"
    write_shards(arrays(), str(out), maxcount=10, progress=False)                 # an earlier, whole write
    stopped_write(out, monkeypatch, 5)                                            # before its first shard
    assert marks(out) == [] and not (out / ".train.writing").exists(), "it changed nothing: nothing to refuse"
    assert read_all(str(out)) == N
    stopped_write(out, monkeypatch, 95)                                           # part-way
    [mark] = marks(out)
    assert mark.startswith(f"{os.getpid()}.")
    refusal = rf"{re.escape(repr(str(out)))}: a write of train-\*\.tar shards into this folder did not finish " \
              rf"\({N} samples, began .* by pid {os.getpid()} on .*, stopped by an error or Ctrl-C\), so the .* " \
              rf"Run the write again .*or remove {re.escape(repr(str(out / '.train.writing' / mark)))} and its list " \
              rf"{re.escape(repr(str(out / '.train.writing' / mark) + '.shards'))} to read them"
    for read in (lambda: StreamLoader(str(out), batch_size=10),
                 lambda: StreamLoader(str(out / "train-{000000..000003}.tar"), batch_size=10, index=False),
                 lambda: StreamLoader(ShardIndex.load(str(out / "index.json")), batch_size=10),
                 lambda: StreamLoader(str(out / "index.json"), batch_size=10),
                 lambda: build_index(str(out / "train-000001.tar"), str(tmp_path / "one.json"), progress=False)):
        with pytest.raises(UnfinishedWrite, match=refusal):
            read()
    stopped_write(out, monkeypatch, 5, seed=9)         # the same process again, before its first shard:
    assert marks(out) == [mark]                        # the first write's mark stays (review s36: it went)
    stopped_write(out, monkeypatch, 35, seed=9)        # and part-way: a mark of its own
    assert len(marks(out)) == 2
    val = write_shards(arrays(), str(tmp_path / "val"), prefix="val", maxcount=100, progress=False)
    (tmp_path / "val" / ".train.writing").mkdir()
    (tmp_path / "val" / ".train.writing" / mark).write_bytes((out / ".train.writing" / mark).read_bytes())
    assert read_all(val) == N, "another prefix's mark is not this prefix's"
    index = write_shards(arrays(), str(out), maxcount=10, shuffle_seed=1, progress=False)    # run again
    assert not (out / ".train.writing").exists(), "a finished write removes the marks of those it replaced"
    assert read_all(index) == N


HOLD_MARK = """
import sys, time
from streamaug.loader.write_marker import WriteMark
mark = WriteMark(sys.argv[1], "train", 4000)
mark.before_place("train-000000.tar")
print(mark.path, flush=True)
time.sleep(120)
"""


def test_a_running_writes_mark_is_not_refused_and_a_killed_ones_is(tmp_path):
    """A mark stays locked while its write runs (another rank writing the same shards now); the
    kernel drops the lock when the process dies, so a SIGKILLed write is seen as gone, and a
    finished write by another process removes its mark."""
    out = tmp_path / "shards"
    write_shards(arrays(), str(out), maxcount=10, progress=False)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_MARK, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        path = holder.stdout.readline().strip()
        assert os.path.dirname(path) == str(out / ".train.writing")
        assert read_all(str(out)) == N, "a write that runs now is not refused"
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    finally:
        holder.kill()
        holder.wait()
    with pytest.raises(UnfinishedWrite, match=rf"4000 samples, began .* by pid {holder.pid} on .*, its process is gone"):
        StreamLoader(str(out), batch_size=10)
    write_shards(arrays(), str(out), maxcount=10, progress=False)
    assert not (out / ".train.writing").exists() and read_all(str(out)) == N


KILLED_BEFORE_ITS_FIRST_SHARD = """
import time, numpy as np
import streamaug.loader.shard_writer as sw
from streamaug.loader import write_shards
encode = sw.encode_image
sw.encode_image = lambda *a: (time.sleep(0.01), encode(*a))[1]     # 10 s per shard of 1,000
rng = np.random.default_rng(0)
write_shards((rng.integers(0, 255, (4000, 6, 6, 3), np.uint8), np.arange(4000) % 4), "shards", maxcount=1000,
             progress=False)
"""


def test_a_rewrite_stopped_by_sigterm_before_its_first_shard_leaves_the_dataset_readable(tmp_path):
    """Review s36: the mark was made at the start, and SIGTERM (scancel, docker stop) raises no
    exception, so a dataset whose every byte was unchanged was refused."""
    out = tmp_path / "shards"
    write_shards(arrays(), str(out), maxcount=10, progress=False)
    before = {f: (out / f).read_bytes() for f in os.listdir(out) if not f.startswith(".")}
    writer = subprocess.Popen([sys.executable, "-c", KILLED_BEFORE_ITS_FIRST_SHARD], cwd=tmp_path)
    try:
        for _ in range(600):                          # (up to 60 s for its imports and first samples)
            if any(f.endswith(".partial") for f in os.listdir(out)):
                break
            assert writer.poll() is None, "the writer ended before it could be stopped"
            time.sleep(0.1)
        else:
            pytest.fail("no partial file appeared")
        writer.send_signal(signal.SIGTERM)
        writer.wait(30)
    finally:
        writer.kill()
        writer.wait()
    assert {f: (out / f).read_bytes() for f in os.listdir(out) if not f.startswith(".")} == before
    assert not (out / ".train.writing").exists()
    assert read_all(str(out)) == N


@pytest.mark.parametrize("host, locked, stopped, refused", [
    (socket.gethostname(), True, 0, "its process is gone"),     # this machine's, its lock free
    (socket.gethostname(), False, 0, "its process is gone"),    # no locks here: its pid no longer runs
    ("elsewhere", True, 0, None),       # locks may hold within one machine only: a free one shows nothing
    ("elsewhere", False, 0, None),
    ("elsewhere", True, 1, "stopped by an error or Ctrl-C"),
])
def test_a_mark_is_judged_by_its_lock_or_pid_on_its_own_host_and_elsewhere_only_when_stopped(
        tmp_path, host, locked, stopped, refused):
    """Second review s36: on a mount whose locks hold within one node (NFS local_lock, Lustre
    localflock), another node's running write found its lock free and was refused."""
    out = tmp_path / "shards"
    write_shards(arrays(), str(out), maxcount=10, progress=False)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (out / ".train.writing").mkdir()
    (out / ".train.writing" / f"{gone.pid}.0123abcd").write_text(json.dumps(
        {"samples": N, "pid": gone.pid, "host": host, "started": "then", "locked": locked, "stopped": stopped}))
    (out / ".train.writing" / "notes.txt").write_text("not a mark")            # (stray entries are passed over)
    (out / ".train.writing" / "12.0123abce").mkdir()
    if refused:
        with pytest.raises(UnfinishedWrite, match=rf"by pid {gone.pid} on {re.escape(host)}, {refused}"):
            StreamLoader(str(out), batch_size=10)
    else:
        assert read_all(str(out)) == N


def test_a_write_that_ends_while_a_reader_looks_at_its_mark_is_not_taken_for_a_dead_one(tmp_path, monkeypatch):
    """Second review s36: a reader that opened a mark just before its write removed it and
    closed its lock found the lock free, and refused a complete dataset (497 of 210,467 checks)."""
    from streamaug.loader import write_marker

    out = tmp_path / "shards"
    write_shards(arrays(), str(out), maxcount=10, progress=False)
    mark = write_marker.WriteMark(str(out), "train", N)
    mark.before_place("train-000000.tar")
    flock = write_marker.fcntl.flock

    def write_ends_first(fd, op):         # the write ends between the reader's open and its lock
        if op & write_marker.fcntl.LOCK_SH and mark.path is not None and mark._fd is not None:
            mark.shard_placed("train-000000.tar")
            mark.end()
        return flock(fd, op)
    monkeypatch.setattr(write_marker.fcntl, "flock", write_ends_first)
    assert read_all(str(out)) == N
    assert not (out / ".train.writing").exists()


def test_a_write_whose_first_rename_fails_leaves_no_mark(tmp_path, monkeypatch):
    """Second review s36: the mark is made before the rename; when that fails (another user's
    shard in a sticky folder), the folder is as it was, and the mark must go too."""
    import streamaug.loader.shard_writer as sw

    out = tmp_path / "shards"
    write_shards(arrays(), str(out), maxcount=10, progress=False)

    def refused(partial, path):
        os.unlink(partial)
        raise PermissionError(1, "Operation not permitted", path)
    monkeypatch.setattr(sw, "put_in_place", refused)
    with pytest.raises(PermissionError):
        write_shards(arrays(), str(out), maxcount=10, shuffle_seed=3, progress=False)
    monkeypatch.undo()
    assert not (out / ".train.writing").exists() and read_all(str(out)) == N


def test_the_marks_folder_takes_the_dataset_folders_permissions(tmp_path, monkeypatch):
    """Second review s36: with the writer's umask, another user of a shared folder could neither
    remove a stopped mark nor make one of their own."""
    out = tmp_path / "shards"
    out.mkdir()
    os.chmod(out, 0o1777)
    stopped_write(out, monkeypatch, 35)
    assert (out / ".train.writing").stat().st_mode & 0o7777 == 0o1777


HOLD_MARK_AND_FORK = """
import os, sys, time
from streamaug.loader.write_marker import WriteMark
mark = WriteMark(sys.argv[1], "train", 4000)
mark.before_place("train-000000.tar")
if os.fork() == 0:                    # a child forked during the write (a DataLoader worker, say)
    print(os.getpid(), flush=True)
    time.sleep(120)
    os._exit(0)
time.sleep(120)
"""


def test_a_child_forked_during_a_write_does_not_keep_a_dead_writes_lock(tmp_path):
    out = tmp_path / "shards"
    write_shards(arrays(), str(out), maxcount=10, progress=False)
    writer = subprocess.Popen([sys.executable, "-c", HOLD_MARK_AND_FORK, str(out)], stdout=subprocess.PIPE, text=True)
    child = int(writer.stdout.readline())
    try:
        assert read_all(str(out)) == N, "its write runs"
        writer.kill()
        writer.wait()
        with pytest.raises(UnfinishedWrite, match="its process is gone"):
            StreamLoader(str(out), batch_size=10)
    finally:
        writer.kill()
        writer.wait()
        os.kill(child, signal.SIGKILL)


def test_a_write_through_symlinked_shards_is_judged_where_the_links_are(tmp_path, monkeypatch):
    """Review s36: the writer marked the links' folder, the reader looked beside their targets."""
    real, links = tmp_path / "real", tmp_path / "links"
    write_shards(arrays(), str(real), maxcount=10, progress=False)
    links.mkdir()
    for f in os.listdir(real):
        if f.endswith(".tar"):
            (links / f).symlink_to(real / f)
    stopped_write(links, monkeypatch, 95)
    assert (links / "train-000000.tar").is_symlink() and marks(links)
    with pytest.raises(UnfinishedWrite):
        StreamLoader(str(links), batch_size=10, index=False)
