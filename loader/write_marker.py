"""A mark that a write of shards into a folder began and did not finish.

``write_shards`` (``streamaug shards``) writes each shard atomically, but a dataset is many
shards: a write stopped part-way (Ctrl-C, a kill, a full disk, an image that does not decode)
leaves the shards written so far and, over an earlier write, the earlier ``index.json`` and the
earlier shards the new write had not reached. Every file there is whole, so nothing else shows
that together they are part of one source, or a mix of two.

So, just before a write puts its first shard in place, it makes a mark, a file of its own in the
hidden folder ``.{prefix}.writing`` beside the shards (one JSON object: who wrote it, and
``stopped``; mode 0644 whatever the umask), and holds a lock on it (``flock``) until it ends.
Beside the mark, its list of shards (``{mark}.shards``) gets a line ``{name} {digest}`` per
shard, on disk before the shard is renamed into place (:mod:`.shard_digest`). A write that
raises (``KeyboardInterrupt`` included) marks it stopped, or removes it if no shard was put in
place; a finished write removes it, and the marks of writes that had ended before its first
shard went in place (it replaced their shards) or that placed only shards its index.json lists
with the same digests.

What readers refuse, and when they read past a mark: :mod:`.unfinished_write`. A child forked
during a write closes the lock it inherits.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import socket
import time

from .shard_digest import placed_line
from .unfinished_write import (DIGESTS, SHARD_LIST, UnfinishedWrite, mark_names, marks_folder, refuse_unfinished_write,
                               remove_file, remove_mark, shard_prefix, unfinished, unlike_index)

__all__ = ["UnfinishedWrite", "WriteMark", "refuse_unfinished_write", "shard_prefix", "write_marked"]

_HELD: set[int] = set()                                # this process's marks' descriptors (see _close_in_child)


def _close_in_child() -> None:
    """A child forked during a write must not hold the write's lock after the writer is gone."""
    for fd in list(_HELD):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_child)


class WriteMark:
    """One write's mark (see the module's docstring). ``before_place`` is the shard writer's hook."""

    def __init__(self, out_dir: str, prefix: str, samples: int):
        self.out_dir = os.path.abspath(out_dir)
        self.folder, self.samples = marks_folder(self.out_dir, prefix), samples
        self.path: str | None = None
        self._fd: int | None = None               # the mark's, locked while the write runs
        self._list_fd: int | None = None          # its list of shards', appended to
        self._header = b""
        self._ended_before: set[str] = set()     # marks of writes that had ended before its first shard was placed
        self.placed = 0

    def before_place(self, fname: str, digest: str | None = None) -> None:
        """Called before each shard is renamed into place, with the digest of its bytes: the
        first call makes the mark; each records the shard's name and digest in its list."""
        if self.path is None:
            self._ended_before = {n for n in mark_names(self.folder)
                                  if unfinished(os.path.join(self.folder, n)) is not None}
            self._make()
        os.write(self._list_fd, placed_line(fname, digest))
        os.fsync(self._list_fd)                  # (on disk before the shard it names is renamed)

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
            hidden, final = os.path.join(self.folder, "." + name), os.path.join(self.folder, name)
            try:
                fd = os.open(hidden, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileNotFoundError:
                continue
            list_fd = None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)      # locked before any reader can see it
                locked = True
            except OSError:                                    # (a file system without locks)
                locked = False
            self._header = json.dumps({"samples": self.samples, "pid": os.getpid(), "host": socket.gethostname(),
                                       "started": time.strftime("%Y-%m-%d %H:%M:%S"), "locked": locked,
                                       "stopped": 0, "digests": DIGESTS}).encode()
            try:
                os.fchmod(fd, 0o644)              # (readable by the dataset's other users, whatever the umask)
                os.write(fd, self._header)
                os.fsync(fd)
                list_fd = os.open(final + SHARD_LIST, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
                os.fchmod(list_fd, 0o644)
                os.rename(hidden, final)          # (its list exists before any reader sees it)
            except FileNotFoundError:
                _close(fd, list_fd)
                remove_file(hidden)
                continue
            except BaseException:
                _close(fd, list_fd)
                remove_file(hidden)
                remove_file(final + SHARD_LIST)
                raise
            self.path, self._fd, self._list_fd = final, fd, list_fd
            _HELD.update((fd, list_fd))
            return
        raise OSError(f"could not make a write mark in {self.folder!r}")

    def stop(self) -> None:
        """The write raised: if it had put a shard in place, its shards are part of its source;
        if not (the first rename failed), the folder is as it was, and the mark goes."""
        if self._fd is None:
            return
        if not self.placed:
            remove_mark(self.path)
            with contextlib.suppress(OSError):    # (not empty: another write is running)
                os.rmdir(self.folder)
        else:
            with contextlib.suppress(OSError):    # (the same length: one byte changes in place)
                os.pwrite(self._fd, self._header.replace(b'"stopped": 0', b'"stopped": 1'), 0)
                os.fsync(self._fd)
        self._release()

    def _release(self) -> None:
        _HELD.difference_update((self._fd, self._list_fd))
        _close(self._fd, self._list_fd)
        self._fd = self._list_fd = None

    def end(self) -> None:
        """The write finished, its index.json in place: remove its mark, and the marks of writes
        whose shards it replaced or which placed only shards identical to those it lists."""
        if self.path is None:
            return
        remove_mark(self.path)
        self._release()
        for name in mark_names(self.folder):
            other = os.path.join(self.folder, name)
            found = unfinished(other)
            if found is not None and (name in self._ended_before or unlike_index(self.out_dir, found[1]) is None):
                remove_mark(other)
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


def _close(*fds: int | None) -> None:
    for fd in fds:
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

