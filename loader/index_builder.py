"""Index existing WebDataset shards: ``build_index`` and ``streamaug index``.

>>> build_index("shards/train-{000000..000099}.tar", workers=8)    # doctest: +SKIP
ShardIndex(...)   # and shards/index.json, the same format write_shards writes

One pass over each shard with the loader's own tar reader, shards in parallel
(one process each). Labels are read from their small text or JSON field; images
are never decoded: their shape comes from the header alone (PIL opens lazily,
``.npy`` headers are parsed by numpy's own reader). A shard that cannot be indexed
honestly is refused with a :class:`StreamError` naming the shard, the key and the
value: a sample without image or label, an image or label field that differs from
the rest of the corpus, a label that is not a non-negative integer. An image the loader
refuses from its header (it does not parse, the bytes are not its format, it is over the
pixel limit, an ``.npy`` that is not a uint8 image) is refused too, unless
``on_error="skip"``: the sample is still counted with its label (the loader meets it
as a sample and raises or skips it by its own ``on_error``), its shape is left out,
and it is counted in ``stats`` (or a warning says how many, with the first).
"""
from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from .decode_limits import DecodeLimits, check_image
from .errors import ErrorHandler, LoaderStats, StreamError, check_policy
from .image_codec import (IMAGE_EXTS, LABEL_KEYS, LabelIsText, check_label_key, find_label_key, missing_field_hint,
                          read_label, warn_if_pil_fills_cut_images)
from .index_lookup import default_index_path
from .shard_index import (INDEX_NAME, MAX_NUM_CLASSES, ShardIndex, ShardIndexError, ShardInfo, check_class_names,
                          check_num_classes, other_shards_listed, recorded_shape)
from .shard_urls import (UnsafeIndexEntry, command_shard_name, expand_urls, index_entry_url, is_local, named_twice,
                         shard_key)
from .tar_reader import read_segment, whole_shard
from .unfinished_write import refuse_unfinished_write, remove_passed_marks


@dataclass
class ShardScan:
    """What one pass over one shard found."""
    url: str
    count: int = 0
    labels: Counter = field(default_factory=Counter)
    image_exts: set = field(default_factory=set)      # the image types its samples use
    label_key: str | None = None
    sizes: set = field(default_factory=set)          # (H, W), at most 2 kept: 2 means "varies"
    channels: set = field(default_factory=set)
    first_key: str | None = None
    top_key: str | None = None                       # the first sample with the largest label
    bad_images: Counter = field(default_factory=Counter)   # on_error="skip": reason -> samples, shape unread
    bad_examples: dict = field(default_factory=dict)         # reason -> first message


def scan_shard(url: str, label_key: str | None = None, limits: DecodeLimits | None = None,
               on_error: str = "raise", class_ids: dict[str, int] | None = None) -> ShardScan:
    """Count the samples and labels of one shard; :class:`StreamError` on anything inconsistent.

    The shard is read by the loader's own reader (:func:`.tar_reader.read_segment`), so the
    same rules hold here as in training: member and pixel limits from headers, formats by
    magic bytes, the end-of-archive marker, a ``pipe:`` command's exit status, read timeouts."""
    scan = ShardScan(url)
    limits = limits or DecodeLimits()
    for raw in read_segment(whole_shard(url), ErrorHandler("raise", LoaderStats(), skip_hint=False), limits):
        _scan_sample(scan, raw, label_key, url, raw["__key__"], limits, on_error == "skip", class_ids)
    return scan


def _scan_sample(scan: ShardScan, raw: dict, label_key: str | None, url: str, key: str,
                 limits: DecodeLimits, skip_images: bool = False, class_ids: dict[str, int] | None = None) -> None:
    fields = sorted(k for k in raw if not k.startswith("__"))
    exts = [e for e in IMAGE_EXTS if e in raw]
    if not exts:
        raise StreamError("no_image", f"sample has no image field (one of {IMAGE_EXTS})"
                          f"{missing_field_hint(key, fields, 'image')}", shard=url, key=key, value=fields)
    if len(exts) > 1:                               # (samples of different image types are fine)
        raise StreamError("mixed_image_ext", f"sample has {len(exts)} image fields ({', '.join(exts)}): which "
                          "is the image is ambiguous", shard=url, key=key, value=fields)
    # (a sample without the field the samples before it had is read with that field, as the loader
    # reads it: a .json without "label" is then named as such, not taken for a tar out of order)
    chosen = label_key or find_label_key(raw) or scan.label_key
    if chosen is None or chosen.split(":")[0] not in raw:
        wanted = repr(chosen) if chosen else f"any of {LABEL_KEYS}"
        raise StreamError("no_label", f"sample has no label field ({wanted}; choose it with --label-key or "
                          f"label_key=){missing_field_hint(key, fields, 'label')}", shard=url, key=key, value=fields)
    if scan.label_key is not None and chosen != scan.label_key:
        raise StreamError("mixed_label_key", f"label fields differ: sample {scan.first_key!r} has "
                          f"{scan.label_key!r}, this one {chosen!r}; choose one with --label-key or label_key=",
                          shard=url, key=key, value=fields)
    try:
        label = read_label(raw, chosen, class_ids)
    except ValueError as e:
        hint = "" if class_ids is not None or not isinstance(e, LabelIsText) else "; if labels are written as " \
            "class names, pass --label-names with the names in id order, --class-names cat,dog (label_names=True, " \
            "class_names=)"
        if not label_key:
            hint += "; if another field holds the class, choose it with --label-key or label_key= (e.g. json:FIELD)"
        raise StreamError("bad_label", f"label in {chosen!r} is not an integer class: {e}{hint}", shard=url,
                          key=key, value=bytes(raw[chosen.split(':')[0]][:40])) from None
    if label < 0:
        raise StreamError("bad_label", "label is negative", shard=url, key=key, value=label)
    ext = exts[0]
    try:
        shape = check_image(raw[ext], ext, limits, url, key)     # (H, W, C as the loader decodes it)
    except StreamError as e:
        if not skip_images or e.reason not in SKIPPABLE_IMAGE_ERRORS:
            raise
        scan.bad_images[e.reason] += 1
        scan.bad_examples.setdefault(e.reason, str(e))
        shape = None
    if shape is not None:
        if len(scan.sizes) < 2:
            scan.sizes.add(shape[:2])
        scan.channels.add(shape[2])
    scan.image_exts.add(ext)
    scan.label_key = chosen
    scan.first_key = scan.first_key or key
    if label > max(scan.labels, default=-1):
        scan.top_key = key
    scan.labels[label] += 1
    scan.count += 1


SKIPPABLE_IMAGE_ERRORS = ("format_mismatch", "undecodable_image", "image_too_large")


def _executor(workers: int, urls: list[str]) -> Executor:
    if all(u.startswith(("http://", "https://")) for u in urls):
        return ThreadPoolExecutor(workers)                 # waiting on the network, not the CPU
    return ProcessPoolExecutor(workers)


def build_index(urls: str | Sequence[str], out: str | None = None, *, label_key: str | None = None,
                num_classes: int | None = None, class_names: list[str] | None = None, label_names: bool = False,
                workers: int | None = None, progress: bool = True, on_error: str = "raise",
                stats: LoaderStats | None = None, limits: DecodeLimits | None = None) -> ShardIndex:
    """Index existing shards and write ``index.json`` (default: beside the first shard).

    ``label_key`` is ``"cls"``, ``"label"``, ``"txt"`` or ``"json:FIELD"``; by default each
    sample's first of those, which must be the same field throughout. ``num_classes``
    defaults to the largest label + 1. ``class_names`` names the classes in id order; with
    ``label_names=True`` the labels are written as those names (``{"label": "cat"}``) and are
    read as their place in it, by name only (re-indexing such shards keeps both). ``workers`` shards are read at once (default: CPUs,
    at most 8). Returns the index, with the URLs as given. ``on_error="skip"`` indexes past
    images the loader refuses (see the module's docstring), counting them by reason in
    ``stats``, or, without ``stats``, warning. ``limits``: the member size, pixel and read-time
    limits, as the loader's (``StreamLoader(max_image_pixels=...)``) for shards of large images.
    """
    label_key = check_label_key(label_key)
    on_error = check_policy(on_error)
    warn_if_pil_fills_cut_images()
    if not isinstance(label_names, bool):
        raise ValueError(f"label_names must be True or False, got {label_names!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be an int >= 1 (shards read at once), got {workers!r}")
    num_classes, class_names = check_num_classes(num_classes), check_class_names(class_names)
    shard_urls = expand_urls(urls)
    listed = next((u for u in shard_urls if u.endswith(".json")), None)
    if listed is not None:                    # (red team s36: "would drop 4 other shards")
        raise ValueError(f"{listed!r} is an index file, not a shard: pass the shards, e.g. their folder "
                         f"({os.path.dirname(listed) or '.'!r}) or a pattern")
    twice = named_twice(shard_urls)
    if twice:
        raise ValueError(f"{twice}: an index lists each shard once")
    passed = refuse_unfinished_write(shard_urls)
    out = os.path.expanduser(out) if out else default_index_path(shard_urls, writing=True)
    if out is None or out.startswith(("http://", "https://")):
        raise ValueError(f"give out= (a local path for index.json): shards {shard_urls[0]!r} have no local folder")
    if os.path.isdir(out):
        out = os.path.join(out, INDEX_NAME)
    if not os.path.isdir(os.path.dirname(os.path.abspath(out))):     # (before the pass, not after it)
        raise ValueError(f"out={out!r}: its folder {os.path.dirname(os.path.abspath(out))!r} does not exist")
    for url in shard_urls:                              # before the pass, not after it
        try:
            index_entry_url(url, os.path.dirname(os.path.abspath(out)))
        except UnsafeIndexEntry as e:
            raise ShardIndexError(f"index {out!r}: {e}") from None
    _check_not_dropping(out, shard_urls)
    if not class_names and not label_names:           # re-indexing shards labelled by name: as before
        earlier = _earlier_index(out)
        if earlier is not None and earlier.label_names:
            class_names, label_names = list(earlier.class_names), True
    if label_names and not class_names:
        raise ValueError("label_names (labels written as class names) needs class_names: the names in id order")
    if class_names and num_classes is not None and len(class_names) != num_classes:
        raise ValueError(f"class_names has {len(class_names)} names but num_classes={num_classes}: give one name "
                         f"per class, or only one of the two (value: {list(class_names)[:10]})")
    class_ids = {name: i for i, name in enumerate(class_names)} if label_names else None
    workers = max(1, min(workers or min(8, os.cpu_count() or 1), len(shard_urls)))
    scans: dict[str, ShardScan] = {}
    bar = tqdm(total=len(shard_urls), desc="indexing shards", unit="shard", disable=not progress)
    try:
        if workers == 1:
            for u in shard_urls:
                scans[u] = scan_shard(u, label_key, limits, on_error=on_error, class_ids=class_ids)
                bar.update(1)
        else:
            with _executor(workers, shard_urls) as pool:
                futures = {pool.submit(scan_shard, u, label_key, limits, on_error, class_ids): u for u in shard_urls}
                for f in as_completed(futures):
                    scans[futures[f]] = f.result()
                    bar.update(1)
    finally:
        bar.close()
    ordered = [scans[u] for u in shard_urls]
    _count_bad_images(ordered, stats)
    index = _write(out, ordered, num_classes, class_names, label_names)
    remove_passed_marks(passed, out)
    return index


def _count_bad_images(scans: list[ShardScan], stats: LoaderStats | None) -> None:
    """The images indexed past (``on_error="skip"``) into ``stats``, or a warning."""
    found = LoaderStats()
    for scan in scans:
        for reason, n in scan.bad_images.items():
            found.count_skip(reason, n, scan.bad_examples[reason])
    if not found.skipped:
        return
    if stats is not None:
        stats.merge(found.as_dict())
    else:
        warnings.warn(f"{bad_images_line(found)}; the loader raises or skips them by its on_error",
                      RuntimeWarning, stacklevel=3)


def _check_not_dropping(out: str, shard_urls: list[str]) -> None:
    """Refuse to replace an index that lists other shards still on disk: indexing the val shard
    of a folder that also holds train shards replaced the train index, and the train loader then
    found none of its shards listed (newcomer run). A command URL is the shard its file names."""
    keys = {shard_key(u) for u in shard_urls if is_local(u)}
    names = {command_shard_name(u) for u in shard_urls if not is_local(u)}
    kept = other_shards_listed(out, lambda u: shard_key(u) in keys or os.path.basename(u) in names)
    if kept:
        shown = ", ".join(os.path.basename(u) for u in kept[:3]) + (", ..." if len(kept) > 3 else "")
        raise ShardIndexError(f"{out!r} already lists {len(kept)} other shard(s) still there ({shown}), which this "
                              f"index would drop: index all the shards together, or write this index elsewhere "
                              f"(--out, or out=) and give the loader index=; remove the old index to drop them")


def bad_images_line(stats: LoaderStats) -> str:
    """One line on the images an index was built past: how many, by reason, and the first."""
    first = next(iter(stats.examples.values()))
    return (f"indexed past {sum(stats.skipped.values())} images the loader refuses {dict(stats.skipped)} "
            f"(their samples are counted with their labels); first: {first}")


def _write(out: str, scans: list[ShardScan], num_classes: int | None, class_names: list[str] | None,
           label_names: bool = False) -> ShardIndex:
    filled = [s for s in scans if s.count]
    if not filled:
        raise ShardIndexError(f"no samples in {len(scans)} shard(s), e.g. {scans[0].url!r}: nothing to index")
    labels_in = {s.label_key for s in filled}
    if len(labels_in) > 1:
        a = filled[0]
        b = next(s for s in filled if s.label_key != a.label_key)
        raise StreamError("mixed_label_key", f"shards disagree on label_key: {a.label_key!r} in {a.url!r}, "
                          f"{b.label_key!r} here; choose one with --label-key or label_key=", shard=b.url,
                          key=b.first_key, value=sorted(labels_in))
    image_exts = set().union(*(s.image_exts for s in filled))
    top = max(max(s.labels) for s in filled)
    if top >= MAX_NUM_CLASSES and num_classes is None and not class_names:     # (before a count per class is made)
        bad = next(s for s in filled if max(s.labels) == top)
        raise StreamError("label_out_of_range", f"label would make {top + 1} classes, over the {MAX_NUM_CLASSES:,} "
                          "an index may hold (MAX_NUM_CLASSES): a label that is no class id (a hash, an "
                          "image id)? --label-key chooses another field; --num-classes N refuses labels >= N",
                          shard=bad.url, key=bad.top_key, value=top)
    field = filled[0].label_key
    class_names = class_names or _names_already_at(out, num_classes, top, field) or \
        _names_beside_shards([s.url for s in scans], out, num_classes, top, field)
    nc = num_classes or (len(class_names) if class_names else top + 1)
    if top >= nc:
        bad = next(s for s in filled if max(s.labels) == top)
        source = f"num_classes={nc}" if num_classes else f"the {nc} class names given"   # (names kept: as many)
        raise StreamError("label_out_of_range", f"label is outside {source} (ids 0..{nc - 1})", shard=bad.url,
                          key=bad.top_key, value=top)
    shape = recorded_shape([(*size, c) for s in filled for size in s.sizes for c in s.channels])
    first = filled[0]
    index = ShardIndex([ShardInfo(s.url, s.count, tuple(s.labels.get(c, 0) for c in range(nc))) for s in scans],
                       nc, list(class_names) if class_names else [str(c) for c in range(nc)],
                       image_exts.pop() if len(image_exts) == 1 else None,
                       shape, out, first.label_key, label_names)
    if not class_names and num_classes is None:
        _warn_of_empty_classes(index)
    index.save(out)
    return index


def _warn_of_empty_classes(index: ShardIndex) -> None:
    """Ids below the largest label that no sample has: often one label outside the classes
    (a 7 among 0..3 makes 8 classes, 4..6 empty, and a balancer repeats the one 7)."""
    counts = index.class_counts
    empty = [c for c in range(len(counts)) if not counts[c]]
    if empty:
        top = len(counts) - 1
        shown = f"{empty[:8]}"[:-1] + (f", ... ({len(empty)} in all)]" if len(empty) > 8 else "]")
        warnings.warn(f"class ids {shown} have no sample below the largest label {top} ({counts[top]} sample(s)): "
                      f"if {top} is a label outside your classes, --num-classes N (num_classes=N) refuses the "
                      f"shard that holds it; if those classes are real, --class-names or --num-classes says "
                      f"so", RuntimeWarning, stacklevel=4)


def _earlier_index(out: str) -> ShardIndex | None:
    """The index already at ``out``, if one is there and loads."""
    if not os.path.isfile(out):
        return None
    try:
        return ShardIndex.load(out)
    except Exception:                                # unreadable: written anew, as without one
        return None


def _names_already_at(out: str, num_classes: int | None, top: int, field: str | None) -> list[str] | None:
    """The class names of an index already at ``out`` (``streamaug shards`` writes a folder's
    class names), kept when re-indexing the same label field if there are exactly as many as
    classes now; else None."""
    earlier = _earlier_index(out)
    if earlier is None or (earlier.label_key or "cls") != (field or "cls"):
        return None                                  # (another field: another taxonomy)
    names = earlier.class_names
    if not names or len(names) != (num_classes if num_classes is not None else top + 1):
        return None                                  # other classes now: the names no longer fit
    if all(n == str(i) for i, n in enumerate(names)):
        return None
    return list(names)


def _names_beside_shards(urls: list[str], out: str, num_classes: int | None, top: int,
                         field: str | None) -> list[str] | None:
    """Indexing into another file (``--out val.json``): the class names of the index.json beside
    the shards, when it lists some of these very shards (``streamaug shards`` wrote it)."""
    beside = default_index_path(urls)
    if beside is None or not is_local(beside) or os.path.abspath(beside) == os.path.abspath(out):
        return None
    earlier = _earlier_index(beside)
    if earlier is None or not {os.path.basename(s.url) for s in earlier.shards} & {os.path.basename(u) for u in urls}:
        return None
    return _names_already_at(beside, num_classes, top, field)


def summary(index: ShardIndex, seconds: float) -> str:
    shape = "x".join(map(str, index.image_shape)) if index.image_shape else "varies"
    counts = index.class_counts
    shown = f"{counts}" if len(counts) <= 32 else \
        f"{counts[:32]}"[:-1] + f", ...; {sum(1 for c in counts if not c)} with no sample]"   # (one line still)
    return (f"indexed {len(index.shards)} shards, {index.total} samples, {index.num_classes} classes "
            f"{shown}, {'.' + index.image_ext if index.image_ext else 'mixed'} images {shape}, "
            f"labels from "
            f"{index.label_key or 'cls'!r} in {seconds:.1f} s -> {index.source}")
