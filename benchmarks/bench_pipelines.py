"""The pipelines ``streamaug bench`` compares, over the same shards, ops and batch size.

Ops everywhere: horizontal flip p=.5, rotate ±30°, shear ±15°, Gaussian noise σ=.05
(of the value range), then MixUp α=.2 on the batch. Each builder returns an
iterable of ``(images, targets)`` batches on ``device``.

``+smote`` pipelines balance with ``ClassBalancer("auto", SMOTE(neighbour_space="thumbnail"))``:
neighbours found among 8×8 thumbnails, new images interpolated at full resolution (the
configuration the README recommends for images; pixel-space kNN costs 4.5× more at 224²,
``benchmarks/results/smote_neighbour_space_cpu.json``).
"""
from __future__ import annotations

import numpy as np
import torch

from streamaug.loader import ShardIndex, StreamLoader
from streamaug.ops import Compose, Flip, GaussianNoise, MixUp, Rotate, Shear
from streamaug.samplers import SMOTE, ClassBalancer

PIPELINES = ("streamaug-kornia", "streamaug-opencv", "streamaug-dali", "streamaug-kornia+smote",
             "streamaug-opencv+smote", "dataloader-albumentations", "dali-only", "webdataset-kornia-unfused")
# streamaug with encoded images decoded where the batch lives (nvJPEG on a GPU): jpg data only
# streamaug with its stages (balance, augment, mixup) kept in the main process
# (``stages_in_workers=False``): run on request, to show what running them in the workers buys
MAIN_SIDE = ("streamaug-kornia+main", "streamaug-opencv+main", "streamaug-opencv+smote+main")
SMOTE_SPACE = "thumbnail"
DEVICE_DECODE = ("streamaug-kornia+nvjpeg", "streamaug-dali+nvjpeg", "streamaug-kornia+nvjpeg+smote")


def ops(backend: str) -> Compose:
    return Compose([Flip(p=0.5), Rotate(30), Shear(x=15, y=15), GaussianNoise(0.05)], backend=backend)


def streamaug(index: ShardIndex, batch: int, workers: int, device, backend="kornia", balance=False,
              decode="cpu", in_workers=None):
    return StreamLoader(index.urls, batch_size=batch, num_workers=workers, seed=0, device=device, index=index,
                        shuffle=1000, augment=ops(backend), mixup=MixUp(0.2), decode=decode,
                        stages_in_workers=in_workers,
                        balance=ClassBalancer("auto", SMOTE(neighbour_space=SMOTE_SPACE)) if balance else None)


class MixedBatches:
    """Wraps a batch iterable: moves to ``device``, applies ``transform`` then MixUp α=.2."""

    def __init__(self, batches, device, num_classes: int, transform=None):
        self.batches, self.device, self.num_classes = batches, device, num_classes
        self.transform, self.mix = transform, MixUp(0.2, seed=0)

    def __iter__(self):
        for images, labels in self.batches:
            images = images.to(self.device, non_blocking=True)
            # labels stay on the host, as the loader passes them: MixUp checks their range (a
            # read back from a CUDA tensor, one sync a batch) and moves the targets to the images'
            if self.transform is not None:
                images = self.transform(images)
            yield self.mix(images, labels, num_classes=self.num_classes)


def peer_ext(index: ShardIndex) -> str:
    """The one image field the peer pipelines read: the bench data's ``npy`` or ``jpg``."""
    if index.image_ext not in ("npy", "jpg"):
        raise ValueError(f"index {index.source!r}: the peer pipelines read .npy or .jpg shards of one image type, "
                         f"not {index.image_ext or 'a mix of types'!r} (streamaug bench generates its own data)")
    return index.image_ext


def _webdataset(index: ShardIndex, sample_transform=None):
    import webdataset as wds

    ext = peer_ext(index)
    decode = "rgb8" if ext == "jpg" else None
    ds = wds.WebDataset(index.urls, shardshuffle=False, nodesplitter=wds.split_by_node, empty_check=False)
    ds = ds.shuffle(1000, rng=__import__("random").Random(0))
    ds = ds.decode(decode) if decode else ds.decode()
    ds = ds.to_tuple(ext, "cls")
    if sample_transform is not None:
        ds = ds.map_tuple(sample_transform, int)
    return ds.map_tuple(lambda im: torch.from_numpy(np.array(im)).permute(2, 0, 1), int)


def dataloader_albumentations(index: ShardIndex, batch: int, workers: int, device):
    import albumentations as A
    import cv2

    cv2.setNumThreads(1)
    aug = A.Compose([A.HorizontalFlip(p=0.5), A.Affine(rotate=(-30, 30), shear={"x": (-15, 15), "y": (-15, 15)}, p=1.0),
                     A.GaussNoise(std_range=(0.05, 0.05), p=1.0)])
    ds = _webdataset(index, lambda im: aug(image=im)["image"])
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=workers,
                                         pin_memory=device.type == "cuda")
    return MixedBatches(loader, device, index.num_classes)


def webdataset_kornia_unfused(index: ShardIndex, batch: int, workers: int, device):
    import kornia.augmentation as K

    aug = K.AugmentationSequential(K.RandomHorizontalFlip(p=0.5), K.RandomRotation(30.0, p=1.0),
                                   K.RandomAffine(degrees=0.0, shear=(-15.0, 15.0, -15.0, 15.0), p=1.0),
                                   K.RandomGaussianNoise(std=0.05, p=1.0)).to(device)

    def transform(x):
        return (aug(x.float() / 255).clamp(0, 1) * 255).round().to(torch.uint8)
    loader = torch.utils.data.DataLoader(_webdataset(index), batch_size=batch, num_workers=workers,
                                         pin_memory=device.type == "cuda")
    return MixedBatches(loader, device, index.num_classes, transform)


def dali_only(index: ShardIndex, batch: int, workers: int, device):
    """Hand-written DALI: ``fn.readers.webdataset`` → decode → flip, rotate, shear (one op
    each) → noise; MixUp in torch after (DALI has none)."""
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

    gpu = device.type == "cuda"
    shape = index.image_shape

    @pipeline_def(batch_size=batch, num_threads=max(1, workers), device_id=device.index or 0 if gpu else None, seed=0)
    def pipe():
        ext = peer_ext(index)
        raw, label = fn.readers.webdataset(paths=index.urls, ext=[ext, "cls"], random_shuffle=True,
                                           initial_fill=1000, name="reader", missing_component_behavior="error")
        if ext == "jpg":
            images = fn.decoders.image(raw, device="mixed" if gpu else "cpu", output_type=types.RGB)
        else:   # fixed-shape uint8 .npy: drop the 128-byte header, reinterpret
            images = fn.reshape(raw[128:], shape=list(shape), layout="HWC")
            images = images.gpu() if gpu else images
        images = fn.flip(images, horizontal=fn.random.coin_flip(probability=0.5))
        images = fn.rotate(images, angle=fn.random.uniform(range=(-30.0, 30.0)), keep_size=True, fill_value=0)
        shear = fn.transforms.shear(angles=fn.random.uniform(range=(-15.0, 15.0), shape=[2]),
                                    center=[shape[1] / 2, shape[0] / 2])
        images = fn.warp_affine(images, matrix=shear, fill_value=0, inverse_map=False)
        images = fn.noise.gaussian(images, stddev=0.05 * 255)
        images = fn.transpose(images, perm=[2, 0, 1])
        label = fn.cast(label, dtype=types.UINT8)
        return images, label

    p = pipe()
    p.build()
    it = DALIGenericIterator([p], ["images", "labels"], reader_name="reader",
                             last_batch_policy=LastBatchPolicy.PARTIAL, auto_reset=True)

    def batches():
        for out in it:
            labels = out[0]["labels"].view(-1, out[0]["labels"].shape[-1])
            # .cls is ASCII digits: parse the bytes
            digits = (labels.long() - 48).clamp(min=0)
            width = (labels > 0).sum(1)
            value = torch.zeros(len(labels), dtype=torch.long, device=labels.device)
            for j in range(labels.shape[1]):
                value = torch.where(j < width, value * 10 + digits[:, j], value)
            yield out[0]["images"], value
    return MixedBatches(_Reiterable(batches), device, index.num_classes)


class _Reiterable:
    def __init__(self, fn):
        self.fn = fn

    def __iter__(self):
        return self.fn()


def build(name: str, index: ShardIndex, batch: int, workers: int, device):
    if name.startswith("streamaug-") and name in PIPELINES + DEVICE_DECODE + MAIN_SIDE:   # streamaug-<backend>[+flags]
        backend, *flags = name.removeprefix("streamaug-").split("+")
        return streamaug(index, batch, workers, device, backend, balance="smote" in flags,
                         decode="dali" if "nvjpeg" in flags else "cpu", in_workers=False if "main" in flags else None)
    if name == "dataloader-albumentations":
        return dataloader_albumentations(index, batch, workers, device)
    if name == "dali-only":
        return dali_only(index, batch, workers, device)
    if name == "webdataset-kornia-unfused":
        return webdataset_kornia_unfused(index, batch, workers, device)
    raise ValueError(f"pipeline must be one of {PIPELINES + DEVICE_DECODE + MAIN_SIDE}, got {name!r}")
