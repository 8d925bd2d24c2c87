"""A write that did not finish is not refused when every shard it placed is identical to the one
the folder's index.json lists, and is refused otherwise (``loader/shard_digest.py``,
``loader/write_marker.py``, ``loader/unfinished_write.py``).

Review s36: every rank of a torchrun job writes the same shards into one folder; a rank killed
at teardown after another finished left a dead mark, and every later loader refused a complete
dataset. Shards were stamped with the clock, so two writes of the same inputs differed anyway.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import types

import numpy as np
import pytest

from interrupted_writes import interrupted_at
from streamaug.loader import ShardIndex, StreamLoader, write_shards
from streamaug.loader.shard_index import ShardIndexError
from streamaug.loader.write_marker import UnfinishedWrite

N = 240


def arrays(seed: int = 5):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (N, 6, 6, 3), np.uint8), np.arange(N) % 4


def marks(out, prefix="train") -> list[str]:
    """The marks (pid.token) in ``out``'s marks folder, not their lists of shards."""
    folder = out / f".{prefix}.writing"
    return sorted(n for n in os.listdir(folder) if re.fullmatch(r"\d+\.[0-9a-f]{8}", n)) if folder.is_dir() else []


def keys_read(urls, **kw) -> list[str]:
    return sorted(k for b in StreamLoader(urls, batch_size=50, **kw) for k in b.keys)


def shard_bytes(out) -> dict[str, bytes]:
    return {f: (out / f).read_bytes() for f in sorted(os.listdir(out)) if not f.startswith(".")}


def stopped_write(out, monkeypatch, sample: int, **kw) -> None:
    """A write of ``kw`` into ``out`` stopped by Ctrl-C at its ``sample``-th image."""
    import streamaug.loader.shard_writer as sw

    monkeypatch.setattr(sw, "encode_image", interrupted_at(sample))
    with pytest.raises(KeyboardInterrupt):
        write_shards(kw.pop("source", arrays()), str(out), progress=False, **{"maxcount": 10, **kw})
    monkeypatch.undo()


WAITING_WRITER = """
import json, os, sys, time
import numpy as np
import streamaug.loader.shard_writer as sw
from streamaug.loader import write_shards
out, flags, kw = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
source = np.load(os.path.join(flags, "source.npz"))
stops = [int(s) for s in sys.argv[4:]]
encode, calls = sw.encode_image, [0]

def encode_or_wait(*args):          # at each stop: say so, and wait for the test's go
    calls[0] += 1
    if calls[0] in stops:
        open(os.path.join(flags, f"at{calls[0]}"), "w").close()
        while not os.path.exists(os.path.join(flags, f"go{calls[0]}")):
            time.sleep(0.01)
    return encode(*args)
sw.encode_image = encode_or_wait
write_shards((source["images"], source["labels"]), out, progress=False, **kw)
"""


class WaitingWriter:
    """``write_shards(source, out, **kw)`` in a process of its own that waits at each of ``stops``
    (its n-th image) until let go; ``kill()`` SIGKILLs it where it waits."""

    def __init__(self, tmp_path, out, source, stops, **kw):
        self.flags = tmp_path / f"flags{len(os.listdir(tmp_path))}"
        self.flags.mkdir()
        np.savez(self.flags / "source.npz", images=source[0], labels=source[1])
        self.process = subprocess.Popen([sys.executable, "-c", WAITING_WRITER, str(out), str(self.flags),
                                         json.dumps({"maxcount": 10, **kw}), *map(str, stops)])

    def wait_at(self, stop: int) -> None:
        for _ in range(1200):                      # (up to 60 s for its imports and first samples)
            if (self.flags / f"at{stop}").exists():
                return
            assert self.process.poll() is None, "the writer ended before its stop"
            time.sleep(0.05)
        pytest.fail(f"the writer did not reach image {stop}")

    def go(self, stop: int) -> None:
        (self.flags / f"go{stop}").touch()

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()


@pytest.fixture
def writers():
    started: list[WaitingWriter] = []
    yield started
    for w in started:
        if w.process.poll() is None:
            w.kill()


def test_a_rank_killed_after_another_finished_the_same_write_leaves_the_dataset_readable(tmp_path, writers):
    """The reviewer's case: ranks A and B write the same inputs into one folder; B finishes while A
    runs (A's mark stays); A goes on placing shards over B's, and is SIGKILLed mid-write."""
    out = tmp_path / "shards"
    a = WaitingWriter(tmp_path, out, arrays(), [25, 75])
    writers.append(a)
    a.wait_at(25)                                  # A has placed 2 shards and writes its third
    index = write_shards(arrays(), str(out), maxcount=10, progress=False)            # B, whole
    assert len(marks(out)) == 1, "A's write runs: its mark stays"
    a.go(25)
    a.wait_at(75)                                  # A has placed 7 shards, 5 of them after B's index
    a.kill()
    assert keys_read(str(out)) == sorted(f"train_{i:08d}" for i in range(N))
    [mark] = marks(out)
    assert len((out / ".train.writing" / f"{mark}.shards").read_text().splitlines()) == 7, "the 7 shards A placed"
    head = json.loads((out / ".train.writing" / mark).read_text())      # (one JSON object, as earlier readers parse)
    assert head["host"] == socket.gethostname() and head["pid"] == a.process.pid
    assert keys_read(index) == keys_read(str(out / "train-{000000..000023}.tar"), index=False)
    with pytest.warns(RuntimeWarning, match=r"1 hidden partial file\(s\) .* \(\.train-000007\.tar\."):   # (A's 8th)
        write_shards(arrays(), str(out), maxcount=10, progress=False)
    assert marks(out) == [], "a finished write removes the dead mark whose shards are its own"


@pytest.mark.parametrize("change, refused", [
    ({}, False),                                                        # the same write: harmless
    ({"source": arrays(seed=6)}, True),                                 # other images
    ({"maxcount": 12}, True),                                           # other shard sizes
    ({"shuffle_seed": 3}, True),                                        # another order
    ({"image_format": "png"}, True),                                    # another encoding
    ({"class_names": list("abcd")}, False),   # the same shards: index.json (the earlier one, in place) says all
])
def test_a_stopped_write_is_refused_unless_its_shards_are_those_the_index_lists(tmp_path, monkeypatch, change,
                                                                               refused):
    out = tmp_path / "shards"
    write_shards(arrays(), str(out), maxcount=10, progress=False)
    stopped_write(out, monkeypatch, 95, **change)
    assert len(marks(out)) == 1
    if refused:
        with pytest.raises(UnfinishedWrite, match=r"stopped by an error or Ctrl-C.*; the train-000000\.tar it wrote "
                                                  r"differs from the one .*index\.json' lists\. Run the write again"):
            StreamLoader(str(out), batch_size=10)
    else:
        assert len(keys_read(str(out))) == N


def test_a_killed_write_of_other_data_over_an_earlier_index_is_refused_and_of_the_same_is_not(tmp_path, writers):
    out = tmp_path / "shards"
    write_shards(arrays(), str(out), maxcount=10, progress=False)
    other = WaitingWriter(tmp_path, out, arrays(seed=6), [95])
    same = WaitingWriter(tmp_path, tmp_path / "same", arrays(), [95])
    writers.extend([other, same])
    write_shards(arrays(), str(tmp_path / "same"), maxcount=10, progress=False)
    for w in (other, same):
        w.wait_at(95)
        w.kill()
    with pytest.raises(UnfinishedWrite, match=rf"by pid {other.process.pid} on .*, its process is gone\).*; the "
                                              r"train-000000\.tar it wrote differs from the one"):
        StreamLoader(str(out), batch_size=10)
    assert len(marks(tmp_path / "same")) == 1 and len(keys_read(str(tmp_path / "same"))) == N


def test_a_killed_write_with_no_index_in_place_is_refused(tmp_path, writers):
    out = tmp_path / "shards"
    w = WaitingWriter(tmp_path, out, arrays(), [95])
    writers.append(w)
    w.wait_at(95)
    w.kill()
    with pytest.raises(UnfinishedWrite, match=r"its process is gone\).*; there is no .*index\.json' to compare the "
                                              r"shards it wrote with"):
        StreamLoader(str(out / "train-{000000..000008}.tar"), batch_size=10, index=False)


def dead_mark(out, lines: list[str], **header) -> str:
    """A mark of a write on this machine whose process is gone, naming ``lines`` (``name digest``)."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (out / ".train.writing").mkdir(exist_ok=True)
    path = out / ".train.writing" / f"{gone.pid}.0123abcd"
    head = {"samples": N, "pid": gone.pid, "host": socket.gethostname(), "started": "then", "locked": True,
            "stopped": 0, "digests": "blake2b-16", **header}
    path.write_text(json.dumps(head))
    (out / ".train.writing" / f"{path.name}.shards").write_text("".join(line + "\n" for line in lines))
    return str(path)


def index_digests(out) -> list[tuple[str, str]]:
    return [(s["url"], s["digest"]) for s in json.loads((out / "index.json").read_text())["shards"]]


def test_a_dead_mark_is_judged_shard_by_shard_against_the_index(tmp_path):
    out = tmp_path / "shards"
    write_shards(arrays(), str(out), maxcount=10, progress=False)
    listed = index_digests(out)
    assert listed[0][1] == hashlib.blake2b((out / listed[0][0]).read_bytes(), digest_size=16).hexdigest()
    lines = [f"{name} {digest}" for name, digest in listed[:5]]
    dead_mark(out, lines)
    assert len(keys_read(str(out))) == N, "every shard it names is the index's"
    other = "0" * 32 if listed[3][1] != "0" * 32 else "1" * 32
    for bad, header, why in [
        (lines[:3] + [f"train-000003.tar {other}"] + lines[4:], {}, r"the train-000003\.tar it wrote differs from"),
        (lines + [f"train-000099.tar {other}"], {}, r"it wrote train-000099\.tar, which .* does not list"),
        (lines + ["train-000005.tar -"], {}, r"its mark records no digest for train-000005\.tar"),
        (lines + ["train-000005.t"], {}, r"line 6 of its list of shards is no shard and digest: 'train-000005\.t'"),
        (lines, {"digests": None}, r"its mark records no shard digests"),          # (an older mark's header)
    ]:
        shutil.rmtree(out / ".train.writing")
        dead_mark(out, bad, **header)
        with pytest.raises(UnfinishedWrite, match=why):
            StreamLoader(str(out), batch_size=10)


def test_a_dead_mark_beside_an_index_without_digests_is_refused(tmp_path):
    """No digests in index.json (``streamaug index`` writes none), nothing to compare: refused."""
    out = tmp_path / "shards"
    write_shards(arrays(), str(out), maxcount=10, progress=False)
    lines = [f"{name} {digest}" for name, digest in index_digests(out)]
    doc = json.loads((out / "index.json").read_text())
    for s in doc["shards"]:
        del s["digest"]
    (out / "index.json").write_text(json.dumps(doc))
    assert ShardIndex.load(str(out / "index.json")).shards[0].digest is None, "an index without digests loads"
    dead_mark(out, lines)
    with pytest.raises(UnfinishedWrite, match=r"index\.json' records no shard digests"):
        StreamLoader(str(out), batch_size=10)


def test_a_mark_too_large_to_read_is_refused_by_its_size(tmp_path, monkeypatch):
    from streamaug.loader import unfinished_write

    out = tmp_path / "shards"
    write_shards(arrays(), str(out), maxcount=10, progress=False)
    dead_mark(out, [f"{name} {digest}" for name, digest in index_digests(out)])
    assert len(keys_read(str(out))) == N
    monkeypatch.setattr(unfinished_write, "MAX_MARK_BYTES", 1000)
    with pytest.raises(UnfinishedWrite, match=r"its list of shards is 1,\d{3} bytes, over the 1,000 read "
                                              r"\(MAX_MARK_BYTES\)"):
        StreamLoader(str(out), batch_size=10)


def test_a_write_of_other_data_that_dies_during_a_finishing_write_keeps_its_mark(tmp_path, monkeypatch):
    """A mark that died after the finishing write placed its first shard may have placed its own
    shards over the finishing write's: removed only if they are identical to the ones it lists."""
    import streamaug.loader.shard_writer as sw

    out = tmp_path / "shards"
    write_shards(arrays(), str(out), maxcount=10, progress=False)
    made: list[str] = []
    encode, calls = sw.encode_image, [0]

    def encode_and_die_alongside(*args):           # two writes die alongside this one, after its first shard
        calls[0] += 1
        if calls[0] == 50:
            listed = index_digests(out)
            made.append(dead_mark(out, [f"{listed[0][0]} {'0' * 32}", " ".join(listed[1])]))   # other data
            made.append(dead_mark(out, [f"{name} {digest}" for name, digest in listed]))   # the same
        return encode(*args)
    monkeypatch.setattr(sw, "encode_image", encode_and_die_alongside)
    write_shards(arrays(), str(out), maxcount=10, progress=False)
    assert marks(out) == [os.path.basename(made[0])]
    with pytest.raises(UnfinishedWrite, match=r"the train-000000\.tar it wrote differs from the one"):
        StreamLoader(str(out), batch_size=10)


def test_two_writes_of_the_same_inputs_at_different_times_make_identical_shards(tmp_path, monkeypatch):
    """A shard's bytes are its inputs' (members carry SHARD_MTIME, not the clock), and index.json
    gives each shard's digest, that of the bytes on disk."""
    import webdataset.writer

    images, labels = arrays()
    for fmt in ("npy", "jpg", "png"):
        write_shards((images, labels), str(tmp_path / f"{fmt}1"), image_format=fmt, maxcount=100, progress=False)
        monkeypatch.setattr(webdataset.writer, "time", types.SimpleNamespace(time=lambda: 2e9))     # (a day later)
        write_shards((images, labels), str(tmp_path / f"{fmt}2"), image_format=fmt, maxcount=100, progress=False)
        monkeypatch.undo()
        assert shard_bytes(tmp_path / f"{fmt}1") == shard_bytes(tmp_path / f"{fmt}2")
        for url, digest in index_digests(tmp_path / f"{fmt}1"):
            data = (tmp_path / f"{fmt}1" / url).read_bytes()
            assert digest == hashlib.blake2b(data, digest_size=16).hexdigest()


@pytest.mark.parametrize("digest", ["A" * 32, "0" * 31, 7, ""])
def test_an_index_digest_that_is_no_digest_is_refused_by_name(tmp_path, digest):
    out = tmp_path / "shards"
    write_shards(arrays(), str(out), maxcount=100, progress=False)
    doc = json.loads((out / "index.json").read_text())
    doc["shards"][1]["digest"] = digest
    (out / "index.json").write_text(json.dumps(doc))
    with pytest.raises(ShardIndexError, match=rf"shards\[1\]\.digest must be 32 lowercase hex digits, or absent "
                                              rf"\(shard 'train-000001\.tar'\) \(value: {re.escape(repr(digest))}\)"):
        ShardIndex.load(str(out / "index.json"))


def test_streamaug_index_over_a_passed_mark_removes_it(tmp_path):
    """An index built from the shards records no digests, beside which the mark would be refused;
    it describes the shards as they are, so the mark that was passed goes."""
    from streamaug.loader import build_index

    out = tmp_path / "shards"
    write_shards(arrays(), str(out), maxcount=10, progress=False)
    dead_mark(out, [f"{name} {digest}" for name, digest in index_digests(out)[:4]])
    elsewhere = build_index(str(out), str(tmp_path / "elsewhere.json"), progress=False)
    assert len(marks(out)) == 1, "index.json beside the shards is unchanged: the mark stays"
    build_index(str(out), progress=False)
    assert "digest" not in json.loads((out / "index.json").read_text())["shards"][0]
    assert marks(out) == [] and len(keys_read(str(out))) == elsewhere.total == N


def test_no_mark_costs_one_stat_per_folder(tmp_path, monkeypatch):
    from streamaug.loader import write_marker

    write_shards(arrays(), str(tmp_path / "a"), maxcount=10, progress=False)
    write_shards(arrays(), str(tmp_path / "b"), maxcount=100, progress=False)
    urls = [str(p) for p in sorted(tmp_path.glob("*/*.tar"))]
    calls: list[str] = []
    for name in ("stat", "lstat", "listdir", "scandir", "open"):
        monkeypatch.setattr(os, name, lambda *a, _f=getattr(os, name), _n=name, **k: (calls.append(_n), _f(*a, **k))[1])
    assert write_marker.refuse_unfinished_write(urls) == []
    monkeypatch.undo()
    assert len(urls) == 27 and calls == ["stat", "stat"]


def test_a_mark_that_cannot_be_read_is_refused(tmp_path, monkeypatch):
    """Review s37: an empty or garbled mark (a node that crashed before its writes reached the
    disk) or one this user may not open read as another machine's running write, and a killed
    write of other data was read past."""
    out = tmp_path / "shards"
    write_shards(arrays(), str(out), maxcount=10, progress=False)
    for body, why in [(b"", r"its mark's record is unreadable \(0 bytes"),
                      (b"\0" * 300, r"its mark's record is unreadable \(300 bytes")]:
        shutil.rmtree(out / ".train.writing", ignore_errors=True)
        (out / ".train.writing").mkdir()
        (out / ".train.writing" / "123.0123abcd").write_bytes(body)
        with pytest.raises(UnfinishedWrite, match=why):
            StreamLoader(str(out), batch_size=10)
    mark = dead_mark(out, [f"{name} {digest}" for name, digest in index_digests(out)])
    os.remove(out / ".train.writing" / "123.0123abcd")
    assert len(keys_read(str(out))) == N
    real_open = os.open

    def refused(path, *args, **kw):
        if os.fspath(path) == mark:
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, *args, **kw)
    monkeypatch.setattr(os, "open", refused)
    with pytest.raises(UnfinishedWrite, match=r"its mark cannot be opened: Permission denied"):
        StreamLoader(str(out), batch_size=10)


def test_a_mark_and_its_list_are_readable_by_others_whatever_the_umask(tmp_path, monkeypatch):
    out = tmp_path / "shards"
    old = os.umask(0o077)
    try:
        stopped_write(out, monkeypatch, 95)
    finally:
        os.umask(old)
    [mark] = marks(out)
    for name in (mark, f"{mark}.shards"):
        assert oct(os.stat(out / ".train.writing" / name).st_mode & 0o777) == "0o644", name


def test_passed_marks_parse_the_folders_index_once_while_it_is_unchanged(tmp_path, monkeypatch):
    """Review s37: each passed mark parsed index.json again (and resolved every shard's path), on
    every loader: 8 marks beside 5,000 shards added 5.5 s to each StreamLoader."""
    from streamaug.loader import shard_digest

    out = tmp_path / "shards"
    write_shards(arrays(), str(out), maxcount=10, progress=False)
    lines = [f"{name} {digest}" for name, digest in index_digests(out)]
    for k in range(4):
        gone = dead_mark(out, lines[k:])
        os.rename(gone, out / ".train.writing" / f"{k + 1}{os.path.basename(gone)}")
        os.rename(gone + ".shards", out / ".train.writing" / f"{k + 1}{os.path.basename(gone)}.shards")
    assert len(marks(out)) == 4
    loads = []

    class Counted:                      # the mark check's parses only, not the loaders' own
        load = staticmethod(lambda *a, **kw: loads.append(a) or ShardIndex.load(*a, **kw))
    monkeypatch.setattr(shard_digest, "ShardIndex", Counted)
    assert len(keys_read(str(out))) == N and len(keys_read(str(out))) == N
    assert len(loads) == 1, "one parse for four marks and two loaders"
    write_shards(arrays(), str(out), maxcount=10, progress=False)            # (its marks had ended before it)
    assert marks(out) == []
    dead_mark(out, lines)
    assert len(keys_read(str(out))) == N and len(loads) == 2, "a new index.json is parsed again"


def test_a_write_killed_between_its_list_and_the_rename_changed_nothing(tmp_path):
    """Review s37: the line is on disk before the rename, so a write of other data killed between
    the two named a shard it never placed, and the unchanged folder was refused."""
    out = tmp_path / "shards"
    write_shards(arrays(), str(out), maxcount=10, progress=False)
    listed = index_digests(out)
    other = "0" * 32 if listed[2][1] != "0" * 32 else "1" * 32
    dead_mark(out, [f"{name} {digest}" for name, digest in listed[:2]] + [f"train-000002.tar {other}"])
    assert len(keys_read(str(out))) == N, "its last shard was not renamed: the file is the index's"
    shutil.rmtree(out / ".train.writing")
    dead_mark(out, [f"train-000002.tar {other}"] + [f"{name} {digest}" for name, digest in listed[3:4]])
    with pytest.raises(UnfinishedWrite, match=r"the train-000002\.tar it wrote differs"):
        StreamLoader(str(out), batch_size=10)      # (not the last: it was renamed, whatever the file says now)
    shutil.rmtree(out / ".train.writing")          # the last, renamed: the file there is not the index's
    write_shards(arrays(seed=9), str(tmp_path / "other"), maxcount=10, progress=False)
    os.replace(tmp_path / "other" / "train-000002.tar", out / "train-000002.tar")
    renamed = index_digests(tmp_path / "other")[2][1]
    dead_mark(out, [f"{name} {digest}" for name, digest in listed[:2]] + [f"train-000002.tar {renamed}"])
    with pytest.raises(UnfinishedWrite, match=r"the train-000002\.tar it wrote differs"):
        StreamLoader(str(out), batch_size=10)


def test_a_passed_mark_does_not_pass_shards_its_index_does_not_list(tmp_path):
    """Review s37: a smaller write killed after its index.json went in place, before its warning
    about the larger earlier write's shards: with index=False those were read, mixed in."""
    out = tmp_path / "shards"
    big = arrays(seed=9)
    write_shards((np.concatenate([big[0], big[0][:60]]), np.concatenate([big[1], big[1][:60]])), str(out),
                 maxcount=10, progress=False)                                 # 30 shards
    with pytest.warns(RuntimeWarning, match=r"still holds 6 train-\*\.tar shard\(s\) from an earlier write"):
        write_shards(arrays(), str(out), maxcount=10, progress=False)         # 24 shards over them
    dead_mark(out, [f"{name} {digest}" for name, digest in index_digests(out)])
    assert len(keys_read(str(out / "train-{000000..000023}.tar"), index=False)) == N
    with pytest.raises(UnfinishedWrite, match=r"train-000024\.tar', read here, is not in .*index\.json'"):
        StreamLoader(str(out / "train-{000000..000029}.tar"), batch_size=10, index=False)
