"""decode="dali": encoded bytes travel, DALI decodes where the batch lives (CPU here, nvJPEG on a GPU)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from loader_states import states_after_each
from shard_factory import make_shards, write_custom, write_tar
from streamaug.loader import StreamError, StreamLoader
from streamaug.loader.image_codec import encode_image

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
pytestmark = pytest.mark.dali          # (every case decodes with DALI, or checks its arguments)


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



@pytest.mark.parametrize("device", DEVICES)
def test_one_channel_from_colour_photos_is_the_workers_luma(tmp_path, device):
    """Newcomer s32: channels=1 on colour JPEGs differed from the CPU decode by up to 21 levels
    (DALI's GRAY output is the JPEG's Y plane; the workers take PIL's luma of the RGB decode)."""
    from sklearn.datasets import load_sample_images
    photos = load_sample_images().images
    members = []
    for i in range(12):
        crop = photos[i % 2][i * 20:i * 20 + 48, i * 30:i * 30 + 64]
        members += [(f"s_{i:05d}.jpg", encode_image(np.ascontiguousarray(crop), "jpg")), (f"s_{i:05d}.cls", b"%d" % (i % 2))]
    index = write_custom(str(tmp_path), {"a.tar": members}, {"a.tar": [6, 6]}, image_shape=(48, 64, 3))
    kw = dict(batch_size=6, shuffle=0, device=device, channels=1)
    for a, b in zip(StreamLoader(index.urls, **kw), StreamLoader(index.urls, decode="dali", **kw)):
        assert a[0].shape == b[0].shape == (6, 1, 48, 64)
        assert (a[0].int() - b[0].int()).abs().max() <= (0 if device == "cpu" else 2)

@pytest.mark.parametrize("device", DEVICES)
def test_exif_orientation_is_ignored_as_the_workers_ignore_it(tmp_path, device):
    """Red team s33: DALI turned JPEGs by their EXIF orientation tag (up to 255 levels from the
    CPU decode, nothing counted) where the workers, as PIL and torchvision's loaders, ignore it."""
    import io

    from PIL import Image

    image = np.zeros((16, 16, 3), np.uint8)
    image[:4, :8, 0], image[..., 1] = 255, np.arange(16)[None, :] * 16
    members = []
    for i, orientation in enumerate(range(1, 9)):
        exif, buf = Image.Exif(), io.BytesIO()
        exif[0x0112] = orientation
        Image.fromarray(image).save(buf, format="JPEG", quality=95, subsampling=0, exif=exif.tobytes())
        members += [(f"s_{i:05d}.jpg", buf.getvalue()), (f"s_{i:05d}.cls", b"%d" % (i % 2))]
    index = write_custom(str(tmp_path), {"a.tar": members}, {"a.tar": [4, 4]}, image_shape=(16, 16, 3))
    for resize in (None, (12, 12)):
        kw = dict(batch_size=8, shuffle=0, device=device, resize=resize)
        (cpu,), (dali,) = list(StreamLoader(index.urls, **kw)), list(StreamLoader(index.urls, decode="dali", **kw))
        assert (cpu[0].int() - dali[0].int()).abs().max() <= (1 if resize else 0) + (2 if device == "cuda" else 0)
        assert (cpu[0][1:].int() - cpu[0][:1].int()).abs().max() <= 1, "every orientation decodes as stored"


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
    members[6:8] = [("cut.jpg", truncated_jpg(9)), ("cut.cls", b"1")]     # its header reads: DALI refuses it
    write_tar(index.urls[0], members)
    loader = StreamLoader(index.urls, batch_size=6, shuffle=0, decode="dali", on_error="skip", index=False,
                          num_classes=2)
    (batch,) = list(loader)                  # (its batch was cut before the decode: a repeat, index or not)
    assert loader.stats.skipped == {"undecodable_image": 1} and batch.is_padding.tolist() == [False] * 3 + [True] + [False] * 2


def test_npy_is_still_decoded_in_workers(tmp_path):
    index, images, _ = make_shards(str(tmp_path), n=20, maxcount=10, fmt="npy")
    batch = next(iter(StreamLoader(index.urls, batch_size=20, shuffle=0, decode="dali")))
    assert batch[0].shape == (20, 3, 8, 8)


def test_decode_argument_is_checked(npy_shards):
    index, _, _ = npy_shards
    with pytest.raises(ValueError, match="decode must be 'cpu' .* or 'dali' .* got 'gpu'"):
        StreamLoader(index.urls, batch_size=4, decode="gpu")


def truncated_jpg(i: int) -> bytes:
    """A JPEG whose header is whole (the workers' check passes it) and whose data is cut:
    only the decode itself finds it bad."""
    return jpg_members(1, start=i)[0][1][:-40]


def bad_every_other_shard(tmp_path, kinds=("header", "truncated"), shards=4, per=6):
    """``shards`` jpg shards of ``per`` samples; odd shards hold one bad image each, in turn
    of ``kinds``: ``"header"`` (refused by the workers' header check) or ``"truncated"``
    (refused by the decode)."""
    files, counts = {}, {}
    for s in range(shards):
        members = jpg_members(per, start=s * per)
        if s % 2:
            kind = kinds[(s // 2) % len(kinds)]
            name = f"s_{s * per + 1:05d}.jpg"
            members[2] = (name, b"\xff\xd8 broken" if kind == "header" else truncated_jpg(s * per + 1))
        files[f"t{s}.tar"], counts[f"t{s}.tar"] = members, [per // 2, per - per // 2]
    return write_custom(str(tmp_path), files, counts, image_shape=(12, 12, 3))


def dali_loader(urls, ahead: bool, **kw) -> StreamLoader:
    """decode="dali" on the CPU, decoding one batch ahead (as on CUDA) or in place (the CPU's default)."""
    loader = StreamLoader(urls, decode="dali", device="cpu", **kw)
    assert loader.device_decoder.ahead is False
    loader.device_decoder.ahead = ahead
    return loader


def resume_after_each_batch(make):
    """``(a whole pass's batches, its skip counts, [(resumed batches, resumed skip counts) per cut])``,
    cut after each batch of the pass."""
    with make() as full:
        whole = [(b.keys, b[0].clone()) for b in full]
        counts = dict(full.stats.skipped)
    runs = []
    for state in states_after_each(make, len(whole) - 1):
        with make() as resumed:
            resumed.load_state_dict(state)
            runs.append(([(b.keys, b[0].clone()) for b in resumed], dict(resumed.stats.skipped)))
    return whole, counts, runs


@pytest.mark.parametrize("ahead", [True, False], ids=["ahead", "in_place"])
@pytest.mark.parametrize("workers", [0, 2])
def test_decode_skips_are_counted_once_whatever_the_resume_point(tmp_path, workers, ahead):
    """Decoding a batch ahead of the caller, what the decode skips still reaches ``stats`` with
    its own batch, so a state taken after any batch resumes with each skip counted once."""
    index = bad_every_other_shard(tmp_path)
    whole, counts, runs = resume_after_each_batch(lambda: dali_loader(
        index.urls, ahead, batch_size=5, num_workers=workers, shuffle=0, on_error="skip"))
    assert counts == {"undecodable_image": 2}
    for taken, (rest, resumed_counts) in enumerate(runs):
        assert len(rest) == len(whole) - taken and resumed_counts == counts, taken


@pytest.mark.parametrize("ahead", [True, False], ids=["ahead", "in_place"])
@pytest.mark.parametrize("workers", [0, 2])
def test_resume_past_images_the_decode_refused_gives_the_same_batches(tmp_path, workers, ahead):
    """Images only the decode refuses travel as samples up to it, so the resume position (in
    samples) is exact: the resumed batches are the uninterrupted run's, images included."""
    index = bad_every_other_shard(tmp_path, kinds=("truncated",))
    whole, counts, runs = resume_after_each_batch(lambda: dali_loader(
        index.urls, ahead, batch_size=5, num_workers=workers, shuffle=0, on_error="skip"))
    assert counts == {"undecodable_image": 2}
    for taken, (rest, _) in enumerate(runs):
        assert [k for k, _ in rest] == [k for k, _ in whole[taken:]], taken
        assert all(torch.equal(x, y) for (_, x), (_, y) in zip(rest, whole[taken:])), taken


@pytest.mark.parametrize("ahead", [True, False], ids=["ahead", "in_place"])
def test_a_pass_left_early_leaves_no_decode_behind(tmp_path, ahead):
    """Decoding ahead, batch 2's decode was started when batch 1 was handed on; leaving the pass
    there must not hand that stale decode to the next pass's first batch."""
    index, _, _ = make_shards(str(tmp_path), n=40, maxcount=10, fmt="jpg", size=16)
    loader = dali_loader(index.urls, ahead, batch_size=8, shuffle=0, seed=0)
    whole = [(b.keys, b[0].clone()) for b in loader]
    loader.set_epoch(0)
    it = iter(loader)
    next(it)
    it.close()
    again = [(b.keys, b[0].clone()) for b in loader]
    assert [k for k, _ in again] == [k for k, _ in whole]
    assert all(torch.equal(x, y) for (_, x), (_, y) in zip(again, whole))


class RecordingDecoder:
    """Stands in for DaliImageDecoder in ``decode_ahead``: logs start, finish and cancel."""

    def __init__(self, ahead=True):
        self.log, self.ahead = [], ahead

    def start(self, batch):
        self.log.append(("start", batch.batch_id))
        batch.encoded = None
        return batch

    def finish(self, ticket, handle):
        self.log.append(("finish", ticket.batch_id))
        return ticket

    def cancel(self, ticket):
        self.log.append(("cancel", ticket.batch_id))


def test_decode_ahead_starts_the_next_batch_before_handing_on_this_one():
    from streamaug.core.flight import BatchInFlight
    from streamaug.loader.device_decode import decode_ahead

    def batches(encoded_ids):
        for i in range(5):
            b = BatchInFlight(torch.zeros(1, 3, 2, 2, dtype=torch.uint8), torch.zeros(1, dtype=torch.int64),
                              [f"k{i}"], ["u"], torch.zeros(1, dtype=torch.bool), i)
            b.encoded = [b"x"] if i in encoded_ids else None
            yield b
    dec = RecordingDecoder()
    out = []
    for b in decode_ahead(batches({0, 1, 2, 4}), dec, "raise"):
        dec.log.append(("yield", b.batch_id))
        out.append(b.batch_id)
    assert out == [0, 1, 2, 3, 4]
    assert dec.log == [("start", 0), ("finish", 0), ("start", 1), ("yield", 0), ("finish", 1), ("start", 2),
                       ("yield", 1), ("finish", 2), ("yield", 2), ("yield", 3), ("start", 4), ("finish", 4),
                       ("yield", 4)]
    dec = RecordingDecoder()
    gen = decode_ahead(batches({0, 1, 2, 3, 4}), dec, "raise")
    next(gen)
    gen.close()
    assert dec.log[-1] == ("cancel", 1), dec.log
    dec = RecordingDecoder(ahead=False)
    for b in decode_ahead(batches({0, 1, 2, 4}), dec, "raise"):
        dec.log.append(("yield", b.batch_id))
    assert dec.log == [("start", 0), ("finish", 0), ("yield", 0), ("start", 1), ("finish", 1), ("yield", 1),
                       ("start", 2), ("finish", 2), ("yield", 2), ("yield", 3), ("start", 4), ("finish", 4),
                       ("yield", 4)]


def test_an_error_reading_the_next_batch_comes_after_the_batch_decoding_ahead():
    """Batch 1's decode was started when reading batch 2 raised: batch 1 is finished and handed on,
    then the error (it was cancelled and lost, the error one batch early)."""
    from streamaug.core.flight import BatchInFlight
    from streamaug.loader.device_decode import decode_ahead

    def batches():
        for i in range(2):
            b = BatchInFlight(torch.zeros(1, 3, 2, 2, dtype=torch.uint8), torch.zeros(1, dtype=torch.int64),
                              [f"k{i}"], ["u"], torch.zeros(1, dtype=torch.bool), i)
            b.encoded = [b"x"]
            yield b
        raise StreamError("undecodable_image", "bad", shard="u", key="k2")
    dec, out = RecordingDecoder(), []
    with pytest.raises(StreamError, match="k2"):
        for b in decode_ahead(batches(), dec, "raise"):
            out.append(b.batch_id)
    assert out == [0, 1] and ("cancel", 1) not in dec.log, dec.log


@pytest.mark.cuda
def test_an_error_reading_the_next_batch_comes_after_the_batch_being_copied():
    from streamaug.core.flight import BatchInFlight
    from streamaug.loader.device_feed import device_feed

    def batches():
        for i in range(2):
            yield BatchInFlight(torch.zeros(1, 3, 2, 2, dtype=torch.uint8), torch.zeros(1, dtype=torch.int64),
                                [f"k{i}"], ["u"], torch.zeros(1, dtype=torch.bool), i)
        raise StreamError("undecodable_image", "bad", shard="u", key="k2")
    out = []
    with pytest.raises(StreamError, match="k2"):
        for b in device_feed(batches(), torch.device("cuda"), pin=True):
            out.append((b.batch_id, b.images.device.type))
    assert out == [(0, "cuda"), (1, "cuda")]


@pytest.mark.parametrize("device", DEVICES)
def test_decoding_ahead_is_the_default_on_cuda_only(device):
    from streamaug.loader.device_decode import DaliImageDecoder

    assert DaliImageDecoder(torch.device(device), 3).ahead == (device == "cuda")


def test_a_pass_superseded_with_a_decode_started_does_not_hand_it_to_the_newer_pass(tmp_path):
    """Decoding ahead, the older pass had batch 2's decode running when a newer pass began;
    that run must not come back as the newer pass's first batch (the images were shifted by one)."""
    index, _, _ = make_shards(str(tmp_path), n=40, maxcount=10, fmt="jpg", size=16)
    whole = [(b.keys, b[0].clone()) for b in dali_loader(index.urls, True, batch_size=8, shuffle=0, seed=0)]
    loader = dali_loader(index.urls, True, batch_size=8, shuffle=0, seed=0)
    older = iter(loader)
    next(older)
    next(older)
    loader.set_epoch(0)
    newer = [(b.keys, b[0].clone()) for b in loader]
    assert [k for k, _ in newer] == [k for k, _ in whole]
    assert all(torch.equal(x, y) for (_, x), (_, y) in zip(newer, whole))
    with pytest.raises(RuntimeError, match="superseded"):
        next(older)


@pytest.mark.parametrize("ahead", [True, False], ids=["ahead", "in_place"])
def test_a_batch_no_image_of_which_decodes_resumes_padded_the_same(tmp_path, ahead):
    """Batch 1 holds only images the decode refuses: it is padded with the dataset's first
    image that decodes (in index order), not an earlier batch's, so a resume at that batch
    (which has no earlier batch) pads it the same instead of failing with ``no_samples``."""
    bad = jpg_members(4, start=10)
    bad = [(name, truncated_jpg(10 + i // 2) if name.endswith(".jpg") else data) for i, (name, data) in enumerate(bad)]
    index = write_custom(str(tmp_path), {"t0.tar": jpg_members(4), "t1.tar": bad + jpg_members(4, start=20)},
                         {"t0.tar": [2, 2], "t1.tar": [4, 4]}, image_shape=(12, 12, 3))
    whole, counts, runs = resume_after_each_batch(lambda: dali_loader(
        index.urls, ahead, batch_size=4, shuffle=0, on_error="skip"))
    assert counts == {"undecodable_image": 4}
    assert whole[1][0] == ["s_00000"] * 4, "padded with the dataset's first image"
    for taken, (rest, _) in enumerate(runs):
        assert [k for k, _ in rest] == [k for k, _ in whole[taken:]], taken
        assert all(torch.equal(x, y) for (_, x), (_, y) in zip(rest, whole[taken:])), taken


def test_repeats_of_an_image_the_decode_refuses_are_not_counted_again(tmp_path):
    """Batch 1: sample 4's image is cut (only the decode finds it), samples 5-7 have labels out
    of range. The workers fill 5-7 with repeats of 4, the one row they can see nothing wrong
    with; the decode refuses 4 and each repeat, and counts 4 once (it counted 4 times)."""
    members = jpg_members(8)
    members[8] = ("s_00004.jpg", truncated_jpg(4))
    for i in (5, 6, 7):
        members[2 * i + 1] = (f"s_{i:05d}.cls", b"9")
    index = write_custom(str(tmp_path), {"t0.tar": members}, {"t0.tar": [4, 4]}, image_shape=(12, 12, 3))
    loader = dali_loader(index.urls, False, batch_size=4, shuffle=0, on_error="skip")
    batches = list(loader)
    assert loader.stats.skipped == {"undecodable_image": 1, "label_out_of_range": 3}
    assert batches[1].is_padding.all() and batches[1].keys == ["s_00000"] * 4
