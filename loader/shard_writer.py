"""Write WebDataset shards plus their index from an image folder or arrays.

>>> import numpy as np, tempfile
>>> images = np.zeros((10, 8, 8, 3), np.uint8); labels = np.arange(10) % 2
>>> index = write_shards((images, labels), tempfile.mkdtemp(), maxcount=4, progress=False)
>>> [s.count for s in index.shards], index.class_counts
([4, 4, 2], [5, 5])
"""
from __future__ import annotations

import contextlib
import os
import re
import tarfile
import warnings

from typing import Union

import numpy as np
import torch
import webdataset as wds
from tqdm.auto import tqdm

from .atomic_file import open_partial, put_in_place, stopped_partials
from .errors import check_policy
from .image_codec import IMAGE_EXTS, encode_image
from .image_folder import FOLDER_EXTS, folder_image, folder_items, path_part
from .shard_digest import SHARD_MTIME, DigestingFile
from .shard_index import (INDEX_NAME, MAX_INDEX_BYTES, MAX_NUM_CLASSES, ShardIndex, ShardInfo, check_class_names,
                          check_num_classes, other_shards_listed, recorded_shape)
from .write_marker import shard_prefix, write_marked

ArraySource = tuple[np.ndarray, np.ndarray]
Source = Union[str, ArraySource]


class UstarShardWriter(wds.ShardWriter):
    """``ShardWriter`` that writes plain USTAR members, each shard whole or not at all.

    webdataset's ``TarWriter`` picks USTAR but never passes it to
    ``tarfile.open``, and its float ``mtime`` then forces a PAX header per
    member, which doubles the header parsing when the shard is read back
    (measured: about 40% of read time at 32×32 npy). Members carry the fixed
    :data:`~.shard_digest.SHARD_MTIME`, not the clock, so the same samples make the same bytes.

    Each shard is written to a partial file of its own and renamed into place when it is
    complete (:mod:`.atomic_file`), so ranks that write the same shards at once never read
    a half-written one; after an error the shard being written is removed, not left cut short.
    Its bytes are hashed as they are written: ``before_place(name, digest)`` is called before
    the rename, and ``digests`` maps each shard placed to its digest (:mod:`.shard_digest`).
    """

    def __init__(self, pattern: str, before_place=None, **kw):
        if "opener" in kw:
            raise TypeError("UstarShardWriter opens each shard's partial file itself; it takes no opener=")
        self._partial: tuple | None = None            # (file, partial path) of the shard being written
        self.before_place = before_place              # called with a shard's name and digest before its rename
        self.digests: dict[str, str] = {}             # shard name -> digest, of the shards put in place
        super().__init__(pattern, opener=self._open_partial, mtime=SHARD_MTIME, **kw)

    def _open_partial(self, fname: str):
        f, partial = open_partial(fname)
        self._partial = (DigestingFile(f), partial)
        return self._partial[0]

    def next_stream(self):
        super().next_stream()
        self.tarstream.tarstream.format = tarfile.USTAR_FORMAT

    def finish(self):
        """Complete the shard being written and rename it onto its name. If that fails, the
        partial file is left for ``__exit__`` to remove."""
        if self.tarstream is not None:
            self.tarstream.close()                     # the end-of-archive blocks
            f, partial = self._partial
            f.close()
            self.tarstream = self._partial = None
            if self.before_place is not None:
                self.before_place(self.fname, f.hexdigest())
            put_in_place(partial, self.fname)         # (removes it, if that fails)
            self.digests[self.fname] = f.hexdigest()
            if callable(self.post):                   # ShardWriter's post= hook, as it calls it
                self.post(self.fname)

    def _discard(self) -> None:
        """Remove the partial file of the shard being written (an error cut it short)."""
        if self._partial is None:
            return
        f, partial = self._partial
        try:
            if self.tarstream is not None:
                self.tarstream.close()
            f.close()
        except OSError:
            pass                                       # (a full disk, say: the error being raised says so)
        finally:
            self.tarstream = self._partial = None
            with contextlib.suppress(OSError):
                os.unlink(partial)

    def __exit__(self, exc_type, *rest):
        try:
            if exc_type is None:
                self.close()                           # the last shard, completed and put in place
                return
        except BaseException:
            self._discard()
            raise
        self._discard()
        self.close()


class MixedImageSizes(RuntimeWarning):
    """``write_shards`` wrote images of several sizes: a loader over them needs ``resize=``."""


def _check_arrays(images: np.ndarray, labels: np.ndarray, was_tensor: bool = False) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError("images must be a uint8 array of shape (N, H, W, C), got "
                         f"{getattr(images, 'dtype', type(images).__name__)} "
                         f"{getattr(images, 'shape', '')}")
    if images.shape[3] not in (1, 3, 4):
        nchw = images.shape[1] in (1, 3, 4)
        raise ValueError(f"images must be (N, H, W, C) with C 1, 3 or 4, got shape {images.shape}"
                         + (": that is (N, C, H, W), as torch holds images; pass images."
                            + ("permute" if was_tensor else "transpose") + "(0, 2, 3, 1)" if nchw else ""))
    n, h, w, c = images.shape
    if h in (1, 3, 4) and w == c != h:    # (N, 3, 4, 4): 3×4 RGBA images, or (N, C, H, W) 4×4 RGB ones?
        warnings.warn(f"images of shape {images.shape} are read as (N, H, W, C): {h}×{w} pixels of {c} channels; "
                      f"if they are (N, C, H, W), {h}-channel {w}×{c} images as torch holds them, pass images."
                      + ("permute" if was_tensor else "transpose") + "(0, 2, 3, 1)", UserWarning, stacklevel=3)
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"labels must be 1-D with len(images)={len(images)} entries, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        words = labels.dtype.kind in "UOS"
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}" + (
            f" (e.g. {str(labels[0])!r}): labels written as class names are ids first, names second: "
            "names, ids = np.unique(labels, return_inverse=True), then write_shards((images, ids), ..., "
            "class_names=list(names))" if words and len(labels) else ""))
    if len(labels) and labels.min() < 0:
        raise ValueError(f"labels must be >= 0, got {int(labels.min())}")

def write_shards(source: Source, out_dir: str, *, prefix: str = "train", image_format: str = "npy",
                 maxcount: int = 1000, maxsize: float = 3e8, class_names: list[str] | None = None,
                 num_classes: int | None = None, shuffle_seed: int | None = 0, jpeg_quality: int = 95,
                 progress: bool = True, on_error: str = "raise") -> ShardIndex:
    """Write ``prefix-%06d.tar`` shards and ``index.json`` into ``out_dir``.

    ``source`` is an ImageFolder-style directory (one subfolder per class, sorted by name, or
    labelled by their place in ``class_names`` when given, so a validation folder keeps the
    training shards' ids: ``class_names=ShardIndex.load(train).class_names``), an
    ``(images, labels)`` pair of a uint8 ``(N, H, W, C)`` (grayscale: ``(N, H, W)``) array or tensor and integer labels
    (the string ``"digits"`` is deprecated). Samples are written in a seeded random order
    (``shuffle_seed=None`` keeps the source order) so shards mix classes.
    Each sample is ``{key}.{image_format}`` plus ``{key}.cls``; a folder's keys end with the
    file's path (``train_00000033_square_img_007``), so an error naming a key names the file.
    ``on_error="skip"`` passes over folder images that do not decode, with one warning naming
    them, instead of stopping at the first.
    """
    if image_format not in IMAGE_EXTS:
        raise ValueError(f"image_format must be one of {IMAGE_EXTS}, got {image_format!r}")
    if maxcount < 1:
        raise ValueError(f"maxcount must be >= 1, got {maxcount}")
    if not isinstance(prefix, str) or not re.fullmatch(r"[\w-]+", prefix) or len(prefix.encode()) > 60:
        raise ValueError(f"prefix must be letters, digits, '_' or '-', at most 60 bytes (a dot would end the "
                         f"sample keys that start with it; a tar name holds 100 bytes), got {prefix!r}")
    skip = check_policy(on_error) == "skip"
    class_names, num_classes = check_class_names(class_names), check_num_classes(num_classes)
    out_dir = os.path.expanduser(os.fspath(out_dir))
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"out_dir {out_dir!r} is a file, not a folder")
    kept = other_shards_listed(os.path.join(out_dir, INDEX_NAME),
                               lambda u: _written_name(prefix, os.path.basename(u)))
    if kept:
        raise ValueError(f"{os.path.join(out_dir, INDEX_NAME)!r} lists {len(kept)} shard(s) of another split still "
                         f"there ({', '.join(os.path.basename(u) for u in kept[:3])}), which this write would drop "
                         f"from it: write each split into a folder of its own")
    folder: list[tuple[str, int]] | None = None
    if isinstance(source, str) and source == "digits" and not os.path.exists(source):   # (a folder of that name wins)
        warnings.warn("write_shards('digits') is deprecated: pass the arrays, "
                      "streamaug.benchmarks.demo_data.load_digits_32()", DeprecationWarning, stacklevel=2)
        from streamaug.benchmarks.demo_data import load_digits_32

        images, labels = load_digits_32()
    elif isinstance(source, (str, os.PathLike)):
        if not os.path.isdir(source):
            raise ValueError(f"source {str(source)!r} is not a directory, an (images, labels) pair or 'digits'")
        names = None if class_names is None else list(class_names)
        folder, class_names, passed_over = folder_items(str(source), names)
        if passed_over:
            warnings.warn(f"image folder {str(source)!r}: passed over {len(passed_over)} entries, hidden (.*), "
                          f"not {'/'.join(FOLDER_EXTS)} images, or files beside the class folders "
                          f"({', '.join(passed_over[:8])}{', ...' if len(passed_over) > 8 else ''})",
                          RuntimeWarning, stacklevel=2)
        labels = np.array([c for _, c in folder], np.int64)
        images = None
    elif isinstance(source, tuple) and len(source) == 2:
        was_tensor = isinstance(source[0], torch.Tensor)
        images, labels = (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v for v in source)
        if isinstance(images, np.ndarray) and images.ndim == 3 and images.dtype == np.uint8:
            images = images[..., None]          # (N, H, W) grayscale: one channel
        _check_arrays(images, labels, was_tensor)
        labels = np.asarray(labels).astype(np.int64)
    else:
        raise ValueError(f"source must be a folder path, an (images, labels) pair or 'digits', got {type(source).__name__}")

    n = len(labels)
    if n == 0:
        raise ValueError("source has no samples")
    nc = num_classes or (len(class_names) if class_names else int(labels.max()) + 1)
    if nc > MAX_NUM_CLASSES:                   # (before a count per class is made: red team s36, 24 GB at 1e9)
        at = int(np.argmax(labels))
        raise ValueError(f"label {int(labels[at])} (sample {at}) would make {nc:,} classes, over the "
                         f"{MAX_NUM_CLASSES:,} an index may hold (MAX_NUM_CLASSES): a label that is no class id "
                         f"(a hash, an image id)? Pass num_classes=N to refuse labels >= N"
                         if num_classes is None and not class_names else
                         f"{nc:,} classes, over the {MAX_NUM_CLASSES:,} an index may hold (MAX_NUM_CLASSES)")
    least = 6 * nc * -(-n // maxcount)        # bytes: a count per class per shard, one per line in index.json
    if least > MAX_INDEX_BYTES:               # (after every shard was written, it was refused when read)
        raise ValueError(f"{nc:,} classes in {-(-n // maxcount):,} or more shards of maxcount={maxcount} make an "
                         f"index.json of at least {least / 2**20:.0f} MiB (a count per class per shard), over the "
                         f"{MAX_INDEX_BYTES / 2**20:.0f} MiB the loader reads (MAX_INDEX_BYTES): write fewer, larger "
                         f"shards (maxcount=, streamaug shards --maxcount)")
    if labels.max() >= nc:
        raise ValueError(f"label {int(labels.max())} is out of range for num_classes={nc}")
    class_names = list(class_names) if class_names else [str(i) for i in range(nc)]
    order = np.arange(n) if shuffle_seed is None else np.random.default_rng(shuffle_seed).permutation(n)

    os.makedirs(out_dir, exist_ok=True)
    pattern = os.path.join(os.path.abspath(out_dir), f"{prefix}-%06d.tar")
    earlier = set(_shards_in(out_dir, prefix))
    with write_marked(out_dir, prefix, n) as mark:      # until index.json is in place (see write_marker)
        counts: dict[str, list[int]] = {}
        shapes: set[tuple[int, ...]] = set()
        undecodable: list[str] = []
        with UstarShardWriter(pattern, mark.before_place, maxcount=maxcount, maxsize=maxsize, verbose=0,
                              post=mark.shard_placed) as sink:
            for i in tqdm(order, desc=f"writing {prefix} shards", unit="img", disable=not progress):
                label, key = int(labels[i]), f"{prefix}_{int(i):08d}"
                if folder is not None:
                    try:
                        data, shape = folder_image(folder[i][0], image_format, jpeg_quality)
                    except (ValueError, OSError) as e:      # (OSError: unreadable, a dangling link)
                        if not skip:
                            raise ValueError(f"{e}; on_error='skip' (streamaug shards --on-error skip) passes over "
                                             f"images that do not decode") from None
                        undecodable.append(os.path.relpath(folder[i][0], str(source)))
                        continue
                    room = 98 - len(key.encode()) - len(image_format)   # a USTAR name holds 100 bytes
                    key += "_" + path_part(folder[i][0], str(source))[-room:] if room > 0 else ""
                else:
                    data, shape = encode_image(images[i], image_format, jpeg_quality), images[i].shape
                shapes.add(tuple(shape))
                sink.write({"__key__": key, image_format: data, "cls": str(label).encode()})
                counts.setdefault(sink.fname, [0] * nc)[label] += 1
            if not counts:                         # (inside: the empty shard is discarded, none replaced)
                raise ValueError(f"image folder {str(source)!r}: no image decodes ({len(undecodable)} passed over)")
        if undecodable:
            undecodable.sort()
            emptied = [class_names[c] for c in sorted(set(labels.tolist()))
                       if not any(cc[c] for cc in counts.values())]
            warnings.warn(f"image folder {str(source)!r}: passed over {len(undecodable)} image(s) that do not decode "
                          f"({', '.join(undecodable[:3])}{', ...' if len(undecodable) > 3 else ''})"
                          + (f"; class(es) {emptied} have no image left" if emptied else ""),
                          RuntimeWarning, stacklevel=2)
        sizes = sorted({s[:2] for s in shapes})
        if len(sizes) > 1:                   # (the loader refused them only when it read them: newcomer s35)
            shown = ", ".join(f"{h}×{w}" for h, w in sizes[:3]) + (", ..." if len(sizes) > 3 else "")
            warnings.warn(f"the {sum(map(sum, counts.values()))} images written to {out_dir!r} have {len(sizes)} "
                          f"sizes ({shown}); a batch holds one size, so read them with StreamLoader(..., "
                          "resize=(H, W)), or one int for squares", MixedImageSizes, stacklevel=2)
        index = ShardIndex([ShardInfo(url, sum(cc), tuple(cc), sink.digests[url]) for url, cc in counts.items()],
                           nc, class_names, image_format, recorded_shape(shapes),
                           os.path.join(out_dir, INDEX_NAME), "cls")
        index.save(os.path.join(out_dir, INDEX_NAME))
    stale = sorted(earlier - {os.path.basename(u) for u in counts})
    if stale:
        warnings.warn(f"{out_dir!r} still holds {len(stale)} {prefix}-*.tar shard(s) from an earlier write that "
                      f"the new index.json does not list ({', '.join(stale[:3])}{', ...' if len(stale) > 3 else ''}); "
                      f"remove them, or a brace pattern over them will be refused", RuntimeWarning, stacklevel=2)
    _warn_of_stopped_writes(out_dir, prefix)
    return index


def _warn_of_stopped_writes(out_dir: str, prefix: str) -> None:
    """Name the partial files a killed write left in ``out_dir`` (hidden, so nothing else shows them)."""
    left = stopped_partials(out_dir, lambda name: _written_name(prefix, name) or name == INDEX_NAME)
    if left:
        size = sum(n for _, n in left) / 1e6
        warnings.warn(f"{out_dir!r} holds {len(left)} hidden partial file(s) ({size:.1f} MB) left by a write of "
                      f"{prefix}-*.tar shards that was killed before it finished ({', '.join(n for n, _ in left[:3])}"
                      f"{', ...' if len(left) > 3 else ''}); nothing reads them: remove them",
                      RuntimeWarning, stacklevel=3)


def _shards_in(out_dir: str, prefix: str) -> list[str]:
    """``{prefix}-NNNNNN.tar`` files already in ``out_dir``."""
    return [e.name for e in os.scandir(out_dir) if e.is_file() and _written_name(prefix, e.name)]


def _written_name(prefix: str, name: str) -> bool:
    """Whether ``name`` is a shard file name ``write_shards`` gives with ``prefix``."""
    return shard_prefix(name) == prefix

