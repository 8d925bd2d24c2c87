"""The ``streamaug`` command: ``shards``, ``index``, ``demo``, ``preview`` and ``bench``.

It sits above every layer: it may import the loader, ops, samplers and the
benchmarks; nothing imports it.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import warnings

# Subcommands that live in other modules (imported only when used), and the packages they need
# beyond the required ones.
_ENTRY = {"demo": ("streamaug.benchmarks.demo", ("matplotlib",)),
          "preview": ("streamaug.benchmarks.preview", ("matplotlib",)),
          "bench": ("streamaug.benchmarks.run", ("matplotlib",))}
_SAYS = {"demo": "train a small CNN on imbalanced digits, or your --data, with and without balancing and "
                 "augmentation, and compare: about 4 minutes on 2 CPU cores",
         "preview": "draw a grid of what a loader over your shards yields: real, augmented, synthetic, mixed rows",
         "bench": "throughput side by side with the peers; --quick checks it runs, --gpu-check runs the GPU check"}


def _missing(packages: tuple[str, ...]) -> list[str]:
    missing = []
    for name in packages:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def _class_names(given: str | None) -> list[str] | None:
    """``--class-names``: a comma-separated list, or an index.json (or its folder) to take them from."""
    if given is None:
        return None
    if given.endswith(".json") or os.path.isdir(given):   # (a folder's missing index.json is named)
        from streamaug.loader import ShardIndex
        from streamaug.loader.shard_index import MissingIndex

        path = os.path.join(given, "index.json") if os.path.isdir(given) else given
        try:
            return list(ShardIndex.load(path).class_names)
        except MissingIndex:
            raise ValueError(f"--class-names {given!r}: {path!r} does not exist (give the index.json of the shards "
                             f"whose class ids to keep, its folder, or the names separated by commas)") from None
    return [n.strip() for n in given.split(",")]          # (write_shards refuses empty and repeated names)


def _source(given: str):
    """``streamaug shards SOURCE``: scikit-learn's digits for ``sklearn:digits``, and for ``digits``
    where no such file or folder exists; the arrays of an ``.npz``; else a path (an image folder)."""
    if given == "sklearn:digits" or (given == "digits" and not os.path.exists(given)):
        from streamaug.benchmarks.demo_data import load_digits_32

        return load_digits_32()
    if given == "digits":           # (red team s36: a folder of that name was replaced by scikit-learn's)
        print("streamaug shards: 'digits' is a folder here, so it is written as one (scikit-learn's digits: "
              "sklearn:digits)", file=sys.stderr)
    if given.endswith(".npz"):
        import numpy as np

        with np.load(given, allow_pickle=False) as z:
            if not {"images", "labels"} <= set(z.files):
                raise ValueError(f"{given!r} must hold arrays named 'images' (N, H, W[, C] uint8) and "
                                 f"'labels' (N ints); it holds {sorted(z.files)}")
            return (z["images"], z["labels"])
    return given


def _shards(args: argparse.Namespace) -> int:
    from streamaug.loader import write_shards

    try:
        index = write_shards(_source(args.source), args.out, prefix=args.prefix, image_format=args.format,
                             maxcount=args.maxcount, maxsize=args.maxsize, shuffle_seed=args.seed,
                             class_names=_class_names(args.class_names), on_error=args.on_error)
    except (ValueError, OSError) as e:           # (ShardIndexError is a ValueError)
        print(f"streamaug shards: {e}", file=sys.stderr)
        return 1
    print(f"wrote {len(index.shards)} shards, {index.total} samples, class counts {index.class_counts} "
          f"-> {index.source}")
    return 0


def _index(args: argparse.Namespace) -> int:
    import time

    from streamaug.loader import ShardIndexError, StreamError, build_index
    from streamaug.loader.decode_limits import DecodeLimits
    from streamaug.loader.errors import LoaderStats
    from streamaug.loader.index_builder import SKIPPABLE_IMAGE_ERRORS, bad_images_line, summary

    start, stats = time.perf_counter(), LoaderStats()
    try:
        given = {name: getattr(args, name) for name in ("max_image_pixels", "max_member_bytes")
                 if getattr(args, name) is not None}
        index = build_index(args.urls, args.out, label_key=args.label_key, num_classes=args.num_classes,
                            class_names=_class_names(args.class_names), label_names=args.label_names,
                            workers=args.workers, progress=not args.quiet, on_error=args.on_error, stats=stats,
                            limits=DecodeLimits(**given))
    except (StreamError, ShardIndexError, ValueError, OSError) as e:
        hint = "; --on-error skip indexes past images the loader refuses" \
            if isinstance(e, StreamError) and e.reason in SKIPPABLE_IMAGE_ERRORS else ""
        print(f"streamaug index: {e}{hint}", file=sys.stderr)
        return 1
    print(summary(index, time.perf_counter() - start))
    if stats.skipped:
        print(f"streamaug index: {bad_images_line(stats)}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in _ENTRY:
        module, needs = _ENTRY[argv[0]]
        missing = _missing(needs)
        if missing:
            print(f"streamaug {argv[0]} needs {', '.join(missing)}, which is not installed: "
                  f"pip install 'streamaug[bench]'", file=sys.stderr)
            return 2
        with _tidy_warnings(argv[0]):
            return importlib.import_module(module).main(argv[1:]) or 0
    parser = argparse.ArgumentParser(prog="streamaug", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in _ENTRY:
        sub.add_parser(name, help=f"{_SAYS[name]}; see `streamaug {name} --help`", add_help=False)
    p = sub.add_parser("shards", help="write WebDataset shards + index.json")
    p.add_argument("source", help="image folder (one subfolder per class), an .npz with arrays 'images' "
                   "(N, H, W[, C] uint8) and 'labels', or sklearn:digits (scikit-learn's digits; 'digits' too, where no "
                   "such folder exists)")
    p.add_argument("out", help="output folder")
    p.add_argument("--prefix", default="train",
                   help="shard names PREFIX-000000.tar ...; give each split its own folder, and its own "
                        "prefix (--prefix val) so its shards are told apart (default: train)")
    p.add_argument("--format", default="npy", choices=["npy", "png", "jpg", "webp"],
                   help="how images are stored: npy (raw, fastest to read; default), or encoded png, jpg, webp "
                        "(a file already in that format is stored as it is)")
    p.add_argument("--maxcount", type=int, default=1000, help="samples per shard, at most")
    p.add_argument("--maxsize", type=float, default=3e8, help="bytes per shard, at most (a shard closes at either)")
    p.add_argument("--seed", type=int, default=0, help="write order shuffle seed")
    p.add_argument("--class-names", default=None,
                   help="an image folder's classes in label order: names separated by commas, or an index.json "
                        "(or its folder) to take them from, e.g. the training shards' so a validation folder "
                        "keeps their ids (default: the subfolders, sorted)")
    p.add_argument("--on-error", default="raise", choices=["raise", "skip"],
                   help="skip: pass over image files that do not decode, named in one warning (default: stop "
                        "at the first, naming it)")
    p.set_defaults(run=_shards)
    p = sub.add_parser("index", help="write index.json for existing WebDataset shards (one pass, no image decoding)")
    p.add_argument("urls", nargs="+", help="shards: paths, brace patterns ('train-{000000..000099}.tar'), "
                   "http(s) URLs or pipe: commands")
    p.add_argument("--out", default=None, help="where to write index.json (default: beside the first shard)")
    p.add_argument("--label-key", default=None, help="label field: cls, label, txt or json:FIELD "
                   "(default: the first of cls, label, json:label, txt a sample has)")
    p.add_argument("--num-classes", type=int, default=None, help="default: the largest label + 1")
    p.add_argument("--class-names", default=None,
                   help="the class names in id order, comma-separated (or an index.json, or its folder, to take "
                        "them from)")
    p.add_argument("--label-names", action="store_true",
                   help="labels are written as class names (json {\"label\": \"cat\"}, a .txt 'cat'): each is "
                        "read as its place in --class-names, by name only")
    p.add_argument("--workers", type=int, default=None, help="shards read at once (default: CPUs, at most 8)")
    p.add_argument("--on-error", default="raise", choices=["raise", "skip"],
                   help="skip: index past images the loader refuses (format, header, pixel limit): counted, "
                        "their samples indexed with their labels; the loader raises or skips them by its on_error")
    p.add_argument("--max-image-pixels", type=int, default=None,
                   help="largest image (width x height) read, as StreamLoader(max_image_pixels=) (default 36M)")
    p.add_argument("--max-member-bytes", type=int, default=None,
                   help="largest tar member read, as StreamLoader(max_member_bytes=) (default 256 MiB)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_index)
    args = parser.parse_args(argv)
    with _tidy_warnings(args.command):
        return args.run(args)


@contextlib.contextmanager
def _tidy_warnings(command: str):
    """A user's terminal gets a warning's message, not our source line; Ctrl-C, one line and
    exit status 130, not a traceback."""
    shown = warnings.formatwarning
    warnings.formatwarning = lambda message, *rest, **kw: f"streamaug {command}: warning: {message}\n"
    try:
        yield
    except KeyboardInterrupt:
        print(f"streamaug {command}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        warnings.formatwarning = shown
