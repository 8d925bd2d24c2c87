"""Which index a loader uses: the one it is given, or ``index.json`` beside the shards,
restricted to the shards asked for; and what happens when there is none."""
from __future__ import annotations

import os
import shlex
import warnings

from streamaug.core.shard_names import shard_file_name

from .shard_index import INDEX_NAME, MissingIndex, ShardIndex, ShardIndexError, ShardInfo
from .shard_urls import absolute_path, command_shard_name, is_local, pattern_text, shard_key, url_scheme


def default_index_path(urls: list[str], writing: bool = False) -> str | None:
    """``index.json`` beside the first shard, for local paths and http URLs. Beside the
    shard as named; when reading, beside the file a symlinked shard points to if only
    that folder has one."""
    first = urls[0]
    scheme = url_scheme(first)
    if scheme in ("http", "https"):
        return first.rsplit("/", 1)[0] + "/" + INDEX_NAME
    if scheme in ("", "file"):
        named = os.path.join(os.path.dirname(absolute_path(first)), INDEX_NAME)
        real = os.path.join(os.path.dirname(shard_key(first)), INDEX_NAME)
        return named if writing or os.path.exists(named) or not os.path.exists(real) else real
    return None


def find_index(urls: list[str], index, given: str | list[str] | None = None,
               needs_counts: bool = False, label_key: str | None = None,
               num_classes: int | None = None) -> "ShardIndex | None":
    """The loader's index for ``urls``: ``index`` (a ``ShardIndex``, a path/URL, ``False`` for none)
    or, by default, ``index.json`` beside the first shard, restricted to ``urls``.

    With the default and no index there, the shards stream unindexed (as webdataset
    does) after one warning naming the ``streamaug index`` command that writes one,
    unless ``needs_counts`` (a balancer or mixup without ``num_classes=``): then that
    is an error naming the same command. ``given`` is the caller's pattern, and
    ``label_key``/``num_classes`` the loader's, for the command."""
    if index is False:
        return None
    command = f"streamaug index {pattern_text(given if given is not None else urls)}"
    if label_key is not None:
        command += f" --label-key {shlex.quote(label_key)}"
    if num_classes is not None:
        command += f" --num-classes {num_classes}"
    if isinstance(index, ShardIndex):
        full = index
    elif index is not None:
        full = ShardIndex.load(index)
    else:
        path = default_index_path(urls)
        if path is None:
            raise ValueError(f"pipe: URLs need an explicit index= (path or URL of index.json), or index=False to "
                             f"stream without one; write one with `{command} --out index.json`")
        try:
            full = ShardIndex.load(path)
        except MissingIndex:
            hint = f"`{command}`" if is_local(urls[0]) else f"`{command} --out index.json` (and upload it to {path})"
            if needs_counts:
                raise ShardIndexError(f"no index at {path!r}, and balance=/mixup= need class counts: write one "
                                      f"with {hint}, or pass index=False with num_classes=") from None
            warnings.warn(f"no index at {path!r}: streaming without one (no len(), ranks may differ in length, "
                          f"balancing estimates counts online). Write one with {hint}, or pass index=False "
                          f"to silence this.", UserWarning, stacklevel=3)
            return None
    if [s.url for s in full.shards] == list(urls):
        return full
    sub = full.subset(urls)
    if len(sub.shards) == len(full.shards) and len({shard_key(u) for u in sub.urls}) == len(full.shards):
        # the same shards in another order (or as commands): keep the index's order, which the plan uses
        position = {shard_key(s.url): i for i, s in enumerate(full.shards)}
        by_name = {os.path.basename(s.url.rstrip("/")): i for i, s in enumerate(full.shards)}
        def rank(s: ShardInfo) -> int:
            if (is_local(s.url) or url_scheme(s.url) in ("http", "https")) and shard_key(s.url) in position:
                return position[shard_key(s.url)]
            if is_local(s.url) or url_scheme(s.url) in ("http", "https"):     # served, indexed as files
                return by_name[shard_file_name(s.url)]
            return by_name[command_shard_name(s.url)]
        sub.shards.sort(key=rank)
    return sub
