"""Files that appear whole or not at all: written under a hidden name of their own, then
renamed onto the real name (``os.replace``, atomic on one file system).

Several processes may write the same shards and index at once: every rank of a
``torchrun`` job that runs ``write_shards(..., "shards")`` before it reads, say. With a
shared temporary name (``index.json.tmp``) one rank renamed another's file away and
failed; with shards opened in place a rank could read a shard that another was
truncating and rewriting. Each writer's partial file is its own here, so every rename
puts a complete file in place, and a reader sees an old complete file or a new one.

>>> import os, tempfile
>>> path = os.path.join(tempfile.mkdtemp(), "index.json")
>>> with replaced_atomically(path) as f:
...     _ = f.write("{}")
>>> os.listdir(os.path.dirname(path)), open(path).read()
(['index.json'], '{}')
"""
from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
from collections.abc import Callable, Iterator
from typing import IO


def partial_path(path: str) -> str:
    """A hidden sibling of ``path`` (of the file it links to, if a symlink) that no other
    writer uses: ``.NAME.PID.RANDOM.partial``.

    Hidden, so folder listings that pass over hidden entries (shard URL expansion, image
    folders) never take a partial file for a real one."""
    folder, name = os.path.split(os.path.realpath(path))
    return os.path.join(folder, f".{name}.{os.getpid()}.{secrets.token_hex(4)}.partial")


PARTIAL_NAME = re.compile(r"\.(?P<name>.+)\.(?P<pid>[0-9]+)\.[0-9a-f]{8}\.partial")


def stopped_partials(folder: str, of: Callable[[str], bool]) -> list[tuple[str, int]]:
    """``(name, bytes)`` of the partial files in ``folder``, for real names ``of`` accepts,
    whose writer is not running on this machine: left by a writer that was killed (a
    ``SIGKILL``, a lost node), since any other exit removes them. A writer on another
    machine sharing the folder cannot be seen, so its partial files count as stopped."""
    out = []
    for entry in os.scandir(folder):
        m = PARTIAL_NAME.fullmatch(entry.name)
        if m and of(m["name"]) and not process_running(int(m["pid"])):
            with contextlib.suppress(OSError):            # (renamed or removed meanwhile)
                out.append((entry.name, entry.stat().st_size))
    return sorted(out)


def process_running(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (another user's counts)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)                            # (signal 0: only whether it exists)
    except PermissionError:                        # another user's process
        return True
    except (ProcessLookupError, OverflowError):
        return False
    return True


def put_in_place(partial: str, path: str) -> None:
    """Rename ``partial`` onto ``path``, or onto the file it links to (a symlinked shard stays a
    link, and its target gets the new content), keeping the permission bits of a file it
    replaces. If that fails, the partial file is removed."""
    target = os.path.realpath(path)
    try:
        if os.path.exists(target):
            os.chmod(partial, stat.S_IMODE(os.stat(target).st_mode))
        os.replace(partial, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise


def open_partial(path: str, mode: str = "wb") -> tuple[IO, str]:
    """``(file, partial path)``: a new partial file for ``path``, created with the mode a plain
    ``open`` would give (the umask applies)."""
    partial = partial_path(path)
    return open(partial, mode.replace("w", "x")), partial


@contextlib.contextmanager
def replaced_atomically(path: str, mode: str = "w") -> Iterator[IO]:
    """Write ``path`` through a partial file that replaces it on success; on an error the
    partial file is removed and ``path`` is left as it was."""
    f, partial = open_partial(path, mode)
    try:
        with f:
            yield f
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise
    put_in_place(partial, path)
