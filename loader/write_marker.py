"""A mark that a write of shards into a folder began and did not finish.

``write_shards`` (``streamaug shards``) writes each shard atomically, but a dataset is many
shards: a write stopped part-way (Ctrl-C, a kill, a full disk, an image that does not decode)
leaves the shards written so far and, over an earlier write, the earlier ``index.json`` and the
earlier shards the new write had not reached. Every file there is whole, so nothing else shows
that together they are part of one source, or a mix of two.

So, just before a write puts its first shard in place, it makes a mark, a file of its own in the
hidden folder ``.{prefix}.writing`` beside the shards, and holds a lock on it (``flock``) until
it ends. A write that raises (``KeyboardInterrupt`` included) marks it stopped; a finished write
removes it, and the marks of the earlier writes it replaced. The loader and ``streamaug index``
refuse local shards named ``{prefix}-NNNNNN.tar`` beside a mark that is stopped or no longer
locked (its process is gone: the kernel drops the lock, whatever the pid or host), naming it and
the ways out. A mark still locked is a write running now, not refused: several ranks may write
the same shards at once and read them as each finishes (``atomic_file``). Where the file system
has no locks, a mark counts as gone when its pid no longer runs on its host (another host's
cannot be seen). Reading costs one ``stat`` per folder and prefix while no write is marked.
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

    def before_place(self, fname: str) -> None:
        """Called before each shard is renamed into place: the first call makes the mark."""
        if self.path is None:
            self._make()

    def _make(self) -> None:
        name = f"{os.getpid()}.{secrets.token_hex(4)}"
        for _ in range(5):                        # (a finishing write may remove the empty folder meanwhile)
            os.makedirs(self.folder, exist_ok=True)
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
            os.write(fd, json.dumps(self._body).encode())
            try:
                os.rename(hidden, os.path.join(self.folder, name))
            except FileNotFoundError:
                os.close(fd)
                continue
            self.path, self._fd = os.path.join(self.folder, name), fd
            return
        raise OSError(f"could not make a write mark in {self.folder!r}")

    def stop(self) -> None:
        """The write raised after its first shard was put in place: its shards are part of its source."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):        # (the same length: one byte changes in place)
            os.pwrite(self._fd, json.dumps({**self._body, "stopped": 1}).encode(), 0)
        os.close(self._fd)
        self._fd = None

    def end(self) -> None:
        """The write finished: remove its mark, and the marks of earlier writes it replaced."""
        if self.path is None:
            return
        _remove(self.path)
        os.close(self._fd)
        self._fd = None
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
    try:
        return sorted(n for n in os.listdir(folder) if not n.startswith("."))   # (".*": one being made)
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
        began = (f"{body.get('samples')} samples, began {body.get('started')} by pid {body.get('pid')} on "
                 f"{body.get('host')}") if body else "its record unreadable"
        if body.get("stopped"):
            return f"{began}, stopped by an error or Ctrl-C"
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            free = True
        except BlockingIOError:
            return None                            # locked: its write runs now
        except OSError:                            # (no locks here)
            free = False
        if free and body.get("locked", True):
            return f"{began}, its process is gone"
        if body.get("host") == socket.gethostname() and not process_running(int(body.get("pid", 0))):
            return f"{began}, its process is gone"
        return None
    finally:
        os.close(fd)


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)
