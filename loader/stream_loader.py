"""``StreamLoader``: a drop-in ``torch.utils.data.DataLoader`` over WebDataset shards.

>>> loader = StreamLoader("shards/train-{000000..000009}.tar", batch_size=256,
...                       num_workers=2, seed=0, device="cuda")     # doctest: +SKIP
>>> for epoch in range(3):                  # doctest: +SKIP
...     loader.set_epoch(epoch)
...     for images, labels in loader:      # uint8 NCHW on the device, int64 labels
...         ...

Plug-in stages run on whole batches, on the device (in the reading workers when
that is the CPU and no stage needs the whole stream: see ``worker_stages``):
``balance=`` (a :class:`streamaug.samplers.ClassBalancer`) adds synthetic rows,
``augment=`` (a :class:`streamaug.ops.Compose`) transforms images, and
``mixup=`` (``MixUp``/``CutMix``) turns labels into soft targets. Each must meet
its protocol in :mod:`streamaug.core.plugin` (checked here, when the loader is
built); each is seeded from the loader's seed unless it was given its own, and
reseeded for every batch from ``(seed, epoch, rank, batch)``, so the loader's
state is its position (see :mod:`streamaug.loader.loader_state`).

DataLoader semantics: every ``iter(loader)`` starts a full pass (only the first
pass after :meth:`StreamLoader.load_state_dict` resumes mid-epoch), of the next epoch
when the last pass was left part-way (unless ``set_epoch`` chose the epoch); one pass
runs at a time (a newer ``iter()`` supersedes a running pass, which then raises); the rank and
world size are read from ``torch.distributed`` when a pass starts (or ``len()``
is asked), so a loader built before ``init_process_group`` (as Lightning and
accelerate scripts do) still shards by rank.
"""
from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Iterator, Sequence

import torch

from streamaug.core.threads import IntraOpThreads, main_process_threads

from .batch import Batch
from .decode_limits import MAX_IMAGE_PIXELS, MAX_MEMBER_BYTES, READ_TIMEOUT, DecodeLimits
from .epoch_plan import EpochPlan
from .dataloader_arguments import (SHUFFLE_BUFFER, check_batch_size, check_num_workers, check_prefetch, check_seed,
                                   check_shuffle, check_topology, read_worker_options)
from .dataloader_surface import DataLoaderSurface
from .device_feed import delivery_device
from .errors import LoaderStats, check_policy
from .image_codec import check_label_key
from .loader_pass import release_pass, run_pass
from .loader_state import LoadedState, plugin_details, save_state
from .output_format import OutputFormat
from .pass_position import PassPosition
from .plugin_stage import claim_balancer, plugin_seeds
from .rank_binding import bind_topology
from .read_workers import stop_workers
from .sample_decoder import decoders_for
from .sample_lookup import ShardRowSource
from .index_lookup import find_index
from .shard_index import ShardIndex, check_num_classes
from .shard_urls import expand_urls, named_twice, refuse_missing_local
from .worker_stages import stages_in_workers_argument, worker_side
from .worker_stream import StreamSettings
from .unfinished_write import refuse_unfinished_write


def index_file_given(urls) -> str | None:
    """The path of an ``index.json`` given as ``urls=`` (alone, or as a list of one)."""
    if isinstance(urls, (list, tuple)) and len(urls) == 1:
        urls = urls[0]
    if isinstance(urls, (str, os.PathLike)) and os.fspath(urls).endswith(".json"):
        return os.fspath(urls)
    return None


class StreamLoader(DataLoaderSurface):
    """Stream ``(images, labels)`` batches from WebDataset shards. See the module docs.

    Args:
        urls: shard URLs: paths, brace patterns, ``pipe:`` commands or http(s), or the
            ``ShardIndex`` ``write_shards`` returns, or an ``index.json`` path (its shards, with it
            as ``index``).
        batch_size: samples per batch (real + synthetic); 1 by default, as DataLoader's.
        shuffle: shuffle-buffer size in samples (0 or ``False``: none, dataset order; 1 keeps
            the samples' order within shards, and shard order is shuffled per epoch whenever
            ``shuffle`` is truthy, 1 included). DataLoader's ``True`` means a buffer of 1000.
        num_workers: DataLoader worker processes for reading and decoding.
        seed: the one seed everything derives from (see ``seeding.derive_seed``).
        drop_last: drop each rank's last partial batch.
        device: where batches are delivered (default: CUDA if available, else CPU).
        pin_memory: pin host batches before the copy (default: when device is CUDA); with
            ``device="cpu"``, pin the batches handed out, as DataLoader does (where there is an accelerator).
        index: path/URL of ``index.json`` or a ``ShardIndex``; default ``index.json``
            beside the first shard, and without one, stream unindexed after one warning
            naming the ``streamaug index`` command that writes it; ``False``: no index.
        on_error: ``"raise"`` or ``"skip"``; skipped samples are counted in ``stats``.
        resize: ``(H, W)`` (or one int, a square) to resize every image; without it sizes must agree.
        jpeg_draft: with ``resize``, decode a JPEG at least twice that size at libjpeg's reduced
            DCT scale (1/2, 1/4, 1/8: PIL's ``draft``) before resizing, about 2x faster for photos;
            ``False`` decodes every JPEG in full first (the pixels a full decode + bilinear resize give).
        decode: ``"cpu"`` decodes in the workers; ``"dali"`` ships encoded jpg/png bytes and
            decodes each batch with DALI where it lives (nvJPEG on a GPU).
        balance, augment, mixup: plug-in stages (see the module docs).
        world_size, rank: override ``torch.distributed``'s (otherwise read when a pass starts).
        dtype, normalize, channels_last: output format, applied last as one fused step
            (see :class:`~streamaug.loader.output_format.OutputFormat`); default uint8 NCHW.
        num_classes: the number of classes (labels ``0..num_classes-1``). Without an index,
            needed for ``balance``/``mixup``; with one, it replaces the index's: classes the
            shards lack are added with no samples (a validation split that misses one), and a
            shard the index counts a larger label in is refused by name.
        label_key: the label field: ``"cls"``, ``"label"``, ``"txt"`` or ``"json:FIELD"``;
            default: the index's, else the first of those a sample has.
        channels: channels of every image (1, 3 or 4), converting grayscale/RGB/RGBA as needed;
            default: the index's image shape's, else 3.
        max_member_bytes, max_image_pixels: limits checked from tar and image headers before
            anything is read or decoded (defaults 256 MiB, 36 megapixels; see ``decode_limits``).
        read_timeout: seconds a ``pipe:`` or http shard may send nothing (default 600).
        stages_in_workers: run ``balance``/``augment``/``mixup`` in the reading workers:
            ``None`` (default) where it applies (CPU device, workers, a balancer that can;
            see ``worker_stages``), ``False`` never, ``True`` required. The batches are the
            same either way. ``augment_in_workers=`` is its deprecated former name.
        check_ranks: at the first pass on several ranks, refuse ranks whose epoch plans differ
            (``seed=args.seed + rank``, say) and warn of other differences, through the process
            group's store, waiting for no rank (see :mod:`~streamaug.loader.rank_agreement`).
        persistent_workers, multiprocessing_context, timeout, worker_init_fn, in_order:
            DataLoader's, for the reading workers (workers persist unless
            ``persistent_workers=False``). DataLoader's ``sampler``, ``batch_sampler``,
            ``collate_fn``, ``generator`` and ``pin_memory_device`` are refused with what to
            use instead. See :mod:`streamaug.loader.dataloader_arguments`.

    DataLoader surface (what Lightning and accelerate look for; see
    :mod:`streamaug.loader.dataloader_surface`): ``dataset``, ``sampler``,
    ``batch_sampler``, ``collate_fn``, ``batch_size``, ``drop_last``. ``num_workers``,
    ``prefetch_factor``, ``pin_memory`` and ``persistent_workers`` describe the loop
    the caller sees, which yields finished batches in the calling process: ``0``,
    ``None``, ``False``, ``False``, so that a framework rebuilding a DataLoader over
    ``dataset`` starts no workers of its own. The loader's own reading and decoding
    processes are ``read_workers`` (the ``num_workers=`` argument).
    """

    def __init__(self, urls: str | Sequence[str], batch_size: int = 1, shuffle: int | bool = SHUFFLE_BUFFER, *,
                 num_workers: int = 0, seed: int = 0, drop_last: bool = False,
                 device: str | torch.device | None = None, pin_memory: bool | None = None,
                 index: str | ShardIndex | None = None, on_error: str = "raise",
                 resize: tuple[int, int] | int | None = None, balance=None, augment=None, mixup=None,
                 world_size: int | None = None, rank: int | None = None, prefetch_factor: int | None = None,
                 decode: str = "cpu", num_classes: int | None = None, label_key: str | None = None,
                 channels: int | None = None, dtype: torch.dtype = torch.uint8, normalize=None,
                 channels_last: bool = False,
                 max_member_bytes: int = MAX_MEMBER_BYTES, max_image_pixels: int = MAX_IMAGE_PIXELS,
                 read_timeout: float = READ_TIMEOUT, stages_in_workers: bool | None = None,
                 augment_in_workers: bool | None = None, persistent_workers: bool | None = None,
                 multiprocessing_context=None, timeout: float = 0, worker_init_fn=None, in_order: bool = True,
                 jpeg_draft: bool = True, check_ranks: bool = True, **dataloader_only):
        batch_size, num_workers = check_batch_size(batch_size), check_num_workers(num_workers)
        num_classes, label_key = check_num_classes(num_classes), check_label_key(label_key)
        self.read_options = read_worker_options(num_workers, persistent_workers, multiprocessing_context, timeout,
                                                worker_init_fn, in_order, **dataloader_only)
        limits = DecodeLimits(max_member_bytes, max_image_pixels, read_timeout)     # (checks them)
        listed = index_file_given(urls)
        if listed is not None:                # an index.json: its shards, and it as the index (red team s36)
            if index not in (None, False):
                raise ValueError(f"urls={listed!r} is an index file, and index= is given too: pass the "
                                 f"shards as urls= and their index as index=, or the index file alone")
            urls = ShardIndex.load(listed)
            urls = urls.urls if index is False else urls
        if isinstance(urls, ShardIndex):      # what write_shards returns: its shards, and it as the index
            urls, index = urls.urls, urls if index is None else index
        if isinstance(urls, Iterator):        # (a generator, Path.glob(): read once, named again in messages)
            urls = list(urls)
        self.urls = expand_urls(urls)
        twice = named_twice(self.urls)
        if twice:                             # (on purpose, to weight a source; by mistake, overlapping patterns)
            warnings.warn(f"{twice}: it is read twice per epoch, each of its samples counted twice. To weight "
                          f"classes, use balance=", UserWarning, stacklevel=2)
        if check_policy(on_error) == "raise":
            refuse_missing_local(self.urls)   # now, not at the first batch after an index warning
        refuse_unfinished_write(self.urls)    # a write stopped part-way left them (red team s36)
        self.index = find_index(self.urls, index, urls, (balance is not None or mixup is not None) and not num_classes,
                                label_key, num_classes)
        if self.index is None and (balance is not None or mixup is not None) and not num_classes:
            raise ValueError("index=False with balance= or mixup= needs num_classes=")
        if self.index is not None and num_classes is not None:     # classes the shards lack; labels they must not hold
            self.index = self.index.with_num_classes(num_classes)
        self.num_classes = self.index.num_classes if self.index is not None else num_classes
        if self.index is not None and label_key is not None and self.index.label_key not in (None, label_key):
            # (an index that names no field, hand-written or from before they all did, is taken at its word)
            raise ValueError(f"label_key={label_key!r}, but the index {self.index.source!r} counted classes from "
                             f"{self.index.label_key!r}: its per-class counts (the epoch plan, the "
                             f"balancer's targets) are of another field. Index the shards with --label-key "
                             f"{label_key} (a file of its own: --out), or leave label_key= out")
        self.batch_size, self.read_workers, self.seed = batch_size, num_workers, check_seed(seed)
        if drop_last not in (True, False):
            raise ValueError(f"drop_last must be True or False, got {drop_last!r}")
        self.shuffle, self.drop_last = check_shuffle(shuffle), bool(drop_last)
        self.on_error = check_policy(on_error)
        self.device = delivery_device(device)
        self._pin = self.device.type == "cuda" if pin_memory is None else pin_memory
        self._world_override, self._rank_override = check_topology(world_size, rank)
        self._prefetch = check_prefetch(prefetch_factor, num_workers)
        self.output = OutputFormat(dtype, normalize, channels_last)
        self.decode = decode
        self.decoder, self.device_decoder = decoders_for(self.index, self.num_classes, decode, resize, channels,
                                                         label_key, limits, self.device, jpeg_draft)
        channels = self.decoder.channels
        self.stats = LoaderStats()
        self._stage_threads = IntraOpThreads(main_process_threads(num_workers))   # see core/threads.py
        self.balance, self.augment, self.mixup = balance, augment, mixup
        self._rows = ShardRowSource(self.urls, self.index, self.decoder, self.device)
        self._plugin_seeds = plugin_seeds({"balance": balance, "augment": augment, "mixup": mixup}, self.seed,
                                          self.num_classes)
        if balance is not None:
            claim_balancer(balance, self)
        self.plugin_details = plugin_details(self)    # (for the state's fingerprint, as built)
        stages_in_workers = stages_in_workers_argument(stages_in_workers, augment_in_workers)
        self.stages_in_workers = worker_side(stages_in_workers, self.device, num_workers, decode,
                                             balance, augment, mixup, indexed=self.index is not None,
                                             start_method=self.read_options.start_method)
        self._settings = StreamSettings(self.shuffle, self.seed, self.on_error, self.decoder)
        self._topology = None
        self._dataloader = None
        self._stop_workers = None         # stops the reading workers when the loader is freed (read_workers)
        self.position = PassPosition()    # epoch, batches done, the current pass (see pass_position)
        self._marker = None               # the current pass's registration with accelerate (accelerate_pass)
        self._pass_chain = None           # (serial, weakref) of the latest pass's stages (loader_pass.release_pass)
        self._epoch_start = None          # no index, with a balancer: (balancer state, stats) as the pass began
        self._loaded = LoadedState()      # the state load_state_dict took, until a pass starts from it
        if check_ranks not in (True, False):
            raise ValueError(f"check_ranks must be True or False, got {check_ranks!r}")
        self.check_ranks = bool(check_ranks)
        self._agreement = (None, None, None)     # (pid, topology the ranks agreed in, store key): rank_agreement
        self._ensure_topology()           # validates rank and the balancer's targets now, not at the first batch
        self.output.check_channels(channels)

    @property
    def augment_in_workers(self) -> bool:
        warnings.warn("StreamLoader.augment_in_workers is deprecated; use stages_in_workers", DeprecationWarning,
                      stacklevel=2)
        return self.stages_in_workers

    def _ensure_topology(self) -> None:
        """Read world size and rank (overrides win); on a change, re-plan and rebind (``rank_binding``)."""
        bind_topology(self)

    # ------------------------------------------------------------ planning
    def plan(self, epoch: int | None = None) -> EpochPlan | None:
        """The epoch's plan (``None`` without an index: nothing is known up front)."""
        if self.index is None:
            return None
        self._ensure_topology()
        return self._stream.plan(self.epoch if epoch is None else epoch)

    def __len__(self) -> int:
        if self.index is None:
            raise TypeError("StreamLoader without an index has no len(): the number of samples is unknown "
                            "(write index.json beside the shards with `streamaug index`)")
        return self.plan().num_batches

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch (shard order, buffer and plug-in seeds). Once called,
        epochs no longer advance by themselves, as with ``DistributedSampler``. A pass of another
        epoch that goes on after it keeps its own epoch until it ends (see ``pass_position``)."""
        self.position.set_epoch(epoch)

    @property
    def epoch(self) -> int:
        """The epoch the next (or running) pass reads."""
        return self.position.epoch

    @epoch.setter
    def epoch(self, epoch: int) -> None:       # it was a plain attribute before pass_position
        self.position.epoch = int(epoch)
        self.position.moves += 1

    # ------------------------------------------------------------ iteration
    def __iter__(self) -> Iterator[Batch]:
        """A full pass; the first pass after ``load_state_dict`` resumes where the state was taken.
        After a pass left part-way (its iterator closed or dropped), the next pass is the next
        epoch's, as each ``iter()`` of a shuffled DataLoader is a new shuffle (unless ``set_epoch``
        chose the epoch); ``state_dict()`` still holds where it was left, as torchdata's
        ``StatefulDataLoader`` does, so a job that stops there resumes there. A pass still open
        (its iterator alive, part-way) counts as left."""
        return self._new_pass()

    def _new_pass(self) -> Iterator[Batch]:
        # (a generator: the pass begins at the first next(), so an iterator made and never used,
        # as torch's are harmless, leaves the running pass and the position as they were)
        self.position.new_iter()
        yield from self.iter_from(None, left_ends_epoch=True)

    def iter_from(self, start: int | None, *, left_ends_epoch: bool = False) -> Iterator[Batch]:
        """The current epoch's batches from batch ``start`` (``None``: 0, or the resume point
        after ``load_state_dict``). Batches before ``start`` are passed over undecoded. The epoch
        advances as its last batch is handed on; with ``left_ends_epoch``, a pass left before it
        makes the next ``iter()`` start the next epoch."""
        yield from run_pass(self, start, left_ends_epoch)

    @property
    def _rebatches(self) -> bool:
        """No index and a balancer in this process: balanced rows are cut again to ``batch_size``."""
        return self.index is None and self.balance is not None and not self.stages_in_workers

    def scan_rows(self, wanted):
        """Samples in index order whose label satisfies ``wanted`` (see ``ShardRowSource.scan``)."""
        return self._rows.scan(wanted)

    def fetch_rows(self, pairs: list[tuple[str, str]], transform=None) -> dict[tuple[str, str], torch.Tensor]:
        """Specific samples ``(shard url, key)`` as rows on the device (see ``ShardRowSource.fetch``)."""
        return self._rows.fetch(pairs, transform)

    def close(self) -> None:
        """Stop the persistent DataLoader workers now (they also stop when the loader is freed).
        A pass still running raises at its next batch; the next ``iter()`` starts new workers."""
        self.position.close_current()
        release_pass(self)                # (what a stopped pass holds goes now, not when its iterator does)
        self.stop_reading_workers()

    def stop_reading_workers(self) -> None:
        """Stop the reading workers, leaving the passes alone (the next pass starts new ones)."""
        dl, self._dataloader = self._dataloader, None
        stop, self._stop_workers = self._stop_workers, None
        if stop is not None:
            stop()                        # (a weakref.finalize of stop_workers(dl): runs once, then detached)
        elif dl is not None:
            stop_workers(dl)

    def __getstate__(self) -> dict:
        """A pickle or deep copy (Lightning's ``ddp_spawn``) leaves out the running reading
        workers and the current pass's registration: the copy starts its own when it iterates."""
        state = dict(self.__dict__)
        state["_dataloader"], state["_marker"], state["_stop_workers"] = None, None, None
        state["_pass_chain"] = None
        return state

    def __copy__(self) -> "StreamLoader":
        """A copy is a deep copy: a shallow one shared the original's stream and position, and
        swapped out the tensor its running workers read each epoch from, so the original's
        later epochs silently repeated its first (red team s35)."""
        return copy.deepcopy(self)

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.position.forget_passes()
        # the workers read each pass's (epoch, resume point) from this shared tensor; a copy
        # arrives private, and the copy's own workers would never see a new epoch
        self._stream.control = self._stream.control.clone().share_memory_()

    def __enter__(self) -> "StreamLoader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ resume
    def state_dict(self) -> dict:
        """The position ``(epoch, batches done)`` plus a fingerprint of what it depends on:
        small, JSON-safe, and rank-portable with an index (see :mod:`~streamaug.loader.loader_state`)."""
        self._ensure_topology()
        held = self._loaded.saved(self)
        return held if held is not None else save_state(self)

    def load_state_dict(self, sd: dict) -> None:
        """Resume from ``sd`` at the next ``iter()``. ``{}`` does nothing (torchdata's convention).
        Another rank's state is accepted (the position is the same on every rank); a state
        from a loader over other data or with another configuration is refused."""
        if sd == {}:
            return
        self._loaded.clear()              # (an earlier state is not checked again: this one replaces it)
        self._ensure_topology()
        self._loaded.load(self, sd)

