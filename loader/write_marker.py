"""A mark that a write of shards into a folder began and did not finish.

``write_shards`` (``streamaug shards``) writes each shard atomically, but a dataset is many
shards: a write stopped part-way (Ctrl-C, a kill, a full disk, an image that does not decode)
leaves the shards written so far and, over an earlier write, the earlier ``index.json`` and the
earlier shards the new write had not reached. Every file there is whole, so nothing else shows
that together they are part of one source, or a mix of two.

So, just before a write puts its first shard in place, it makes a mark, a file of its own in the
hidden folder ``.{prefix}.writing`` beside the shards, and holds a lock on it (``flock``) until
it ends. The mark is a line of JSON (who wrote it, and ``stopped``), then a line per shard,
``{name} {digest}``, added before the shard is renamed into place (:mod:`.shard_digest`). A
write that raises (``KeyboardInterrupt`` included) marks it stopped, or removes it if no shard
was put in place; a finished write removes it, and the marks of writes that had ended before its
first shard went in place (it replaced their shards) or that placed only shards its index.json
lists with the same digests. The loader and ``streamaug index`` refuse local shards named
``{prefix}-NNNNNN.tar`` beside a mark that is stopped, or that this machine made and no longer
holds locked (the kernel drops the lock when the process dies, whatever its pid; where the file
system has no locks, its pid no longer runs), naming it and the ways out, unless each shard the
mark names has the digest the folder's ``index.json`` lists for it: the write placed only shards
identical to those the index describes (a rank killed at torchrun's teardown after another rank
finished writing the same shards). A mark without digests or over ``MAX_MARK_BYTES``, a shard
the index does not list, or lists with another digest or none (``streamaug index`` records
none), or no readable index: refused. ``streamaug index``, writing the index.json beside a mark
it passed, removes the mark. A mark still locked is a write running now, not refused: several
ranks may write the same shards at once and read them as each finishes (``atomic_file``).
Another machine's mark is refused only when stopped: locks may hold within one machine only
(node-local NFS and Lustre mounts), so its free lock does not show its write gone. A child forked
during a write closes the lock it inherits. Reading costs one ``stat`` per folder and prefix
while no write is marked.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import socket
import time

from .atomic_file import process_running
from .shard_digest import DIGEST_SIZE, placed_line, placed_shards, placed_unlike_index
from .shard_index import INDEX_NAME
from .shard_urls import absolute_path, is_local

SHARD_NAME = re.compile(r"(?P<prefix>[\w-]+)-\d{6}\.tar")
MARK_NAME = re.compile(r"\d+\.[0-9a-f]{8}")           # a mark's file name: pid.token
DIGESTS = f"blake2b-{DIGEST_SIZE}"                     # what a mark's digests are (marks without it name none)
MAX_MARK_BYTES = 256 << 20                             # over 2 million shards' lines
_HELD: set[int] = set()                                # this process's marks' descriptors (see _close_in_child)


def _close_in_child() -> None:
    """A child forked during a write must not hold the write's lock after the writer is gone."""
    for fd in list(_HELD):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_child)


class UnfinishedWrite(ValueError):
    """Shards that a write which did not finish left (see the module's docstring)."""


def shard_prefix(name: str) -> str | None:
    """``train`` for a shard file name ``train-000012.tar``; None for any other name."""
    m = SHARD_NAME.fullmatch(name)
    return m["prefix"] if m else None


def marks_folder(out_dir: str, prefix: str) -> str:
    return os.path.join(out_dir, f".{prefix}.writing")


class WriteMark:
    """One write's mark (see the module's docstring). ``before_place`` is the shard writer's hook."""

    def __init__(self, out_dir: str, prefix: str, samples: int):
        self.folder, self.samples = marks_folder(out_dir, prefix), samples
        self.path: str | None = None
        self._fd: int | None = None
        self._header = b""
        self._ended_before: set[str] = set()     # marks of writes that had ended before its first shard was placed
        self.placed = 0

    def before_place(self, fname: str, digest: str | None = None) -> None:
        """Called before each shard is renamed into place, with the digest of its bytes: the
        first call makes the mark; each records the shard's name and digest in it."""
        if self.path is None:
            self._ended_before = {n for n in _mark_names(self.folder)
                                  if _unfinished(os.path.join(self.folder, n)) is not None}
            self._make()
        os.write(self._fd, placed_line(fname, digest))

    def shard_placed(self, fname: str) -> None:
        """Called after each shard is in place (the shard writer's ``post=``)."""
        self.placed += 1

    def _make(self) -> None:
        name = f"{os.getpid()}.{secrets.token_hex(4)}"
        for _ in range(5):                        # (a finishing write may remove the empty folder meanwhile)
            if not os.path.isdir(self.folder):
                with contextlib.suppress(FileExistsError):
                    os.mkdir(self.folder)
                    with contextlib.suppress(OSError):  # (as the dataset's folder: other users may write there)
                        os.chmod(self.folder, os.stat(os.path.dirname(self.folder)).st_mode & 0o7777)
            hidden = os.path.join(self.folder, "." + name)
            try:
                fd = os.open(hidden, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)      # locked before any reader can see it
                locked = True
            except OSError:                                    # (a file system without locks)
                locked = False
            self._header = json.dumps({"samples": self.samples, "pid": os.getpid(), "host": socket.gethostname(),
                                       "started": time.strftime("%Y-%m-%d %H:%M:%S"), "locked": locked,
                                       "stopped": 0, "digests": DIGESTS}).encode()
            try:
                os.write(fd, self._header + b"\n")
                os.rename(hidden, os.path.join(self.folder, name))
            except FileNotFoundError:
                os.close(fd)
                continue
            except BaseException:
                os.close(fd)
                _remove(hidden)
                raise
            self.path, self._fd = os.path.join(self.folder, name), fd
            _HELD.add(fd)
            return
        raise OSError(f"could not make a write mark in {self.folder!r}")

    def stop(self) -> None:
        """The write raised: if it had put a shard in place, its shards are part of its source;
        if not (the first rename failed), the folder is as it was, and the mark goes."""
        if self._fd is None:
            return
        if not self.placed:
            _remove(self.path)
            with contextlib.suppress(OSError):    # (not empty: another write is running)
                os.rmdir(self.folder)
        else:
            with contextlib.suppress(OSError):    # (the same length: one byte changes in place)
                os.pwrite(self._fd, self._header.replace(b'"stopped": 0', b'"stopped": 1'), 0)
        self._release()

    def _release(self) -> None:
        _HELD.discard(self._fd)
        os.close(self._fd)
        self._fd = None

    def end(self) -> None:
        """The write finished, its index.json in place: remove its mark, and the marks of writes
        whose shards it replaced or which placed only shards identical to those it lists."""
        if self.path is None:
            return
        _remove(self.path)
        self._release()
        for name in _mark_names(self.folder):
            other = os.path.join(self.folder, name)
            found = _unfinished(other)
            if found is not None and (name in self._ended_before or found[1] is None):
                _remove(other)
        with contextlib.suppress(OSError):        # (not empty: another write is running)
            os.rmdir(self.folder)


@contextlib.contextmanager
def write_marked(out_dir: str, prefix: str, samples: int):
    """The write of ``prefix`` shards in the body, marked from its first shard until it ends."""
    mark = WriteMark(out_dir, prefix, samples)
    try:
        yield mark
    except BaseException:
        mark.stop()
        raise
    mark.end()


def refuse_unfinished_write(urls: list[str]) -> list[str]:
    """Refuse local shards beside the mark of a write that did not finish, unless it placed only
    shards that the folder's index.json lists with the same digest; those marks are returned (one
    ``stat`` per folder, as the URL names it, and prefix, while no write is marked)."""
    passed: list[str] = []
    groups: dict[str, tuple[str, list[str]]] = {}
    for url in urls:
        if is_local(url):
            path = absolute_path(url)
            prefix = shard_prefix(os.path.basename(path))
            if prefix is not None:
                groups.setdefault(marks_folder(os.path.dirname(path), prefix), (prefix, []))[1].append(url)
    for folder, (prefix, shards) in groups.items():
        if not os.path.isdir(folder):
            continue
        out_dir = os.path.dirname(folder)
        for name in _mark_names(folder):
            mark = os.path.join(folder, name)
            found = _unfinished(mark)
            if found is not None and found[1] is None:
                passed.append(mark)
            elif found is not None:
                raise UnfinishedWrite(
                    f"{out_dir!r}: a write of {prefix}-*.tar shards into this folder did not finish "
                    f"({found[0]}), so the {len(shards)} shard(s) read here ({shards[0]!r}"
                    f"{', ...' if len(shards) > 1 else ''}) may be part of its source, or a mix with an earlier "
                    f"write's, and index.json, if any, an earlier write's; {found[1]}. Run the write again "
                    f"(streamaug shards / write_shards: it replaces them), or remove {mark!r} to read them as "
                    f"they are")
    return passed


def remove_passed_marks(marks: list[str], index_path: str) -> None:
    """Remove the ``marks`` that ``refuse_unfinished_write`` passed beside ``index_path`` once an
    index built from the shards as they are (with no digests, beside which they would be
    refused) is in place there."""
    for mark in marks:
        folder = os.path.dirname(mark)
        if os.path.realpath(os.path.join(os.path.dirname(folder), INDEX_NAME)) == os.path.realpath(index_path):
            with contextlib.suppress(OSError):      # (another user's, in a sticky folder: it stays, refused)
                os.remove(mark)
                os.rmdir(folder)


def _mark_names(folder: str) -> list[str]:
    """The marks in ``folder`` (pid.token; not ``.``-hidden ones being made, nor anything else)."""
    try:
        return sorted(n for n in os.listdir(folder) if MARK_NAME.fullmatch(n))
    except OSError:
        return []


def _unfinished(mark: str) -> tuple[str, str | None] | None:
    """Why the write that made ``mark`` did not finish, and why the shards it placed may differ
    from those its folder's index.json lists (None: they cannot); None while it runs (or if the
    mark is gone or cannot be opened: nothing to go by)."""
    try:
        fd = os.open(mark, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            first = os.pread(fd, 4096, 0)
        except OSError:                            # (a folder of that name, say: no mark)
            return None
        try:
            body = json.loads(first.split(b"\n", 1)[0])
            body = body if isinstance(body, dict) else {}
        except ValueError:
            body = {}
        began = (f"{body.get('samples')} samples, began {body.get('started')} by pid {body.get('pid')} on "
                 f"{body.get('host')}") if body else "its record unreadable"
        if body.get("stopped"):
            return _dead(f"{began}, stopped by an error or Ctrl-C", mark, fd, body)
        if body.get("host") != socket.gethostname():
            return None        # (locks may hold only within a machine: node-local NFS and Lustre mounts)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            free = True
        except BlockingIOError:
            return None                            # locked: its write runs now
        except OSError:                            # (no locks here)
            free = False
        if free and body.get("locked", True):
            if not _same_file(mark, fd):           # (its write ended, removing it, between open and lock)
                return None
            return _dead(f"{began}, its process is gone", mark, fd, body)
        if not process_running(int(body.get("pid", 0))):     # (no locks: its pid, on this host)
            return _dead(f"{began}, its process is gone", mark, fd, body)
        return None
    finally:
        os.close(fd)


def _dead(why: str, mark: str, fd: int, body: dict) -> tuple[str, str | None]:
    """``why``, and whether the shards the mark open at ``fd`` names (read whole, up to
    MAX_MARK_BYTES) may differ from those index.json lists beside them."""
    if body.get("digests") != DIGESTS:
        return why, "its mark records no shard digests"
    size = os.fstat(fd).st_size
    if size > MAX_MARK_BYTES:
        return why, f"its mark is {size:,} bytes, over the {MAX_MARK_BYTES:,} read (MAX_MARK_BYTES)"
    chunks, read = [], 0
    while read < size and (chunk := os.pread(fd, size - read, read)):
        chunks.append(chunk)
        read += len(chunk)
    try:
        placed = placed_shards(b"".join(chunks).decode(errors="replace").split("\n")[1:])
    except ValueError as e:
        return why, str(e)
    return why, placed_unlike_index(os.path.dirname(os.path.dirname(mark)), placed)


def _same_file(path: str, fd: int) -> bool:
    try:
        a, b = os.stat(path), os.fstat(fd)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)
