"""The shard index: per-shard sample and class counts written beside the shards.

It is the source of epoch length, balancing targets and per-rank splits, so it
is read once, validated field by field, and kept small (no per-sample rows).

Layout (``index.json``)::

    {"format": "streamaug-index", "version": 1,
     "num_classes": 10, "class_names": ["0", ...],
     "image_ext": "npy", "image_shape": [32, 32, 3],      # null when sizes vary
     "shards": [{"url": "train-000000.tar", "count": 500,
                 "class_counts": [50, 48, ...]}, ...]}

Shard URLs are relative to the index's folder unless they are absolute paths
or carry a scheme (``http://``, ``pipe:``).
"""
from __future__ import annotations

import json
import os
import urllib.request
from dataclasses import dataclass, field

FORMAT = "streamaug-index"
VERSION = 1
INDEX_NAME = "index.json"


class ShardIndexError(ValueError):
    """An index file that is missing, malformed, or disagrees with its shards."""


@dataclass(frozen=True)
class ShardInfo:
    url: str
    count: int
    class_counts: tuple[int, ...]


@dataclass
class ShardIndex:
    shards: list[ShardInfo]
    num_classes: int
    class_names: list[str] = field(default_factory=list)
    image_ext: str | None = None
    image_shape: tuple[int, int, int] | None = None
    source: str = "<memory>"

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

    def shard(self, url: str) -> ShardInfo:
        for s in self.shards:
            if s.url == url:
                return s
        raise ShardIndexError(f"index {self.source!r} has no shard {url!r}")

    def subset(self, urls: list[str]) -> "ShardIndex":
        """The index restricted to ``urls`` (in that order); every URL must be listed."""
        by_url = {s.url: s for s in self.shards}
        missing = [u for u in urls if u not in by_url]
        if missing:
            raise ShardIndexError(f"index {self.source!r} does not list shard {missing[0]!r} "
                              f"({len(missing)} of {len(urls)} URLs missing)")
        return ShardIndex([by_url[u] for u in urls], self.num_classes, self.class_names,
                          self.image_ext, self.image_shape, self.source)

    # ------------------------------------------------------------------ io
    def to_json(self, base: str | None = None) -> dict:
        def rel(url: str) -> str:
            local = "://" not in url and not url.startswith("pipe:")
            if base and local and os.path.dirname(os.path.abspath(url)) == os.path.abspath(base):
                return os.path.basename(url)
            return os.path.abspath(url) if local else url
        return {"format": FORMAT, "version": VERSION, "num_classes": self.num_classes,
                "class_names": list(self.class_names), "image_ext": self.image_ext,
                "image_shape": list(self.image_shape) if self.image_shape else None,
                "shards": [{"url": rel(s.url), "count": s.count, "class_counts": list(s.class_counts)}
                           for s in self.shards]}

    def save(self, path: str) -> None:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.to_json(os.path.dirname(os.path.abspath(path))), f, indent=1)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> "ShardIndex":
        """Read and validate an index from a local path or an http(s) URL."""
        try:
            if path.startswith(("http://", "https://")):
                with urllib.request.urlopen(path, timeout=60) as r:
                    text = r.read().decode()
            else:
                with open(path) as f:
                    text = f.read()
        except FileNotFoundError:
            raise ShardIndexError(f"index {path!r} does not exist; write one with "
                              f"`streamaug shards` or pass index=") from None
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise ShardIndexError(f"index {path!r} is not valid JSON: {e}") from None
        return cls.from_json(doc, source=path)

    @classmethod
    def from_json(cls, doc: dict, source: str = "<memory>") -> "ShardIndex":
        def bad(what, value):
            return ShardIndexError(f"index {source!r}: {what} (value: {value!r})")

        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise bad("not a streamaug index: 'format' must be " + repr(FORMAT),
                      doc.get("format") if isinstance(doc, dict) else type(doc).__name__)
        if doc.get("version") != VERSION:
            raise bad(f"unsupported version, expected {VERSION}", doc.get("version"))
        nc = doc.get("num_classes")
        if not isinstance(nc, int) or isinstance(nc, bool) or nc < 1:
            raise bad("'num_classes' must be a positive int", nc)
        names = doc.get("class_names") or [str(i) for i in range(nc)]
        if len(names) != nc:
            raise bad(f"'class_names' must have num_classes={nc} entries", names)
        shape = doc.get("image_shape")
        if shape is not None and (not isinstance(shape, list) or len(shape) != 3
                                  or not all(isinstance(v, int) and v > 0 for v in shape)):
            raise bad("'image_shape' must be null or [H, W, C] positive ints", shape)
        raw = doc.get("shards")
        if not isinstance(raw, list) or not raw:
            raise bad("'shards' must be a non-empty list", raw)
        base = None if source.startswith(("http://", "https://", "<")) else os.path.dirname(os.path.abspath(source))
        http_base = source.rsplit("/", 1)[0] if source.startswith(("http://", "https://")) else None
        shards, seen = [], set()
        for i, s in enumerate(raw):
            if not isinstance(s, dict):
                raise bad(f"shards[{i}] must be an object", s)
            url, count, cc = s.get("url"), s.get("count"), s.get("class_counts")
            if not isinstance(url, str) or not url:
                raise bad(f"shards[{i}].url must be a non-empty string", url)
            if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                raise bad(f"shards[{i}].count must be an int >= 0", count)
            if (not isinstance(cc, list) or len(cc) != nc
                    or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in cc)):
                raise bad(f"shards[{i}].class_counts must be {nc} ints >= 0", cc)
            if sum(cc) != count:
                raise bad(f"shards[{i}] ({url}): class_counts sum to {sum(cc)} but count is {count}", cc)
            if "://" not in url and not url.startswith("pipe:") and not os.path.isabs(url):
                if base is not None:
                    url = os.path.join(base, url)
                elif http_base is not None:
                    url = f"{http_base}/{url}"
            if url in seen:
                raise bad(f"shards[{i}] repeats a URL", url)
            seen.add(url)
            shards.append(ShardInfo(url, count, tuple(cc)))
        return cls(shards, nc, list(names), doc.get("image_ext"),
                   tuple(shape) if shape else None, source)


def default_index_path(urls: list[str]) -> str | None:
    """``index.json`` beside the first shard, for local paths and http URLs."""
    first = urls[0]
    if first.startswith("pipe:"):
        return None
    if first.startswith(("http://", "https://")):
        return first.rsplit("/", 1)[0] + "/" + INDEX_NAME
    return os.path.join(os.path.dirname(os.path.abspath(first)), INDEX_NAME)
