"""Refusing the shards left by a write of shards that did not finish (its mark: :mod:`.write_marker`).

The loader and ``streamaug index`` refuse local shards named ``{prefix}-NNNNNN.tar`` beside a
mark that is stopped, or that this machine made and no longer holds locked (the kernel drops
the lock when the process dies, whatever its pid; where the file system has no locks, its pid no
longer runs), or that cannot be read, naming it and the ways out, unless each shard its list
names has the digest the folder's ``index.json`` lists for it and every shard read is one the
index lists: then the write placed only shards identical to those the index describes (a rank
killed at torchrun's teardown after another rank finished writing the same shards). A mark
without digests, a list over ``MAX_MARK_BYTES`` or unreadable, a shard the index does not list
or lists with another digest or none (``streamaug index`` records none), or no readable index:
refused. ``streamaug index``, writing the index.json beside a mark it passed, removes the mark.

A mark still locked is a write running now, not refused: several ranks may write the same shards
at once and read them as each finishes (``atomic_file``). Another machine's mark is refused only
when stopped: locks may hold within one machine only (node-local NFS and Lustre mounts), so its
free lock does not show its write gone. Reading costs one ``stat`` per folder and prefix while
no write is marked, and a folder's index.json is parsed once while it is unchanged.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import socket

from .atomic_file import process_running
from .shard_digest import DIGEST_SIZE, listed_digests, placed_shards, placed_unlike_index
from .shard_index import INDEX_NAME
from .shard_urls import absolute_path, is_local

SHARD_NAME = re.compile(r"(?P<prefix>[\w-]+)-\d{6}\.tar")
MARK_NAME = re.compile(r"\d+\.[0-9a-f]{8}")           # a mark's file name: pid.token
DIGESTS = f"blake2b-{DIGEST_SIZE}"                     # what a mark's digests are (marks without it name none)
SHARD_LIST = ".shards"                                 # a mark's list of the shards its write placed: pid.token.shards
MAX_MARK_BYTES = 256 << 20                             # of a list: over 2 million shards' lines


class UnfinishedWrite(ValueError):
    """Shards that a write which did not finish left (see the module's docstring)."""


def shard_prefix(name: str) -> str | None:
    """``train`` for a shard file name ``train-000012.tar``; None for any other name."""
    m = SHARD_NAME.fullmatch(name)
    return m["prefix"] if m else None


def marks_folder(out_dir: str, prefix: str) -> str:
    return os.path.join(out_dir, f".{prefix}.writing")


def refuse_unfinished_write(urls: list[str]) -> list[str]:
    """Refuse local shards beside the mark of a write that did not finish, unless it placed only
    shards that the folder's index.json lists with the same digest and every shard read here is
    one the index lists; those marks are returned (one ``stat`` per folder, as the URL names it,
    and prefix, while no write is marked)."""
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
        for name in mark_names(folder):
            mark = os.path.join(folder, name)
            found = unfinished(mark)
            if found is None:
                continue
            why = unlike_index(out_dir, found[1])
            if why is None:      # (its shards are the index's; a shard the index does not list is another write's)
                listed = listed_digests(out_dir)         # (no index: the write placed no shard, changed nothing)
                unlisted = [] if isinstance(listed, str) else [
                    u for u in shards if os.path.basename(absolute_path(u)) not in listed]
                if not unlisted:
                    passed.append(mark)
                    continue
                why = f"{unlisted[0]!r}, read here, is not in {os.path.join(out_dir, INDEX_NAME)!r}"
            raise UnfinishedWrite(
                f"{out_dir!r}: a write of {prefix}-*.tar shards into this folder did not finish "
                f"({found[0]}), so the {len(shards)} shard(s) read here ({shards[0]!r}"
                f"{', ...' if len(shards) > 1 else ''}) may be part of its source, or a mix with an earlier "
                f"write's, and index.json, if any, an earlier write's; {why}. Run the write again "
                f"(streamaug shards / write_shards: it replaces them), or remove {mark!r} and its list "
                f"{mark + SHARD_LIST!r} to read them as they are")
    return passed


def remove_passed_marks(marks: list[str], index_path: str) -> None:
    """Remove the ``marks`` that ``refuse_unfinished_write`` passed beside ``index_path`` once an
    index built from the shards as they are (with no digests, beside which they would be
    refused) is in place there."""
    for mark in marks:
        folder = os.path.dirname(mark)
        if os.path.realpath(os.path.join(os.path.dirname(folder), INDEX_NAME)) == os.path.realpath(index_path):
            with contextlib.suppress(OSError):      # (another user's, in a sticky folder: it stays, refused)
                remove_mark(mark)
                os.rmdir(folder)


def mark_names(folder: str) -> list[str]:
    """The marks in ``folder`` (pid.token; not ``.``-hidden ones being made, their lists of
    shards, nor anything else)."""
    try:
        return sorted(n for n in os.listdir(folder) if MARK_NAME.fullmatch(n))
    except OSError:
        return []


def unfinished(mark: str) -> tuple[str, dict | str] | None:
    """Why the write that made ``mark`` did not finish, and the shards it placed (name → digest,
    from its list) or why they are not known; None while it runs, or if the mark is gone or is a
    folder. A mark that cannot be read is one whose write is not known to have finished."""
    try:
        fd = os.open(mark, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"its mark cannot be opened: {e.strerror}", "nothing to compare with"
    try:
        try:
            first = os.pread(fd, 4096, 0)
        except IsADirectoryError:                  # (a folder of that name: no mark)
            return None
        except OSError as e:
            return f"its mark cannot be read: {e.strerror}", "nothing to compare with"
        try:
            body = json.loads(first)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            if not _same_file(mark, fd):           # (gone meanwhile)
                return None
            return f"its mark's record is unreadable ({len(first)} bytes, {first[:40]!r})", "nothing to compare with"
        began = (f"{body.get('samples')} samples, began {body.get('started')} by pid {body.get('pid')} on "
                 f"{body.get('host')}")
        if body.get("stopped"):
            why = f"{began}, stopped by an error or Ctrl-C"
        elif body.get("host") != socket.gethostname():
            return None        # (locks may hold only within a machine: node-local NFS and Lustre mounts)
        else:
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
            elif process_running(int(body.get("pid", 0))):     # (no locks: its pid, on this host)
                return None
            why = f"{began}, its process is gone"
        placed = _placed(mark, body)
        if isinstance(placed, str) and not _same_file(mark, fd):   # (a finishing write removed it meanwhile)
            return None
        return why, placed
    finally:
        os.close(fd)


def _placed(mark: str, body: dict) -> dict | str:
    """The shards the write of ``mark`` placed (its list, read whole up to MAX_MARK_BYTES), or why
    they are not known."""
    if body.get("digests") != DIGESTS:
        return "its mark records no shard digests"
    path = mark + SHARD_LIST
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_MARK_BYTES:
                return f"its list of shards is {size:,} bytes, over the {MAX_MARK_BYTES:,} read (MAX_MARK_BYTES)"
            text = f.read(MAX_MARK_BYTES)
    except OSError as e:
        return f"its list of shards {path!r} cannot be read: {e.strerror}"
    try:
        return placed_shards(text.decode(errors="replace").split("\n"))
    except ValueError as e:
        return str(e)


def unlike_index(out_dir: str, placed: dict | str) -> str | None:
    """Why the shards a mark names may differ from those ``out_dir``'s index.json lists (None: they do not)."""
    return placed if isinstance(placed, str) else placed_unlike_index(out_dir, placed, listed_digests(out_dir))


def _same_file(path: str, fd: int) -> bool:
    try:
        a, b = os.stat(path), os.fstat(fd)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def remove_mark(path: str) -> None:
    """A mark and its list of shards."""
    remove_file(path)
    remove_file(path + SHARD_LIST)


def remove_file(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)
