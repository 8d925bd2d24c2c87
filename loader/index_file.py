"""Reading an index file and validating its document, field by field, into a
:class:`~.shard_index.ShardIndex` (``ShardIndex.load`` and ``ShardIndex.from_json`` call these).

Limits are checked before anything is allocated: a file over ``max_bytes`` and a document
declaring over ``max_classes`` classes are refused, naming the limit and how to raise it."""
from __future__ import annotations

import json
import os
import shlex
import urllib.error
import urllib.request

from .shard_digest import DIGEST_TEXT
from .shard_index import (FORMAT, MAX_INDEX_BYTES, MAX_NUM_CLASSES, VERSION, MissingIndex, ShardIndex,
                          ShardIndexError, ShardInfo)
from .shard_urls import UnsafeIndexEntry, local_path, resolve_index_entry, url_scheme


class IndexTooLarge(Exception):
    def __init__(self, path: str, size: int, limit: int):
        super().__init__(f"index {path!r} is {size} bytes, over the limit of {limit} "
                         f"(raise it with ShardIndex.load(..., max_bytes=N))")


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "..."


def load_index(path: str, *, max_bytes: int = MAX_INDEX_BYTES, max_classes: int = MAX_NUM_CLASSES,
               timeout: float = 60, cls: type = ShardIndex) -> ShardIndex:
    """Read and validate an index from a local path or an http(s) URL."""
    path = os.fspath(path)
    scheme = url_scheme(path)
    if scheme not in ("", "file", "http", "https"):
        raise ShardIndexError(f"index {path!r}: an index is read from a local path or an http(s) URL, "
                              f"not a {scheme!r} URL")
    try:
        if scheme in ("http", "https"):
            with urllib.request.urlopen(path, timeout=timeout) as r:
                data = r.read(max_bytes + 1)
        else:
            path = local_path(path) if scheme == "file" else os.path.expanduser(path)
            size = os.path.getsize(path)
            if size > max_bytes:
                raise IndexTooLarge(path, size, max_bytes)
            with open(path, "rb") as f:
                data = f.read(max_bytes + 1)
    except IndexTooLarge as e:
        raise ShardIndexError(str(e)) from None
    except (FileNotFoundError, NotADirectoryError):
        raise MissingIndex(f"index {path!r} does not exist; build it from the shards with "
                           f"`streamaug index SHARDS --out {shlex.quote(path)}` (an index lists the shards under "
                           f"its own folder), or pass index= the index.json that lists them (index=False: none)"
                           ) from None
    except urllib.error.HTTPError as e:
        err = MissingIndex if e.code == 404 else ShardIndexError
        raise err(f"index {path!r} cannot be fetched: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ShardIndexError(f"index {path!r} cannot be read: {type(e).__name__}: {reason}") from None
    if len(data) > max_bytes:
        raise ShardIndexError(str(IndexTooLarge(path, len(data), max_bytes)))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ShardIndexError(f"index {path!r} is not UTF-8 text: byte {e.start} is "
                              f"{data[e.start:e.start + 1]!r}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise ShardIndexError(f"index {path!r} is not valid JSON: {e}; if it was cut short or edited, write it "
                              f"again from the shards: streamaug index SHARDS --out {shlex.quote(path)}") from None
    except RecursionError:
        raise ShardIndexError(f"index {path!r} is nested too deeply to be an index") from None
    return index_from_json(doc, source=path, max_classes=max_classes, cls=cls)


def index_from_json(doc: dict, source: str = "<memory>", *, max_classes: int = MAX_NUM_CLASSES,
                    cls: type = ShardIndex) -> ShardIndex:
    """Validate a document. Read from a file or URL (``source``), its shard entries must be
    relative paths under the file's folder or http(s) URLs; a document built in the caller's
    own code (``source="<memory>"``) may name any URL, as ``urls=`` may."""
    def bad(what, value):
        return ShardIndexError(f"index {source!r}: {what} (value: {_shown(value)})")

    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise bad("not a streamaug index: 'format' must be " + repr(FORMAT),
                  doc.get("format") if isinstance(doc, dict) else type(doc).__name__)
    if doc.get("version") != VERSION:
        raise bad(f"unsupported version, expected {VERSION}", doc.get("version"))
    nc = doc.get("num_classes")
    if not isinstance(nc, int) or isinstance(nc, bool) or nc < 1:
        raise bad("'num_classes' must be a positive int", nc)
    if nc > max_classes:
        raise bad(f"'num_classes' is over the limit of {max_classes} (raise it with "
                  f"ShardIndex.load(..., max_classes=N))", nc)
    names = doc.get("class_names")
    if names is None:
        names = [str(i) for i in range(nc)]
    if not isinstance(names, list) or not all(isinstance(n, (str, int)) for n in names):
        raise bad("'class_names' must be a list of strings", names)
    if len(names) != nc:
        raise bad(f"'class_names' must have num_classes={nc} entries", names)
    if len({str(n) for n in names}) != nc:
        raise bad("'class_names' must be distinct", names)
    shape = doc.get("image_shape")
    if shape is not None and (not isinstance(shape, list) or len(shape) != 3
                              or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                         for v in shape)):
        raise bad("'image_shape' must be null or [H, W, C] positive ints", shape)
    ext, label_key = doc.get("image_ext"), doc.get("label_key")
    if ext is not None and not isinstance(ext, str):
        raise bad("'image_ext' must be null or a string", ext)
    if label_key is not None and not isinstance(label_key, str):
        raise bad("'label_key' must be null or a string such as 'cls' or 'json:label'", label_key)
    label_names = doc.get("label_names", False)
    if not isinstance(label_names, bool):
        raise bad("'label_names' must be true or false", label_names)
    raw = doc.get("shards")
    if not isinstance(raw, list) or not raw:
        raise bad("'shards' must be a non-empty list", raw)
    from_file = not source.startswith("<")
    shards, seen = [], set()
    for i, s in enumerate(raw):
        if not isinstance(s, dict):
            raise bad(f"shards[{i}] must be an object", s)
        url, count, cc = s.get("url"), s.get("count"), s.get("class_counts")
        if not isinstance(url, str) or not url:
            raise bad(f"shards[{i}].url must be a non-empty string", url)
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise bad(f"shards[{i}].count must be an int >= 0 (shard {url!r})", count)
        if (not isinstance(cc, list) or len(cc) != nc
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in cc)):
            raise bad(f"shards[{i}].class_counts must be {nc} ints >= 0 (shard {url!r})", cc)
        if sum(cc) != count:
            raise bad(f"shards[{i}].class_counts sum to {sum(cc)} but count is {count} (shard {url!r})", cc)
        digest = s.get("digest")
        if digest is not None and (not isinstance(digest, str) or not DIGEST_TEXT.fullmatch(digest)):
            raise bad(f"shards[{i}].digest must be 32 lowercase hex digits, or absent (shard {url!r})", digest)
        if from_file:
            try:
                url = resolve_index_entry(url, source)
            except UnsafeIndexEntry as e:
                raise bad(f"shards[{i}].url is refused: {e}", url) from None
        if url in seen:
            raise bad(f"shards[{i}] repeats a URL", url)
        seen.add(url)
        shards.append(ShardInfo(url, count, tuple(cc), digest))
    return cls(shards, nc, [str(n) for n in names], ext, tuple(shape) if shape else None, source, label_key,
               label_names)
