"""Shard URLs: expansion of patterns, and the one notion of "the same shard".

A shard can be named many ways: ``shards/a.tar``, ``./shards/a.tar``,
``/abs/shards/a.tar``, ``file:///abs/shards/a.tar``, a path through a symlinked
folder, ``https://host/shards/a.tar``, or a command, ``pipe:curl -s .../a.tar``.
:func:`shard_key` maps every local form to one real path, so a URL the caller
gives and an index entry match whenever they name the same file.

What an index *file* may name is narrower than what a caller may pass
(:func:`resolve_index_entry`): relative paths under the index's own folder and
http(s) URLs. ``pipe:`` and every other scheme run code or reach other systems, so
they come only from the caller's own ``urls=``; a caller's command URL is matched
to its index entry by the shard's file name (:func:`command_shard_name`).
"""
from __future__ import annotations

import glob
import os
import posixpath
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import unquote, urlparse

import braceexpand
from torch.utils.data import Dataset

INDEX_SCHEMES = ("http", "https")        # the only schemes an index file may name


class UnsafeIndexEntry(ValueError):
    """An index entry that names something an index may not (a command, another scheme, a path outside)."""


SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
GLOB_CHARS = frozenset("*?[")


def expand_urls(urls: str | Sequence[str]) -> list[str]:
    """Brace patterns (``train-{000000..000009}.tar``) and ``::``-separated lists → URLs; a
    local glob pattern (``shards/*.tar``) → the files it matches, and a local folder → the
    shards in it, each sorted by name."""
    if isinstance(urls, (str, os.PathLike)):
        urls = [urls]
    elif isinstance(urls, Iterable) and not isinstance(urls, (Dataset, Mapping, bytes, bytearray)):
        urls = list(urls)                  # a generator, Path.glob(), map(), a numpy array of names
    wrong = [u for u in (urls if isinstance(urls, list) else [urls]) if not isinstance(u, (str, os.PathLike))]
    if wrong:                              # (a Dataset passed as DataLoader takes one, say; None; bytes)
        raise TypeError(f"urls must be WebDataset tar shards: a path, URL, brace or glob pattern or folder, or a "
                        f"list of them; got {type(wrong[0]).__name__}. A Dataset or arrays are written to shards "
                        f"first: streamaug.loader.write_shards((images, labels), 'shards/') or streamaug shards")
    out = [u for pattern in urls for part in os.fspath(pattern).split("::") for u in braceexpand.braceexpand(part)]
    if not out or not all(out):
        raise ValueError(f"no shard URLs given (got {urls!r})")
    return [path for url in out for path in _local_files(url)]


def refuse_missing_local(urls: list[str]) -> None:
    """Refuse local shards that do not exist, naming them and the working directory a relative
    path is taken from (a mistyped path, or a script run from another folder)."""
    missing = [u for u in urls if is_local(u) and not os.path.exists(local_path(u))]
    if missing:
        more = f" and {len(missing) - 1} more of the {len(urls)} shards" if len(missing) > 1 else ""
        raise FileNotFoundError(f"shard {missing[0]!r}{more}: no such file or folder (relative paths are taken "
                                f"from the working directory {os.getcwd()!r})")


def named_twice(urls: list[str]) -> str | None:
    """What to say of a shard named twice (overlapping patterns, ``a.tar`` and ``./a.tar``, a
    symlink or a hard link to it): a loader reads it twice per epoch, every sample counted
    twice; None if none is."""
    first: dict[str, str] = {}
    files: dict[tuple[int, int], str] = {}
    for url in urls:
        key = shard_key(url)
        if key in first:
            same = f"as {first[key]!r} and {url!r}" if first[key] != url else f"as {url!r}"
            return f"shard {key!r} is named twice ({same}) in the URLs given"
        first[key] = url
        try:
            st = os.stat(key) if is_local(url) else None
        except OSError:                   # (missing: refused or skipped elsewhere)
            st = None
        if st is not None:
            if (st.st_dev, st.st_ino) in files:
                return (f"shards {files[st.st_dev, st.st_ino]!r} and {url!r} are one file (hard links to it) in the "
                        f"URLs given")
            files[st.st_dev, st.st_ino] = url
    return None


def _local_files(url: str) -> list[str]:
    """A local folder's shards, or a glob pattern's files (a path that exists is itself), with
    ``~`` expanded. A folder's shards are its ``SHARD_SUFFIXES`` entries that are not folders
    and not hidden (macOS's ``._x.tar`` beside ``x.tar``), as a shell's ``*`` would give."""
    if url_scheme(url):
        return [url]
    path = os.path.expanduser(url)
    if os.path.isfile(path):
        return [path]
    if os.path.isdir(path):
        found = sorted(os.path.join(path, f) for f in os.listdir(path)
                       if f.endswith(SHARD_SUFFIXES) and not f.startswith(".")
                       and not os.path.isdir(os.path.join(path, f)))
        if not found:
            raise ValueError(f"folder {url!r} holds no shards (no {'/'.join(SHARD_SUFFIXES)} file in it)"
                             + nested_shards_hint(url, path))
        return found
    if GLOB_CHARS & set(url):
        found = sorted(f for f in glob.glob(path) if not os.path.isdir(f))     # (glob passes hidden names over)
        if not found:
            raise ValueError(f"no file matches the pattern {url!r} (relative to {os.getcwd()!r})")
        return found
    return [path]


def nested_shards_hint(url: str, path: str) -> str:
    """Where a folder given as ``urls`` holds no shards: its subfolders' shards, if they hold some
    (a folder is not searched below its own files), else how an image folder becomes shards.
    Shards in several subfolders (``train/``, ``val/``) are most likely splits: one is asked for."""
    found = sorted(os.path.relpath(f, path) for suffix in SHARD_SUFFIXES
                   for f in glob.glob(os.path.join(path, "**", "*" + suffix), recursive=True))
    if not found:
        return (f"; an image folder (one subfolder per class) is written to shards first: streamaug shards {url} "
                f"OUT (write_shards)")
    below = sorted({os.path.dirname(f) for f in found})
    if len(below) > 1:
        shown = ", ".join(repr(os.path.join(url, b)) for b in below[:4]) + (", ..." if len(below) > 4 else "")
        return (f"; its subfolders hold {len(found)} shards, in {len(below)} folders ({shown}), most likely "
                f"splits such as train and val: pass the folder to read (a folder's own files alone are read), "
                f"or a list of the shards to read together")
    return (f"; its subfolder {below[0]!r} holds {len(found)} shard{'s' if len(found) > 1 else ''}: pass "
            f"{os.path.join(url, below[0])!r} (a folder's own files alone are read)")


def url_scheme(url: str) -> str:
    """``""`` for a local path (a Windows drive letter is not a scheme), else the scheme."""
    scheme = urlparse(url).scheme
    return "" if len(scheme) <= 1 else scheme.lower()


def is_local(url: str) -> bool:
    return url_scheme(url) in ("", "file")


def local_path(url: str, base: str | None = None) -> str:
    """A local URL (path or ``file://``) → its real absolute path (symlinks resolved),
    relative paths taken from ``base`` (default: the working directory)."""
    if url_scheme(url) == "file":
        url = unquote(urlparse(url).path)
    return os.path.realpath(os.path.join(base or os.getcwd(), os.path.expanduser(url)))


def absolute_path(url: str) -> str:
    """A local URL → its absolute path, normalised but with symlinks kept."""
    if url_scheme(url) == "file":
        url = unquote(urlparse(url).path)
    return os.path.normpath(os.path.abspath(os.path.expanduser(url)))


def shard_key(url: str) -> str:
    """What identifies a shard when matching URLs: a real path, or the URL itself."""
    return local_path(url) if is_local(url) else url


def readable_url(url: str) -> str:
    """The URL handed to webdataset's ``gopen``: ``file://`` becomes a plain path."""
    return local_path(url) if url_scheme(url) == "file" else url


def command_shard_name(url: str) -> str | None:
    """The tar file a ``pipe:`` (or other non-http) URL reads: the last word naming a ``.tar``,
    as a file name (``pipe:aws s3 cp s3://b/train-000001.tar -`` → ``train-000001.tar``)."""
    text = url[len("pipe:"):] if url.startswith("pipe:") else url
    try:
        words = shlex.split(text)
    except ValueError:
        words = text.split()
    names = [posixpath.basename(urlparse(w).path or w) for w in words if ".tar" in w]
    return names[-1] if names else None


def index_entry_url(url: str, index_dir: str) -> str:
    """How ``url`` is written into an index file kept in ``index_dir``: a path relative
    to it (local shards must lie under it), an http(s) URL, or the shard's file name for
    a command URL (matched by name when the caller passes the same command)."""
    scheme = url_scheme(url)
    if scheme in INDEX_SCHEMES:
        return url
    if scheme in ("", "file"):
        # As named (a symlink in the folder stays an entry of the folder), else as resolved
        # (a shard named through a symlinked folder); reading checks the same, lexically.
        for path, root in ((absolute_path(url), os.path.abspath(index_dir)),
                           (local_path(url), os.path.realpath(index_dir))):
            if os.path.commonpath([path, root]) == root:
                return os.path.relpath(path, root).replace(os.sep, "/")
        raise UnsafeIndexEntry(f"shard {url!r} is outside the index's folder {root!r}; an index names only "
                               f"shards under its own folder: write it in a folder that holds the shards")
    name = command_shard_name(url)
    if name is None:
        raise UnsafeIndexEntry(f"cannot name shard {url!r} in an index: no '.tar' file name in it, and an index "
                               f"never stores commands or {scheme!r} URLs")
    return name


def resolve_index_entry(entry: str, index_source: str) -> str:
    """An index file's shard entry → the URL it names, or :class:`UnsafeIndexEntry`.

    Relative paths resolve against the index's folder (or its http base) and must stay
    inside it; absolute http(s) URLs pass; absolute paths, ``..`` escapes, ``pipe:``
    and every other scheme are refused, so an index never runs a command."""
    scheme = url_scheme(entry)
    if scheme in INDEX_SCHEMES:
        return entry
    if scheme:
        raise UnsafeIndexEntry(f"a {scheme!r} URL; an index may name only relative paths under its own folder "
                               f"or {'/'.join(INDEX_SCHEMES)} URLs (pass commands in urls= yourself)")
    if entry.startswith(("/", "\\", "~")) or os.path.isabs(entry):
        raise UnsafeIndexEntry("an absolute path; an index may name only relative paths under its own folder")
    if url_scheme(index_source) in INDEX_SCHEMES:
        parsed = urlparse(index_source)
        folder = posixpath.dirname(parsed.path) or "/"
        joined = posixpath.normpath(posixpath.join(folder, entry))
        if not joined.startswith(folder.rstrip("/") + "/"):
            raise UnsafeIndexEntry("a path that leaves the index's folder")
        return f"{parsed.scheme}://{parsed.netloc}{joined}"
    root = os.path.realpath(os.path.dirname(os.path.abspath(index_source)))
    joined = os.path.normpath(os.path.join(root, entry))
    if os.path.commonpath([joined, root]) != root:
        raise UnsafeIndexEntry("a path that leaves the index's folder")
    return os.path.realpath(joined)


def pattern_text(urls: str | Sequence[str]) -> str:
    """The caller's URLs as one shell-quoted argument for ``streamaug index``: a list of
    numbered shards in order is written as the brace range it is (``train-{000000..000999}.tar``,
    not a thousand names joined by ``::``)."""
    if isinstance(urls, (str, os.PathLike)):
        return shlex.quote(os.fspath(urls))
    names = [os.fspath(u) for u in urls]
    return shlex.quote(_brace_range(names) or "::".join(names))


def _brace_range(names: list[str]) -> str | None:
    """``names`` as one brace pattern that expands to exactly them, or None."""
    parts = [re.fullmatch(r"(.*?)(\d+)(\D*)", n) for n in names]
    if len(names) < 3 or not all(parts):
        return None
    first, last = parts[0], parts[-1]
    pattern = f"{first[1]}{{{first[2]}..{last[2]}}}{first[3]}"
    try:
        expanded = [u for part in pattern.split("::") for u in braceexpand.braceexpand(part)]   # (as expand_urls reads it)
    except braceexpand.UnbalancedBracesError:           # (red team s43: a backslash before the number)
        return None
    return pattern if expanded == names else None
