"""Digests of shards as they are written, and whether the shards a write placed are the ones an
``index.json`` lists.

``write_shards`` hashes each shard's bytes as it writes them (blake2b, 16 bytes: no second
read), records the digest in its write mark before it renames the shard into place
(:mod:`.write_marker`), and lists it in ``index.json`` (``"digest"``, per shard). A shard's bytes
depend on the write's inputs only (members carry :data:`SHARD_MTIME`, not the clock), so two
writes of the same inputs with the same streamaug and image libraries place identical shards.

A write that did not finish changed only the shards it renamed into place, and its mark holds
the digest of each before the rename. When each of them has the digest that the folder's
``index.json`` gives that shard, the write placed nothing that the index does not describe: a
rank killed while another rank finished writing the same shards, say.

>>> import io, tarfile
>>> f = DigestingFile(io.BytesIO())
>>> with tarfile.open(fileobj=f, mode="w|") as tar:
...     info = tarfile.TarInfo("a.cls"); info.size, info.mtime = 1, SHARD_MTIME
...     tar.addfile(info, io.BytesIO(b"3"))
>>> len(f.hexdigest())
32
"""
from __future__ import annotations

import hashlib
import os
import re

from .shard_index import INDEX_NAME, MissingIndex, ShardIndex
from .shard_urls import is_local, local_path

SHARD_MTIME = 946684800                 # every shard member's mtime: 2000-01-01 00:00:00 UTC, not the clock
DIGEST_SIZE = 16                        # bytes of blake2b; 32 hex digits
DIGEST_TEXT = re.compile(r"[0-9a-f]{32}")
_LISTED: dict[str, tuple[tuple, dict]] = {}     # index.json -> (its stat, listed_digests of it)
PLACED_LINE = re.compile(r"(?P<name>[\w-]+-\d{6}\.tar) (?P<digest>[0-9a-f]{32}|-)")   # a write mark's line per shard


class DigestingFile:
    """A file open for writing that hashes the bytes written through it."""

    def __init__(self, file):
        self.file = file
        self._hash = hashlib.blake2b(digest_size=DIGEST_SIZE)

    def write(self, data) -> int:
        self._hash.update(data)
        return self.file.write(data)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()

    def __getattr__(self, name):         # (flush, tell, ...: as the file's)
        return getattr(self.file, name)


def placed_line(fname: str, digest: str | None) -> bytes:
    """A line of a write mark's list of shards, for a shard about to be placed: ``{name} {digest}``
    (``-``: none)."""
    return f"{os.path.basename(fname)} {digest or '-'}\n".encode()


def placed_shards(lines: list[str]) -> dict[str, str | None]:
    """Name → digest (None: ``-``) of a write mark's list of shards, in the order placed;
    ValueError naming a line that is neither a shard line nor empty."""
    placed = {}
    for n, line in enumerate(lines, 1):
        m = PLACED_LINE.fullmatch(line)
        if m is None and line:
            raise ValueError(f"line {n} of its list of shards is no shard and digest: {line[:80]!r}")
        if m is not None:
            placed[m["name"]] = None if m["digest"] == "-" else m["digest"]
    return placed


def file_digest(path: str) -> str:
    """The digest of the file at ``path``, as ``DigestingFile`` takes it while writing."""
    h = hashlib.blake2b(digest_size=DIGEST_SIZE)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def listed_digests(out_dir: str) -> dict[str, str | None] | str:
    """File name → digest (None: not recorded) of the shards in ``out_dir`` that its
    ``index.json`` lists, or why there is nothing to compare with. Kept while the file is
    unchanged: a passed mark stays until the next write, and every loader looks at it."""
    path = os.path.normpath(os.path.abspath(os.path.join(out_dir, INDEX_NAME)))
    try:
        st = os.stat(path)
    except OSError:
        st = None
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) if st else None
    if key is not None and _LISTED.get(path, (None,))[0] == key:
        return _LISTED[path][1]
    try:
        index = ShardIndex.load(path)
    except MissingIndex:
        return f"there is no {path!r} to compare the shards it wrote with"
    except Exception as e:                       # (unreadable, refused: nothing to compare with)
        return f"{path!r}, to compare the shards it wrote with, cannot be read ({type(e).__name__}: {str(e)[:200]})"
    here = os.path.dirname(path)
    listed = {}
    for s in index.shards:
        if is_local(s.url):
            shard = os.path.normpath(os.path.abspath(local_path(s.url)))
            if os.path.dirname(shard) == here:
                listed[os.path.basename(shard)] = s.digest
    if key is not None:
        if len(_LISTED) >= 16:
            _LISTED.clear()
        _LISTED[path] = (key, listed)
    return listed


def placed_unlike_index(out_dir: str, placed: dict[str, str | None], listed: dict[str, str | None] | str) -> str | None:
    """Why the shards a write placed into ``out_dir`` (file name → the digest it recorded before
    the rename, in order; None where it recorded none) may differ from those ``listed`` (what
    ``listed_digests`` gives); None when each has the digest the index gives it, or the write
    placed none. The last shard named may not have been renamed (the write was killed between
    the line and the rename): it passes if the file there has the index's digest."""
    if not placed:
        return None
    if isinstance(listed, str):
        return listed
    index = os.path.join(out_dir, INDEX_NAME)
    last = next(reversed(placed))
    for name, digest in placed.items():
        if digest is None:
            return f"its mark records no digest for {name}"
        if name not in listed:
            return f"it wrote {name}, which {index!r} does not list"
        if listed[name] is None:
            return f"{index!r} records no shard digests (as `streamaug index` writes it): nothing to compare with"
        if listed[name] != digest and not (name == last and _has_digest(os.path.join(out_dir, name), listed[name])):
            return f"the {name} it wrote differs from the one {index!r} lists"
    return None


def _has_digest(path: str, digest: str) -> bool:
    try:
        return file_digest(path) == digest
    except OSError:
        return False
