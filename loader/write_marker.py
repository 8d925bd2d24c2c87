"""A mark that a write of shards into a folder began and did not finish.

``write_shards`` (``streamaug shards``) writes each shard atomically, but a dataset is many
shards: a write stopped part-way (Ctrl-C, a kill, a full disk, an image that does not decode)
leaves the shards written so far and, over an earlier write, the earlier ``index.json`` and the
earlier shards the new write had not reached. Every file there is whole, so nothing else shows
that together they are part of one source, or a mix of two.

So each write puts a hidden file, ``.{prefix}.{pid}.writing``, in the folder before its first
shard and removes it once ``index.json`` is in place; a write that raises (``KeyboardInterrupt``
included) after it put a shard in place marks it stopped. The loader and ``streamaug index`` refuse local shards named
``{prefix}-NNNNNN.tar`` beside a mark that is stopped, or whose writer no longer runs on this
machine (a kill), naming it and the way out: run the write again (which removes it), or remove
the mark to read the shards as they are. A write still running is not refused: several ranks
may write the same shards at once and read them as each finishes (``atomic_file``), and a
writer on another machine cannot be seen, so only its stopped mark counts.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import time

from .atomic_file import process_running, replaced_atomically
from .shard_urls import is_local, local_path

SHARD_NAME = re.compile(r"(?P<prefix>[\w-]+)-\d{6}\.tar")
MARK_NAME = re.compile(r"\.(?P<prefix>[\w-]+)\.(?P<pid>[0-9]+)\.writing")


class UnfinishedWrite(ValueError):
    """Shards that a write which did not finish left (see the module's docstring)."""


def begin_write(out_dir: str, prefix: str, samples: int) -> str:
    """Mark ``out_dir`` as being written with ``prefix``; returns the mark for ``end_write``."""
    path = os.path.join(out_dir, f".{prefix}.{os.getpid()}.writing")
    _put(path, {"prefix": prefix, "samples": samples, "pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S"), "stopped": False})
    return path


class WriteMark:
    """The mark of one write; ``shard_placed`` (a ``ShardWriter`` ``post=`` hook) counts the shards
    it has put in place."""

    def __init__(self, path: str):
        self.path, self.placed = path, 0

    def shard_placed(self, fname: str) -> None:
        self.placed += 1


@contextlib.contextmanager
def write_marked(out_dir: str, prefix: str, samples: int):
    """The write of ``prefix`` shards in the body: marked before; on an error, marked stopped if it
    put a shard in place (else the folder is as it was, and the mark goes); removed after."""
    mark = WriteMark(begin_write(out_dir, prefix, samples))
    try:
        yield mark
    except BaseException:
        if mark.placed:
            stop_write(mark.path)
        else:
            _remove(mark.path)
        raise
    end_write(mark.path, out_dir, prefix)


def stop_write(path: str) -> None:
    """The write that made ``path`` raised: its shards are part of its source."""
    with contextlib.suppress(FileNotFoundError):
        body = _read(path)
        if body is not None:
            _put(path, {**body, "stopped": True})


def end_write(path: str, out_dir: str, prefix: str) -> None:
    """The write finished: remove its mark, and the marks of earlier writes it replaced."""
    for mark, _ in stopped_writes(out_dir, prefix):
        _remove(mark)
    _remove(path)


def stopped_writes(folder: str, prefix: str) -> list[tuple[str, str]]:
    """``(mark, what it records)`` of the writes of ``prefix`` shards into ``folder`` that did not finish."""
    out = []
    try:
        entries = [e.name for e in os.scandir(folder or ".")]
    except OSError:
        return []
    for name in sorted(entries):
        m = MARK_NAME.fullmatch(name)
        if not m or m["prefix"] != prefix:
            continue
        path = os.path.join(folder, name)
        try:
            body = _read(path)
        except FileNotFoundError:             # (its write finished since the listing)
            continue
        if body is None:
            out.append((path, "its record unreadable"))
        elif body.get("stopped") or (body.get("host") == socket.gethostname() and not process_running(int(m["pid"]))):
            how = "stopped by an error or Ctrl-C" if body.get("stopped") else "its process is gone"
            out.append((path, f"{body.get('samples')} samples, began {body.get('started')} by pid {m['pid']}, {how}"))
    return out


def refuse_unfinished_write(urls: list[str]) -> None:
    """Refuse local shards a write left unfinished (one folder listing per folder and prefix)."""
    groups: dict[tuple[str, str], list[str]] = {}
    for url in urls:
        if is_local(url):
            path = local_path(url)
            m = SHARD_NAME.fullmatch(os.path.basename(path))
            if m:
                groups.setdefault((os.path.dirname(path), m["prefix"]), []).append(url)
    for (folder, prefix), shards in groups.items():
        found = stopped_writes(folder, prefix)
        if found:
            mark, recorded = found[0]
            raise UnfinishedWrite(
                f"{folder or '.'!r}: a write of {prefix}-*.tar shards into this folder did not finish ({recorded}), "
                f"so the {len(shards)} shard(s) read here ({shards[0]!r}{', ...' if len(shards) > 1 else ''}) may be "
                f"part of its source, or a mix with an earlier write's, and index.json, if any, an earlier "
                f"write's. Run the write again (streamaug shards / write_shards: it replaces them), or remove "
                f"{mark!r} to read them as they are")


def _put(path: str, body: dict) -> None:
    with replaced_atomically(path) as f:
        f.write(json.dumps(body))


def _read(path: str) -> dict | None:
    """The mark's record, or None if it cannot be read as one; FileNotFoundError if it is gone."""
    try:
        with open(path, "rb") as f:
            body = json.loads(f.read(4096))
        return body if isinstance(body, dict) else None
    except FileNotFoundError:
        raise
    except (OSError, ValueError):
        return None


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
