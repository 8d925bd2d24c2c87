"""decode="dali": encoded bytes travel, DALI decodes where the batch lives (CPU here, nvJPEG on a GPU)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from shard_factory import make_shards, write_custom
from streamaug.loader import StreamError, StreamLoader
from streamaug.loader.image_codec import encode_image

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def jpg_members(n, size=(12, 12), start=0, channels=3):
    rng = np.random.default_rng(start)
    out = []
    for i in range(start, start + n):
        image = rng.integers(0, 256, (*size, channels), dtype=np.uint8)
        out += [(f"s_{i:05d}.jpg", encode_image(image, "jpg")), (f"s_{i:05d}.cls", str(i % 2).encode())]
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fmt", ["jpg", "png"])
def test_same_batches_as_worker_decode(tmp_path, fmt, device):
    index, _, _ = make_shards(str(tmp_path), n=40, maxcount=10, fmt=fmt, size=16)
    cpu = list(StreamLoader(index.urls, batch_size=8, num_workers=2, seed=0, device=device))
    dali = list(StreamLoader(index.urls, batch_size=8, num_workers=2, seed=0, device=device, decode="dali"))
    assert len(cpu) == len(dali) == 5
    for a, b in zip(cpu, dali):
        assert a.keys == b.keys and torch.equal(a[1], b[1])
        assert b[0].device.type == device and b[0].dtype == torch.uint8
        assert (a[0].int() - b[0].int()).abs().max() <= (0 if device == "cpu" else 2)   # nvJPEG may round differently


def test_grayscale_and_resize(tmp_path):
    index = write_custom(str(tmp_path), {"a.tar": jpg_members(4, channels=1) + jpg_members(2, (20, 9), 4, 1)},
                         {"a.tar": [3, 3]}, image_shape=None)
    with pytest.raises(StreamError, match="differs") as info:
        list(StreamLoader(index.urls, batch_size=6, shuffle=0, decode="dali"))
    assert info.value.key == "s_00004"
    x, _ = next(iter(StreamLoader(index.urls, batch_size=6, shuffle=0, decode="dali", resize=(10, 10))))
    assert x.shape == (6, 3, 10, 10), "no fixed shape in the index: decode='dali' outputs RGB"


def test_bad_image_is_named_or_skipped_and_replaced(tmp_path):
    members = jpg_members(3) + [("bad.jpg", b"\xff\xd8 broken"), ("bad.cls", b"1")] + jpg_members(2, start=3)
    index = write_custom(str(tmp_path), {"a.tar": members}, {"a.tar": [3, 3]}, image_shape=(12, 12, 3))
    with pytest.raises(StreamError, match="does not decode") as info:
        list(StreamLoader(index.urls, batch_size=6, shuffle=0, decode="dali"))
    assert info.value.key == "bad" and info.value.shard == index.urls[0]
    loader = StreamLoader(index.urls, batch_size=6, shuffle=0, decode="dali", on_error="skip")
    (batch,) = list(loader)
    assert loader.stats.skipped == {"undecodable_image": 1} and int(batch.is_padding.sum()) == 1
    assert batch[0].shape == (6, 3, 12, 12)


def test_npy_is_still_decoded_in_workers(tmp_path):
    index, images, _ = make_shards(str(tmp_path), n=20, maxcount=10, fmt="npy")
    batch = next(iter(StreamLoader(index.urls, batch_size=20, shuffle=0, decode="dali")))
    assert batch[0].shape == (20, 3, 8, 8)


def test_decode_argument_is_checked(npy_shards):
    index, _, _ = npy_shards
    with pytest.raises(ValueError, match="decode must be 'cpu' .* or 'dali' .* got 'gpu'"):
        StreamLoader(index.urls, batch_size=4, decode="gpu")
