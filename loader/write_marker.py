"""A mark that a write of shards into a folder began and did not finish.

``write_shards`` (``streamaug shards``) writes each shard atomically, but a dataset is many
shards: a write stopped part-way (Ctrl-C, a kill, a full disk, an image that does not decode)
leaves the shards written so far and, over an earlier write, the earlier ``index.json`` and the
earlier shards the new write had not reached. Every file there is whole, so nothing else shows
that together they are part of one source, or a mix of two.

So, just before a write puts its first shard in place, it makes a mark, a file of its own in the
hidden folder ``.{prefix}.writing`` beside the shards, and holds a lock on it (``flock``) until
it ends. A write that raises (``KeyboardInterrupt`` included) marks it stopped, or removes it if
no shard was put in place; a finished write removes it, and the marks of earlier writes it
replaced. The loader and ``streamaug index`` refuse local shards named ``{prefix}-NNNNNN.tar``
beside a mark that is stopped, or that this machine made and no longer holds locked (the kernel
drops the lock when the process dies, whatever its pid; where the file system has no locks, its
pid no longer runs), naming it and the ways out. A mark still locked is a write running now, not
refused: several ranks may write the same shards at once and read them as each finishes
(``atomic_file``). Another machine's mark is refused only when stopped: locks may hold within one
machine only (node-local NFS and Lustre mounts), so its free lock does not show its write gone.
A child forked during a write closes the lock it inherits. Reading costs one ``stat`` per folder
and prefix while no write is marked.
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
from .shard_urls import absolute_path, is_local

SHARD_NAME = re.compile(r"(?P<prefix>[\w-]+)-\d{6}\.tar")
MARK_NAME = re.compile(r"\d+\.[0-9a-f]{8}")           # a mark's file name: pid.token
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
        self._body: dict = {}
        self.placed = 0

    def before_place(self, fname: str) -> None:
        """Called before each shard is renamed into place: the first call makes the mark."""
        if self.path is None:
            self._make()

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
            self._body = {"samples": self.samples, "pid": os.getpid(), "host": socket.gethostname(),
                          "started": time.strftime("%Y-%m-%d %H:%M:%S"), "locked": locked, "stopped": 0}
            try:
                os.write(fd, json.dumps(self._body).encode())
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
                os.pwrite(self._fd, json.dumps({**self._body, "stopped": 1}).encode(), 0)
        self._release()

    def _release(self) -> None:
        _HELD.discard(self._fd)
        os.close(self._fd)
        self._fd = None

    def end(self) -> None:
        """The write finished: remove its mark, and the marks of earlier writes it replaced."""
        if self.path is None:
            return
        _remove(self.path)
        self._release()
        for name in _mark_names(self.folder):
            other = os.path.join(self.folder, name)
            if _unfinished(other) is not None:
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


def refuse_unfinished_write(urls: list[str]) -> None:
    """Refuse local shards beside the mark of a write that did not finish (one ``stat`` per
    folder, as the URL names it, and prefix)."""
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
        for name in _mark_names(folder):
            mark = os.path.join(folder, name)
            why = _unfinished(mark)
            if why is not None:
                raise UnfinishedWrite(
                    f"{os.path.dirname(folder)!r}: a write of {prefix}-*.tar shards into this folder did not finish "
                    f"({why}), so the {len(shards)} shard(s) read here ({shards[0]!r}"
                    f"{', ...' if len(shards) > 1 else ''}) may be part of its source, or a mix with an earlier "
                    f"write's, and index.json, if any, an earlier write's. Run the write again (streamaug shards / "
                    f"write_shards: it replaces them), or remove {mark!r} to read them as they are")


def _mark_names(folder: str) -> list[str]:
    """The marks in ``folder`` (pid.token; not ``.``-hidden ones being made, nor anything else)."""
    try:
        return sorted(n for n in os.listdir(folder) if MARK_NAME.fullmatch(n))
    except OSError:
        return []


def _unfinished(mark: str) -> str | None:
    """Why the write that made ``mark`` did not finish; None while it runs (or if the mark is gone
    or cannot be opened: nothing to go by)."""
    try:
        fd = os.open(mark, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            body = json.loads(os.read(fd, 4096))
            body = body if isinstance(body, dict) else {}
        except ValueError:
            body = {}
        except OSError:                            # (a folder of that name, say: no mark)
            return None
        began = (f"{body.get('samples')} samples, began {body.get('started')} by pid {body.get('pid')} on "
                 f"{body.get('host')}") if body else "its record unreadable"
        if body.get("stopped"):
            return f"{began}, stopped by an error or Ctrl-C"
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
            return f"{began}, its process is gone"
        if not process_running(int(body.get("pid", 0))):     # (no locks: its pid, on this host)
            return f"{began}, its process is gone"
        return None
    finally:
        os.close(fd)


def _same_file(path: str, fd: int) -> bool:
    try:
        a, b = os.stat(path), os.fstat(fd)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)
