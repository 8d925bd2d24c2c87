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
    """A write mark's line for a shard about to be placed: ``{name} {digest}`` (``-``: none)."""
    return f"{os.path.basename(fname)} {digest or '-'}\n".encode()


def placed_shards(lines: list[str]) -> dict[str, str | None]:
    """Name → digest (None: ``-``) of a write mark's lines after its first; ValueError naming a
    line that is neither a shard line nor empty."""
    placed = {}
    for n, line in enumerate(lines, 2):
        m = PLACED_LINE.fullmatch(line)
        if m is None and line:
            raise ValueError(f"its mark's line {n} is no shard and digest: {line[:80]!r}")
        if m is not None:
            placed[m["name"]] = None if m["digest"] == "-" else m["digest"]
    return placed


def placed_unlike_index(out_dir: str, placed: dict[str, str | None]) -> str | None:
    """Why the shards a write placed into ``out_dir`` (file name → the digest it recorded, None
    where it recorded none) may differ from those the folder's ``index.json`` lists; None when
    each has the digest the index gives it (or the write placed none)."""
    if not placed:
        return None
    path = os.path.join(out_dir, INDEX_NAME)
    try:
        index = ShardIndex.load(path)
    except MissingIndex:
        return f"there is no {path!r} to compare the shards it wrote with"
    except Exception as e:                       # (unreadable, refused: nothing to compare with)
        return f"{path!r}, to compare the shards it wrote with, cannot be read ({type(e).__name__}: {str(e)[:200]})"
    listed = {os.path.realpath(local_path(s.url)): s.digest for s in index.shards if is_local(s.url)}
    for name, digest in placed.items():
        shard = os.path.realpath(os.path.join(out_dir, name))
        if digest is None:
            return f"its mark records no digest for {name}"
        if shard not in listed:
            return f"it wrote {name}, which {path!r} does not list"
        if listed[shard] is None:
            return f"{path!r} records no shard digests (as `streamaug index` writes it): nothing to compare with"
        if listed[shard] != digest:
            return f"the {name} it wrote differs from the one {path!r} lists"
    return None
