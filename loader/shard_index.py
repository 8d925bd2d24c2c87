"""The shard index: per-shard sample and class counts written beside the shards.

It is the source of epoch length, balancing targets and per-rank splits, so it
is read once, validated field by field, and kept small (no per-sample rows).

Layout (``index.json``)::

    {"format": "streamaug-index", "version": 1,
     "num_classes": 10, "class_names": ["0", ...],
     "image_ext": "npy", "image_shape": [32, 32, 3],      # null when sizes vary
     "shards": [{"url": "train-000000.tar", "count": 500,
                 "class_counts": [50, 48, ...],
                 "digest": "9c1f..."}, ...]}                # optional

Shard URLs in an index *file* are relative paths under the index's folder or
http(s) URLs, nothing else (see :mod:`.shard_urls`): an index never names a
command. ``label_key`` (optional) records which field holds the label (``streamaug
index`` and ``write_shards`` always write it; absent, the loader reads ``.cls`` unless its
own ``label_key=`` says otherwise); ``label_names: true`` (optional) that labels are written as class
names, read as their place in ``class_names``; a shard's ``digest`` (optional; ``write_shards``
writes it) the blake2b of its bytes as written (:mod:`.shard_digest`). Files are read with limits
checked before anything is allocated: ``MAX_INDEX_BYTES`` and ``MAX_NUM_CLASSES`` (raise them with ``ShardIndex.load``'s
``max_bytes=``/``max_classes=``).
"""
from __future__ import annotations

import json
import numbers
import os
import re
from dataclasses import dataclass, field, replace

from streamaug.core.shard_names import shard_file_name

from .atomic_file import replaced_atomically
from .shard_urls import (UnsafeIndexEntry, command_shard_name, index_entry_url, is_local, local_path,
                         shard_key, url_scheme)

FORMAT = "streamaug-index"
VERSION = 1
INDEX_NAME = "index.json"
MAX_INDEX_BYTES = 64 << 20       # 64 MiB: about a million shard entries at 10 classes
MAX_NUM_CLASSES = 100_000


class ShardIndexError(ValueError):
    """An index file that is missing, malformed, or disagrees with its shards."""


def check_num_classes(num_classes) -> int | None:
    """``num_classes=`` as an int (numpy ints too), ``None`` kept; a bool or anything under 1 refused."""
    if num_classes is None:
        return None
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
    return int(num_classes)


def check_class_names(class_names) -> list[str] | None:
    """``class_names=`` as a list of distinct, non-empty strings (``None`` kept)."""
    if class_names is None:
        return None
    names = [str(n) if isinstance(n, str) else n for n in class_names]
    if not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
        raise ValueError(f"class_names must be distinct, non-empty strings, got {list(class_names)!r}")
    return names


def other_shards_listed(path: str, ours) -> list[str]:
    """Shards the index at ``path`` lists that are still on disk and that ``ours(url)`` does not
    claim: what writing a new index there would drop (a train index, when a val split is
    indexed or written into its folder). ``[]`` when there is no readable index."""
    try:
        old = ShardIndex.load(path)
    except Exception:                                  # none, or unreadable: written anew
        return []
    return [s.url for s in old.shards if is_local(s.url) and not ours(s.url) and os.path.exists(local_path(s.url))]


@dataclass(frozen=True)
class ShardInfo:
    url: str
    count: int
    class_counts: tuple[int, ...]
    digest: str | None = None       # blake2b (16 bytes, hex) of the shard as written; None: not recorded


@dataclass
class ShardIndex:
    shards: list[ShardInfo]
    num_classes: int
    class_names: list[str] = field(default_factory=list)
    image_ext: str | None = None
    image_shape: tuple[int, int, int] | None = None
    source: str = "<memory>"
    label_key: str | None = None
    label_names: bool = False       # labels are written as class names, read as their place in class_names

    @property
    def total(self) -> int:
        return sum(s.count for s in self.shards)

    @property
    def class_counts(self) -> list[int]:
        out = [0] * self.num_classes
        for s in self.shards:
            for c, n in enumerate(s.class_counts):
                out[c] += n
        return out

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.shards]

    @property
    def class_ids(self) -> dict[str, int] | None:
        """Class name → id where labels are written as names (``{"label": "circle"}``), else None."""
        return {name: i for i, name in enumerate(self.class_names)} if self.label_names else None

    def shard(self, url: str) -> ShardInfo:
        for s in self.shards:
            if s.url == url:
                return s
        raise ShardIndexError(f"index {self.source!r} has no shard {url!r}")

    def subset(self, urls: list[str]) -> "ShardIndex":
        """The index restricted to ``urls`` (in that order); every URL must be listed.

        Local URLs match an entry naming the same file however they are written
        (relative, ``./``, ``..``, symlinks, ``file://``); http(s) URLs match exactly, or
        the one local entry with their file name (the indexed files, served); a command
        (``pipe:...``) matches the one entry with its shard's file name and is what gets read."""
        by_key = {shard_key(s.url): s for s in self.shards}
        by_name: dict[str, list[ShardInfo]] = {}
        for s in self.shards:
            by_name.setdefault(os.path.basename(s.url.rstrip("/")), []).append(s)
        chosen, missing, by_file = [], [], {}
        for u in urls:
            if is_local(u) or url_scheme(u) in ("http", "https"):
                info = by_key.get(shard_key(u))
                if info is None and not is_local(u):      # served over http, indexed as local files
                    found = [s for s in by_name.get(shard_file_name(u), [])
                             if is_local(s.url)]
                    info = ShardInfo(u, found[0].count, found[0].class_counts) if len(found) == 1 else None
            else:
                found = by_name.get(command_shard_name(u) or "", [])
                info = ShardInfo(u, found[0].count, found[0].class_counts) if len(found) == 1 else None
            if info is None:
                missing.append(u)
                continue
            if info.url == u and not is_local(u) and shard_key(u) not in by_key:     # matched by file name
                entry = found[0].url
                if entry in by_file:
                    raise ShardIndexError(f"index {self.source!r}: shards {by_file[entry]!r} and {u!r} both match its "
                                          f"entry {os.path.basename(entry)!r} by file name; an entry is one shard "
                                          f"(give each split its own index)")
                by_file[entry] = u
            chosen.append(info)
        if missing:
            leftover = _older_than_index(missing, self.source, [i.url for i in self.shards])
            listed = ", ".join(os.path.basename(s.url) for s in self.shards[:3]) + \
                (", ..." if len(self.shards) > 3 else "")
            raise ShardIndexError(f"index {self.source!r} does not list shard {missing[0]!r} "
                                  f"({len(missing)} of {len(urls)} URLs missing; it lists {len(self.shards)}: "
                                  f"{listed}). {leftover or 'Index these shards'} (streamaug index), or give the "
                                  f"loader their index with index=")
        return ShardIndex(chosen, self.num_classes, self.class_names, self.image_ext, self.image_shape,
                          self.source, self.label_key, self.label_names)

    def with_num_classes(self, num_classes: int) -> "ShardIndex":
        """The index over ``num_classes`` classes, as a loader's ``num_classes=`` asks: counts
        padded with zeros (classes these shards lack, e.g. a validation split), or cut where no
        shard holds those labels. A shard that does is refused by name (the index counted a
        label the user says cannot be: a typo in a label, or the wrong ``num_classes``)."""
        num_classes = check_num_classes(num_classes)
        if num_classes == self.num_classes:
            return self
        for s in self.shards:
            over = [(c, n) for c, n in enumerate(s.class_counts) if c >= num_classes and n]
            if over:
                c, n = over[-1]
                raise ShardIndexError(
                    f"shard {s.url!r} holds {n} sample(s) labelled {c}, outside num_classes={num_classes} "
                    f"(value: {c}; index {self.source!r} lists {self.num_classes} classes): "
                    f"`streamaug index SHARDS --num-classes {num_classes}` names the sample's key")

        def fit(counts):
            return tuple(counts[:num_classes]) + (0,) * (num_classes - len(counts))
        names = list(self.class_names)
        if names:
            names = (names + [str(c) for c in range(len(names), num_classes)])[:num_classes]
        return ShardIndex([replace(s, class_counts=fit(s.class_counts)) for s in self.shards], num_classes, names,
                          self.image_ext, self.image_shape, self.source, self.label_key, self.label_names)

    # ------------------------------------------------------------------ io
    def to_json(self, base: str | None = None) -> dict:
        """The index as a document. With ``base`` (the folder the file goes in) shard URLs
        are written as :func:`~.shard_urls.index_entry_url` does (relative paths under
        ``base``, http(s) URLs, command URLs by file name); without, as they are."""
        def entry(url: str) -> str:
            if base is None:
                return url
            try:
                return index_entry_url(url, base)
            except UnsafeIndexEntry as e:
                raise ShardIndexError(f"index {self.source!r}: {e}") from None
        doc = {"format": FORMAT, "version": VERSION, "num_classes": self.num_classes,
               "class_names": list(self.class_names), "image_ext": self.image_ext,
               "image_shape": list(self.image_shape) if self.image_shape else None,
               "shards": [{"url": entry(s.url), "count": s.count, "class_counts": list(s.class_counts),
                           **({"digest": s.digest} if s.digest is not None else {})} for s in self.shards]}
        if self.label_key is not None:
            doc["label_key"] = self.label_key
        if self.label_names:
            doc["label_names"] = True
        return doc

    def save(self, path: str) -> None:
        doc = self.to_json(os.path.dirname(os.path.abspath(path)))
        with replaced_atomically(path) as f:            # whole or not at all, whoever else writes it
            json.dump(doc, f, indent=1)

    @classmethod
    def load(cls, path: str, *, max_bytes: int = MAX_INDEX_BYTES, max_classes: int = MAX_NUM_CLASSES,
             timeout: float = 60) -> "ShardIndex":
        """Read and validate an index from a local path or an http(s) URL (:mod:`.index_file`).

        A file over ``max_bytes`` or declaring over ``max_classes`` classes is refused
        before it is parsed or anything is allocated for it."""
        from .index_file import load_index

        return load_index(path, max_bytes=max_bytes, max_classes=max_classes, timeout=timeout, cls=cls)

    @classmethod
    def from_json(cls, doc: dict, source: str = "<memory>", *, max_classes: int = MAX_NUM_CLASSES) -> "ShardIndex":
        """Validate a document (:mod:`.index_file`). Read from a file or URL (``source``), its
        shard entries must be relative paths under the file's folder or http(s) URLs; a document
        built in the caller's own code (``source="<memory>"``) may name any URL, as ``urls=`` may."""
        from .index_file import index_from_json

        return index_from_json(doc, source, max_classes=max_classes, cls=cls)


class MissingIndex(ShardIndexError):
    """The index file (or http resource) does not exist."""


def recorded_shape(shapes) -> tuple[int, int, int] | None:
    """The ``image_shape`` an index records for images of ``shapes`` (``(H, W, C)`` each): their
    size when they all share one, with their channel count when they share one, else 3 (what
    the loader converts mixed gray and colour to); ``None`` when sizes vary."""
    sizes, channels = {tuple(s[:2]) for s in shapes}, {s[2] for s in shapes}
    if len(sizes) != 1:
        return None
    return (*next(iter(sizes)), channels.pop() if len(channels) == 1 else 3)

def _series(url: str) -> str:
    """``train`` of ``.../train-000003.tar``: the writer's prefix (the name less its number)."""
    return re.sub(r"[-_]?[0-9]+\.(tar|tar\.gz|tgz)$", "", os.path.basename(url))


def _older_than_index(missing: list[str], source: str | None, listed: list[str]) -> str:
    """A hint when every unlisted shard is a local file older than the index and of a series it
    lists (``train-000005.tar`` beside an index of ``train-000000..1``): most likely left over from
    an earlier, larger write into the same folder, which re-indexing would add back."""
    series = {_series(u) for u in listed}
    try:
        made = os.path.getmtime(source)
        if not all(is_local(u) and _series(u) in series and os.path.getmtime(local_path(u)) < made
                   for u in missing):
            return ""
    except (OSError, TypeError):
        return ""
    return ("The unlisted shard(s) are older than the index: if they are left over from an earlier write "
            "into this folder, remove them (re-indexing would add their samples back). If they belong here, "
            "index them")
