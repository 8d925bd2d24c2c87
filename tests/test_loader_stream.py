"""Arrays → shards → StreamLoader: completeness, pixel equality, seeding, formats, training."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from shard_factory import index_of_key, make_shards
from streamaug.benchmarks.demo_data import load_digits_32
from streamaug.loader import ShardIndex, StreamLoader, expand_urls, write_shards


def run_epoch(loader):
    keys, images, labels = [], [], []
    for batch in loader:
        x, y = batch
        keys += batch.keys
        images.append(x.cpu())
        labels.append(y.cpu())
    return keys, torch.cat(images), torch.cat(labels)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_every_sample_exactly_once_with_exact_pixels(npy_shards, num_workers):
    index, images, labels = npy_shards
    loader = StreamLoader(index.urls, batch_size=10, num_workers=num_workers, seed=3, shuffle=50)
    keys, x, y = run_epoch(loader)
    assert len(keys) == len(images) == len(set(keys))
    assert len(loader) == 10
    for k, xi, yi in zip(keys, x, y):
        i = index_of_key(k)
        assert torch.equal(xi, torch.from_numpy(images[i]).permute(2, 0, 1)), k
        assert int(yi) == labels[i]
    assert x.dtype == torch.uint8 and y.dtype == torch.int64 and x.shape[1:] == (3, 8, 8)
    assert loader.stats.real == 100 and loader.stats.padded == 0 and not loader.stats.skipped


def test_last_partial_batch_and_drop_last(npy_shards):
    index, _, _ = npy_shards
    sizes = [len(b[1]) for b in StreamLoader(index.urls, batch_size=32, seed=0)]
    assert sizes == [32, 32, 32, 4]
    dropped = StreamLoader(index.urls, batch_size=32, seed=0, drop_last=True)
    assert [len(b[1]) for b in dropped] == [32, 32, 32] and len(dropped) == 3


def test_same_seed_same_order_and_set_epoch_changes_it(npy_shards):
    index, _, _ = npy_shards
    a = StreamLoader(index.urls, batch_size=10, seed=7, shuffle=40, num_workers=2)
    b = StreamLoader(index.urls, batch_size=10, seed=7, shuffle=40, num_workers=2)
    a.set_epoch(0)
    b.set_epoch(0)
    ka, kb = run_epoch(a)[0], run_epoch(b)[0]
    assert ka == kb
    assert run_epoch(a)[0] == ka, "explicit epoch: iterating again repeats the order"
    a.set_epoch(1)
    k1 = run_epoch(a)[0]
    assert k1 != ka and sorted(k1) == sorted(ka)
    c = StreamLoader(index.urls, batch_size=10, seed=8, shuffle=40, num_workers=2)
    c.set_epoch(0)
    assert run_epoch(c)[0] != ka


def test_epochs_advance_without_set_epoch(npy_shards):
    index, _, _ = npy_shards
    loader = StreamLoader(index.urls, batch_size=10, seed=1)
    first, second = run_epoch(loader)[0], run_epoch(loader)[0]
    assert first != second and sorted(first) == sorted(second) and loader.epoch == 2


def test_shuffle_zero_keeps_written_order(npy_shards):
    index, _, _ = npy_shards
    keys = run_epoch(StreamLoader(index.urls, batch_size=10, shuffle=0))[0]
    written = np.random.default_rng(0).permutation(100)     # write_shards' default shuffle_seed=0
    assert [index_of_key(k) for k in keys] == written.tolist(), "no shard or buffer shuffle: stored order"


@pytest.mark.parametrize("fmt", ["jpg", "png"])
def test_encoded_image_paths(tmp_path, fmt):
    import io

    from PIL import Image

    from streamaug.loader.image_codec import encode_image

    index, images, labels = make_shards(str(tmp_path), n=40, maxcount=10, fmt=fmt, size=16)
    keys, x, y = run_epoch(StreamLoader(index.urls, batch_size=8, num_workers=2, seed=0))
    assert sorted(keys) == sorted(f"train_{i:08d}" for i in range(40))
    for k, xi in zip(keys, x):
        original = images[index_of_key(k)]
        ref = np.array(Image.open(io.BytesIO(encode_image(original, fmt))))   # what the bytes decode to
        assert torch.equal(xi, torch.from_numpy(ref).permute(2, 0, 1)), k
        if fmt == "png":
            assert np.array_equal(ref, original)


def test_brace_patterns_and_index_default(npy_shards):
    index, _, _ = npy_shards
    n = len(index.shards)
    pattern = index.urls[0].replace("000000", "{000000..%06d}" % (n - 1))
    assert expand_urls(pattern) == index.urls
    assert len(run_epoch(StreamLoader(pattern, batch_size=25))[0]) == 100


def test_pipe_urls_need_and_use_an_index(npy_shards):
    index, _, _ = npy_shards
    urls = [f"pipe:cat {u}" for u in index.urls]
    with pytest.raises(ValueError, match="pipe: URLs need an explicit index"):
        StreamLoader(urls, batch_size=10)
    doc = index.to_json()
    doc["shards"] = [dict(s, url=u) for s, u in zip(doc["shards"], urls)]
    keys = run_epoch(StreamLoader(urls, batch_size=10, index=ShardIndex.from_json(doc)))[0]
    assert len(set(keys)) == 100


def test_subset_of_shards_uses_their_counts(npy_shards):
    index, _, _ = npy_shards
    loader = StreamLoader(index.urls[:2], batch_size=8)
    assert len(run_epoch(loader)[0]) == 32 and len(loader) == 4


def test_index_records_counts_and_shape(npy_shards, tmp_path):
    index, _, labels = npy_shards
    doc = json.load(open(index.source))
    assert doc["image_shape"] == [8, 8, 3] and doc["num_classes"] == 4
    assert [s["count"] for s in doc["shards"]] == [16] * 6 + [4]
    assert index.class_counts == np.bincount(labels).tolist()


def test_image_folder_source(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, n in (("cat", 3), ("dog", 5)):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(tmp_path / "imgs" / c / f"{i}.png")
    index = write_shards(str(tmp_path / "imgs"), str(tmp_path / "out"), image_format="png", progress=False)
    assert index.class_names == ["cat", "dog"] and index.class_counts == [3, 5]
    assert index.image_shape == (12, 10, 3)
    x, y = next(iter(StreamLoader(index.urls, batch_size=8)))
    assert x.shape == (8, 3, 12, 10) and sorted(y.tolist()) == [0] * 3 + [1] * 5


@pytest.mark.parametrize("fmt", ["npy", "webp"])
def test_an_image_folder_of_webp_and_bmp_files_is_written(tmp_path, fmt):
    """Newcomer: .webp files (a format the shards take) were passed over, and a class folder
    of them was refused as holding no images."""
    from PIL import Image

    for c, ext in (("a", "webp"), ("a", "png"), ("b", "webp"), ("c", "bmp")):
        (tmp_path / "imgs" / c).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((6, 6, 3), ord(c), np.uint8)).save(tmp_path / "imgs" / c / f"x.{ext}",
                                                                    **({"lossless": True} if ext == "webp" else {}))
    index = write_shards(str(tmp_path / "imgs"), str(tmp_path / "out"), image_format=fmt, progress=False)
    assert index.class_counts == [2, 1, 1] and index.image_ext == fmt
    x, y = next(iter(StreamLoader(index.urls, batch_size=4, shuffle=False)))
    assert sorted(zip(y.tolist(), x[:, 0, 0, 0].tolist())) == [(0, 97), (0, 97), (1, 98), (2, 99)]


@pytest.mark.parametrize("fmt", ["npy", "png", "jpg"])
def test_an_image_folders_files_are_read_as_what_they_hold_whatever_their_extension(tmp_path, fmt):
    """Newcomer s32: a JPEG saved as .png was refused as not decoding ("cannot identify image
    file <_io.BytesIO object at 0x...>"); PIL and torchvision's ImageFolder read it."""
    from PIL import Image

    (tmp_path / "imgs" / "a").mkdir(parents=True)
    pixels = np.full((8, 8, 3), 120, np.uint8)
    Image.fromarray(pixels).save(tmp_path / "imgs" / "a" / "jpeg.png", format="JPEG", quality=100)
    Image.fromarray(pixels).save(tmp_path / "imgs" / "a" / "png.jpg", format="PNG")
    (tmp_path / "imgs" / "a" / "text.png").write_bytes(b"hello, not an image")
    with pytest.raises(ValueError, match=r"text.png' \(19 bytes\) does not decode: its first bytes b'hello, n' are "
                       r"no image format streamaug reads"):
        write_shards(str(tmp_path / "imgs"), str(tmp_path / "x"), progress=False)
    (tmp_path / "imgs" / "a" / "text.png").unlink()
    index = write_shards(str(tmp_path / "imgs"), str(tmp_path / "out"), image_format=fmt, progress=False)
    x, _ = next(iter(StreamLoader(index.urls, batch_size=2, shuffle=False)))
    assert (x.int() - 120).abs().max() <= 2

def test_an_image_folder_with_bad_files_names_them_and_skips_them_when_asked(tmp_path, capsys):
    """Newcomer: each bad file stopped ``streamaug shards`` in turn (no way to pass over them), a
    0-byte file was named without its size, and keys (train_00000033) did not lead back to files."""
    from PIL import Image

    from streamaug.cli import main as cli_main

    for c in ("cat", "dog"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((4, 4, 3), i, np.uint8)).save(tmp_path / "imgs" / c / f"img.{i}.png")
    (tmp_path / "imgs" / "cat" / "empty.png").write_bytes(b"")
    (tmp_path / "imgs" / "dog" / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(ValueError, match=r"empty.png' \(0 bytes\) does not decode: .*on_error='skip'"):
        write_shards(str(tmp_path / "imgs"), str(tmp_path / "a"), shuffle_seed=None, progress=False)
    with pytest.warns(RuntimeWarning, match=r"passed over 2 image\(s\) that do not decode \(cat/empty.png, dog/cut.png\)"):
        index = write_shards(str(tmp_path / "imgs"), str(tmp_path / "b"), progress=False, on_error="skip")
    assert index.class_counts == [3, 3]
    keys = sorted(k for b in StreamLoader(index.urls, batch_size=6) for k in b.keys)
    assert [k.split("_", 2)[2] for k in keys] == [f"{c}_img_{i}" for c in ("cat", "dog") for i in range(3)]
    assert cli_main(["shards", str(tmp_path / "imgs"), str(tmp_path / "c"), "--on-error", "skip"]) == 0
    assert "wrote 1 shards, 6 samples, class counts [3, 3]" in capsys.readouterr().out


def test_skipping_every_image_replaces_no_shard_and_skipping_empties_are_said(tmp_path):
    """Red team B: when every image failed under skip, an empty tar was renamed over the good
    shard of an earlier write (its index still counted 6); a dangling link still stopped the
    write; a class left with no image passed without a word."""
    from PIL import Image

    src, out = tmp_path / "imgs", tmp_path / "out"
    for c in ("a", "b", "c"):
        (src / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((4, 4, 3), i, np.uint8)).save(src / c / f"{i}.png")
    write_shards(str(src), str(out), image_format="png", progress=False)
    before = (out / "train-000000.tar").read_bytes()
    (src / "a" / "gone.png").symlink_to(src / "nowhere.png")
    for f in (src / "c").iterdir():
        f.write_bytes(b"not a png")
    with pytest.warns(RuntimeWarning, match=r"passed over 3 image\(s\).*class\(es\) \['c'\] have no image left"):
        index = write_shards(str(src), str(tmp_path / "out2"), image_format="png", progress=False, on_error="skip")
    assert index.class_counts == [2, 2, 0]
    for f in (*(src / "a").iterdir(), *(src / "b").iterdir()):
        f.unlink() if f.is_symlink() else f.write_bytes(b"")
    with pytest.raises(ValueError, match=r"no image decodes \(6 passed over\)"):
        write_shards(str(src), str(out), image_format="png", progress=False, on_error="skip")
    assert (out / "train-000000.tar").read_bytes() == before and sorted(os.listdir(out)) == [
        "index.json", "train-000000.tar"]


@pytest.mark.parametrize("prefix, ok", [("train.v2", False), ("猫" * 10, True), ("x" * 61, False), ("val", True)])
def test_a_prefix_is_one_a_key_can_start(tmp_path, prefix, ok):
    """Red team B: a dot in the prefix ended every key there (webdataset read the shard as one
    sample); a long or non-ASCII prefix with a long file name failed with a bare 'name is too long'."""
    from PIL import Image

    (tmp_path / "imgs" / "cat").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(
        tmp_path / "imgs" / "cat" / ("IMG_20230101_123456_a_rather_long_descriptive_file_name_0" + ".png"))
    (tmp_path / "imgs" / "dog").mkdir()
    Image.fromarray(np.ones((4, 4, 3), np.uint8)).save(tmp_path / "imgs" / "dog" / "d.png")
    if not ok:
        with pytest.raises(ValueError, match="prefix must be letters, digits"):
            write_shards(str(tmp_path / "imgs"), str(tmp_path / "out"), prefix=prefix, progress=False)
        return
    index = write_shards(str(tmp_path / "imgs"), str(tmp_path / "out"), prefix=prefix, image_format="png",
                         progress=False)
    keys = [k for b in StreamLoader(index.urls, batch_size=2) for k in b.keys]
    assert len(keys) == 2 and all(k.startswith(prefix) for k in keys)


def image_folder(root, classes: dict[str, int], value_of=None) -> None:
    """``root/<class>/<i>.png``: 4×4 images whose pixels are ``value_of(class)`` (the class's place)."""
    from PIL import Image

    for c, n in classes.items():
        (root / c).mkdir(parents=True, exist_ok=True)
        value = (value_of or list(classes).index)(c)
        for i in range(n):
            Image.fromarray(np.full((4, 4, 3), value, np.uint8)).save(root / c / f"{i}.png")


def test_image_folder_labels_by_class_names_and_refuses_what_would_shift_them(tmp_path, capsys):
    """Newcomer findings: ``class_names=`` only renamed the sorted subfolders, so a validation
    folder missing a class had its later classes moved down one id; a hidden
    ``.ipynb_checkpoints`` folder became an empty class 0 and shifted every label."""
    from streamaug.cli import main as cli_main

    names = ["bird", "cat", "dog"]
    image_folder(tmp_path / "train", {"bird": 2, "cat": 3, "dog": 4}, names.index)
    train = write_shards(str(tmp_path / "train"), str(tmp_path / "train_shards"), progress=False)
    image_folder(tmp_path / "val", {"cat": 3, "dog": 1}, names.index)           # no bird
    val = write_shards(str(tmp_path / "val"), str(tmp_path / "val_shards"), class_names=train.class_names,
                       progress=False)
    assert val.class_names == names and val.class_counts == [0, 3, 1]
    with StreamLoader(val.urls, batch_size=4, shuffle=False) as loader:
        x, y = next(iter(loader))
    assert x[:, 0, 0, 0].tolist() == y.tolist(), "each image's label is its class's id in the training shards"
    assert cli_main(["shards", str(tmp_path / "val"), str(tmp_path / "cli_val"), "--class-names",
                     str(tmp_path / "train_shards")]) == 0
    assert ShardIndex.load(str(tmp_path / "cli_val" / "index.json")).class_counts == [0, 3, 1]
    assert cli_main(["shards", str(tmp_path / "val"), str(tmp_path / "cli_val2"), "--class-names", "x,cat,dog"]) == 0
    assert ShardIndex.load(str(tmp_path / "cli_val2" / "index.json")).class_counts == [0, 3, 1]
    assert cli_main(["shards", str(tmp_path / "val"), str(tmp_path / "cli_val3"), "--class-names", "cat,,cat"]) == 1
    assert "class_names must be distinct, non-empty strings, got ['cat', '', 'cat']" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"class folder\(s\) \['dog'\] that class_names does not list"):
        write_shards(str(tmp_path / "val"), str(tmp_path / "bad"), class_names=["bird", "cat"], progress=False)

    (tmp_path / "train" / ".ipynb_checkpoints").mkdir()
    (tmp_path / "train" / "cat" / "._0.png").write_bytes(b"AppleDouble")
    (tmp_path / "train" / "dog" / "notes.txt").write_text("x")
    (tmp_path / "train" / "dog" / ".DS_Store").write_bytes(b"Bud1")     # newcomer s34: these two went unnamed
    (tmp_path / "train" / "README.txt").write_text("x")
    with pytest.warns(RuntimeWarning, match=r"passed over 5 entries.*ipynb_checkpoints") as caught:
        again = write_shards(str(tmp_path / "train"), str(tmp_path / "again"), progress=False)
    assert "dog/.DS_Store" in str(caught[0].message) and "README.txt" in str(caught[0].message)
    assert again.class_names == names and again.class_counts == [2, 3, 4]
    (tmp_path / "train" / "emu").mkdir()
    with pytest.raises(ValueError, match="class folder 'emu' holds no images"):
        write_shards(str(tmp_path / "train"), str(tmp_path / "again2"), progress=False)
    with pytest.warns(RuntimeWarning, match="passed over 5 entries"):
        kept = write_shards(str(tmp_path / "train"), str(tmp_path / "again3"), class_names=[*names, "emu"],
                            progress=False)
    assert kept.class_counts == [2, 3, 4, 0]


def test_digits_source_and_resize(tmp_path):
    index = write_shards(load_digits_32(), str(tmp_path), maxcount=600, progress=False)
    assert index.total == 1797 and index.image_shape == (32, 32, 1) and index.num_classes == 10
    with pytest.warns(DeprecationWarning, match="load_digits_32"):
        old = write_shards("digits", str(tmp_path / "old"), maxcount=600, progress=False)
    assert old.class_counts == index.class_counts
    x, _ = next(iter(StreamLoader(index.urls, batch_size=4, resize=(20, 24))))
    assert x.shape == (4, 1, 20, 24)


def test_plain_training_loop_runs_unchanged(npy_shards):
    index, _, _ = npy_shards
    loader = StreamLoader(index.urls, batch_size=16, num_workers=2, seed=0)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for epoch in range(3):
        for images, labels in loader:                     # exactly as with a DataLoader
            loss = torch.nn.functional.cross_entropy(model(images.float() / 255), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert len(losses) == 3 * len(loader) and all(np.isfinite(losses))


def test_collate_refuses_a_row_of_another_shape_naming_it():
    """The size rule keeps mismatched rows out; were one to reach collate, copying it into the
    batch would broadcast (a 1-channel row into 3) instead of failing, so collate checks."""
    from streamaug.loader.batch_cutting import collate_rows

    def row(key, shape):
        return {"image": np.zeros(shape, np.uint8), "label": 0, "__key__": key, "__url__": "s.tar", "is_padding": False}
    ok = collate_rows([row("a", (4, 5, 3)), row("b", (4, 5, 3))], 0, {}, None)
    assert ok.images.shape == (2, 3, 4, 5)
    with pytest.raises(ValueError, match=r"s.tar: key 'b' decoded to \(4, 5, 1\), the batch's first row to \(4, 5, 3\)"):
        collate_rows([row("a", (4, 5, 3)), row("b", (4, 5, 1))], 0, {}, None)


def test_epoch_can_still_be_assigned(npy_shards):
    """``loader.epoch`` was a plain attribute before the pass bookkeeping moved to
    ``pass_position``; assigning it still chooses the epoch the next pass reads."""
    index, _, _ = npy_shards
    reference = StreamLoader(index.urls, batch_size=16, seed=1)
    reference.set_epoch(2)
    want = [b.keys for b in reference]
    loader = StreamLoader(index.urls, batch_size=16, seed=1)
    loader.epoch = 2
    assert loader.epoch == 2 and [b.keys for b in loader] == want
