"""`streamaug index` / build_index over shards the project did not write."""
from __future__ import annotations

import collections
import io
import json
import os
import shlex
import subprocess
import sys
import warnings

import numpy as np
import pytest
import webdataset as wds
from imblearn.over_sampling import SMOTE as ImbSMOTE
from PIL import Image

from shard_factory import npy_bytes, write_tar
from streamaug.cli import main as cli_main
from streamaug.loader import ShardIndex, ShardIndexError, StreamError, StreamLoader, build_index, write_shards
from streamaug.loader import index_builder
from streamaug.samplers import SMOTE, ClassBalancer

STREAMAUG = os.path.join(os.path.dirname(sys.executable), "streamaug")


def jpeg(value: int, size=(12, 10), mode="RGB") -> bytes:
    buf = io.BytesIO()
    shape = (*size, 3) if mode == "RGB" else size
    Image.fromarray(np.full(shape, value, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def jpeg_json_corpus(folder, n=90, maxcount=25):
    """What img2dataset-like tools write: ``.jpeg`` images, labels in ``.json``, captions in ``.txt``."""
    os.makedirs(folder, exist_ok=True)
    labels = [0 if i % 9 < 6 else (1 if i % 9 < 8 else 2) for i in range(n)]
    with wds.ShardWriter(os.path.join(folder, "part-%04d.tar"), maxcount=maxcount, verbose=0) as sink:
        for i, y in enumerate(labels):
            sink.write({"__key__": f"img{i:05d}", "jpeg": jpeg(i),
                        "json": json.dumps({"label": y, "width": 10}).encode(), "txt": b"a photo"})
    return labels


def test_shardwriter_jpeg_json_corpus_indexes_and_streams_once_balanced(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    labels = jpeg_json_corpus("data")
    assert cli_main(["index", "data/part-{0000..0003}.tar", "--workers", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("indexed 4 shards, 90 samples, 3 classes [60, 20, 10], .jpeg images 12x10x3, "
                          "labels from 'json:label'"), out
    doc = json.load(open("data/index.json"))
    assert [s["url"] for s in doc["shards"]] == [f"part-{i:04d}.tar" for i in range(4)]
    assert doc["label_key"] == "json:label" and doc["image_shape"] == [12, 10, 3]
    loader = StreamLoader("data/part-{0000..0003}.tar", batch_size=16, num_workers=2, seed=0,
                          balance=ClassBalancer("auto", SMOTE(k_neighbors=3)))
    real, counts = [], collections.Counter()
    for batch in loader:
        keep = ~batch.is_padding
        real += [k for k, s, p in zip(batch.keys, batch.is_synthetic.tolist(), batch.is_padding.tolist())
                 if not s and not p]
        counts.update(batch.hard_labels[keep].tolist())
    assert sorted(real) == [f"img{i:05d}" for i in range(90)], "every real sample exactly once"
    X = np.random.default_rng(0).normal(size=(90, 2))
    assert counts == collections.Counter(ImbSMOTE().fit_resample(X, np.array(labels))[1].tolist())


@pytest.mark.parametrize("fmt", ["npy", "jpg", "png"])
def test_index_built_from_shards_equals_the_written_one(tmp_path, fmt):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (50, 6, 7, 3), np.uint8)
    labels = rng.integers(0, 4, 50)
    written = write_shards((images, labels), str(tmp_path), image_format=fmt, maxcount=12, progress=False,
                           num_classes=4)
    before = json.loads((tmp_path / "index.json").read_text())
    os.remove(tmp_path / "index.json")
    built = build_index(written.urls, workers=2, progress=False)
    for s in before["shards"]:           # (the digests of the shards as written: an index built from shards has none)
        assert len(s.pop("digest")) == 32
    assert json.loads((tmp_path / "index.json").read_text()) == before
    doc = written.to_json()
    for s in doc["shards"]:
        del s["digest"]
    assert built.to_json() == doc


def test_plain_tar_with_png_and_cls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.mkdir("src")
    for i in range(6):
        Image.fromarray(np.full((5, 4), i * 20, np.uint8)).save(f"src/{i:03d}.png")
        open(f"src/{i:03d}.cls", "w").write(str(i % 2))
    subprocess.run(["tar", "-cf", "plain.tar", "-C", "src", *sorted(os.listdir("src"))], check=True)
    index = build_index("plain.tar", progress=False)
    assert (index.total, index.class_counts, index.image_shape, index.image_ext) == (6, [3, 3], (5, 4, 1), "png")
    x, y = next(iter(StreamLoader("plain.tar", batch_size=6, shuffle=0)))
    assert tuple(x.shape) == (6, 1, 5, 4) and y.tolist() == [0, 1, 0, 1, 0, 1]


def test_pipe_urls_are_indexed_by_shard_name_and_matched(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    jpeg_json_corpus("data", n=30, maxcount=10)
    urls = [f"pipe:cat data/part-{i:04d}.tar" for i in range(3)]
    with pytest.raises(ValueError, match="give out="):
        build_index(urls, progress=False)
    index = build_index(urls, "meta/index.json" if os.makedirs("meta") is None else None, progress=False)
    assert index.total == 30
    assert [s["url"] for s in json.load(open("meta/index.json"))["shards"]] == [f"part-{i:04d}.tar" for i in range(3)]
    loader = StreamLoader(urls, batch_size=7, index="meta/index.json")
    assert len(loader) == 5 and sorted(k for b in loader for k in b.keys) == [f"img{i:05d}" for i in range(30)]


def test_images_are_not_decoded(tmp_path, monkeypatch):
    """Only headers are read: a decoder that always fails does not stop indexing."""
    jpeg_json_corpus(tmp_path, n=8, maxcount=8)
    members = [(f"s{i}.npy", npy_bytes(np.zeros((9, 9, 3), np.uint8))) for i in range(3)]
    write_tar(str(tmp_path / "n.tar"), [m for i, m in enumerate(members) for m in (m, (f"s{i}.cls", b"1"))])

    def no_decoding(*a, **k):
        raise AssertionError("image pixels were decoded")
    Image.init()              # (importing PIL's plugins builds a Palm palette image; run alone, that came here)
    monkeypatch.setattr(Image.Image, "load", no_decoding)
    monkeypatch.setattr(np, "load", no_decoding)
    assert build_index(str(tmp_path / "part-0000.tar"), workers=1, progress=False).image_shape == (12, 10, 3)
    assert build_index(str(tmp_path / "n.tar"), str(tmp_path / "n.json"), workers=1, progress=False).image_shape \
        == (9, 9, 3)


def good(i, ext="npy"):
    data = npy_bytes(np.zeros((4, 4, 3), np.uint8)) if ext == "npy" else jpeg(i, (4, 4))
    return [(f"k{i:03d}.{ext}", data), (f"k{i:03d}.cls", str(i % 2).encode())]


@pytest.mark.parametrize("members,reason,key,value", [
    (good(0) + [("k001.npy", npy_bytes(np.zeros((4, 4, 3), np.uint8)))] + good(2), "no_label", "k001", "['npy']"),
    (good(0) + [("k001.cls", b"1")] + good(2), "no_image", "k001", "['cls']"),
    (good(0) + good(1, "jpg") + [("k001.npy", npy_bytes(np.zeros((4, 4, 3), np.uint8)))] + good(2),
     "mixed_image_ext", "k001", "['cls', 'jpg', 'npy']"),
    (good(0) + [("k001.npy", npy_bytes(np.zeros((4, 4, 3), np.uint8))), ("k001.cls", b"cat")], "bad_label",
     "k001", "b'cat'"),
    (good(0) + [("k001.npy", npy_bytes(np.zeros((4, 4, 3), np.uint8))), ("k001.cls", b"-2")], "bad_label",
     "k001", "-2"),
])
def test_inconsistent_shards_are_refused_naming_shard_and_key(tmp_path, members, reason, key, value):
    write_tar(str(tmp_path / "bad.tar"), members)
    with pytest.raises(StreamError) as info:
        build_index(str(tmp_path / "bad.tar"), progress=False)
    err = info.value
    assert (err.reason, err.key, err.shard) == (reason, key, str(tmp_path / "bad.tar"))
    assert value in str(err) and not (tmp_path / "index.json").exists()
    if reason in ("no_image", "no_label"):      # a tar in directory order splits samples (newcomer finding)
        assert "tar --sort=name" in str(err)


def test_samples_and_shards_of_different_image_types_are_indexed_and_read(tmp_path):
    """Newcomer finding: a scraped folder with .jpg and .png files could not be indexed ("image
    fields differ"), though the loader reads each sample by its own type. Now the index records
    no single type, and the loader reads every sample with its label."""
    write_tar(str(tmp_path / "a.tar"), good(0) + good(1, "jpg") + good(2))
    write_tar(str(tmp_path / "b.tar"), good(3, "jpg") + good(4, "jpg"))
    index = build_index([str(tmp_path / "a.tar"), str(tmp_path / "b.tar")], workers=2, progress=False)
    assert index.image_ext is None and index.total == 5 and index.class_counts == [3, 2]
    assert "mixed images" in index_builder.summary(index, 0.0)
    with StreamLoader(index.urls, 5, False, resize=4) as loader:
        batch = next(iter(loader))
    assert batch.keys == [f"k{i:03d}" for i in range(5)] and batch.targets.tolist() == [0, 1, 0, 1, 0]
    pytest.importorskip("nvidia.dali")
    with pytest.raises(StreamError, match='holds .npy images.*use decode="cpu"') as info:   # (red team: KeyError)
        list(StreamLoader(index.urls, 5, False, resize=4, decode="dali", device="cpu"))
    assert (info.value.reason, info.value.key) == ("mixed_decode", "k000")


def test_parallel_and_serial_agree_and_workers_run_at_once(tmp_path, monkeypatch):
    for s in range(5):
        write_tar(str(tmp_path / f"s{s}.tar"), [m for i in range(s * 10, s * 10 + 7) for m in good(i)])
    urls = [str(tmp_path / f"s{s}.tar") for s in range(5)]
    serial = build_index(urls, workers=1, progress=False).to_json()
    used = []
    real = index_builder._executor
    monkeypatch.setattr(index_builder, "_executor", lambda n, u: used.append(n) or real(n, u))
    assert build_index(urls, workers=3, progress=False).to_json() == serial and used == [3]


def test_cli_reports_errors_and_exits_1(tmp_path, capsys):
    write_tar(str(tmp_path / "bad.tar"), good(0) + [("k001.cls", b"1")])
    assert cli_main(["index", str(tmp_path / "bad.tar"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "streamaug index:" in err and "bad.tar" in err and "'k001'" in err
    assert cli_main(["index", str(tmp_path / "nope-{0..1}.tar"), "--quiet"]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_no_index_warns_once_with_the_exact_command_that_fixes_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    jpeg_json_corpus("data", n=30, maxcount=10)
    pattern = "data/part-{0000..0002}.tar"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loader = StreamLoader(pattern, batch_size=8, num_workers=2)
        keys = [k for b in loader for k in b.keys]
    messages = [str(w.message) for w in caught if "index" in str(w.message)]
    assert len(messages) == 1 and f"streamaug index '{pattern}'" in messages[0], messages
    assert "streamaug shards" not in messages[0]
    assert sorted(keys) == [f"img{i:05d}" for i in range(30)]
    with pytest.raises(TypeError, match="no len"):
        len(loader)
    with pytest.raises(ShardIndexError, match=r"streamaug index 'data/part-\{0000..0002\}.tar'"):
        StreamLoader(pattern, batch_size=8, balance=ClassBalancer())
    command = messages[0].split("`")[1]                  # run exactly what the warning says
    subprocess.run([STREAMAUG, *command.split()[1:2], pattern, "--quiet"], check=True, capture_output=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(StreamLoader(pattern, batch_size=8)) == 4


def test_the_no_index_warning_carries_the_loaders_label_key_and_num_classes(tmp_path, monkeypatch):
    """Before, the command named only the shards: for labels in ``json:y`` it failed (no label
    field it knows), and it dropped a ``num_classes`` wider than the labels present."""
    monkeypatch.chdir(tmp_path)
    os.makedirs("data")
    with wds.ShardWriter("data/part-%04d.tar", maxcount=10, verbose=0) as sink:
        for i in range(25):
            sink.write({"__key__": f"img{i:05d}", "jpeg": jpeg(i), "json": json.dumps({"y": i % 3}).encode()})
    pattern = "data/part-{0000..0002}.tar"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        StreamLoader(pattern, batch_size=8, label_key="json:y", num_classes=4)
    command, = [str(w.message).split("`")[1] for w in caught if "no index" in str(w.message)]
    assert command == f"streamaug index '{pattern}' --label-key json:y --num-classes 4"
    subprocess.run([STREAMAUG, *shlex.split(command)[1:], "--quiet"], check=True, capture_output=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loader = StreamLoader(pattern, batch_size=8, label_key="json:y", num_classes=4)
    assert len(loader) == 4 and loader.index.class_counts == [9, 8, 8, 0]
    assert sorted(y for b in loader for y in b.hard_labels.tolist()) == sorted(i % 3 for i in range(25))



def test_a_label_key_other_than_the_one_the_index_counted_is_refused_when_the_loader_is_built(tmp_path, monkeypatch):
    """Newcomer s32: the index counted .cls, the loader read json:label; it failed near the
    epoch's end with a hint to re-index (which rebuilt the same .cls index), and with
    on_error='skip' the balancer balanced the wrong counts."""
    monkeypatch.chdir(tmp_path)
    os.makedirs("data")
    with wds.ShardWriter("data/part-%04d.tar", maxcount=10, verbose=0) as sink:
        for i in range(30):
            sink.write({"__key__": f"img{i:05d}", "jpeg": jpeg(i), "cls": str(i % 3).encode(),
                        "json": json.dumps({"label": 0 if i < 20 else 1 + i % 2}).encode()})
    pattern = "data/part-{0000..0002}.tar"
    subprocess.run([STREAMAUG, "index", pattern, "--quiet"], check=True, capture_output=True)
    assert StreamLoader(pattern, label_key="cls").index.class_counts == [10, 10, 10]
    with pytest.raises(ValueError, match=r"label_key='json:label', but the index .*index.json' counted classes from "
                       r"'cls': .* Index the shards with --label-key json:label \(a file of its own: --out\)"):
        StreamLoader(pattern, batch_size=8, label_key="json:label")
    subprocess.run([STREAMAUG, "index", pattern, "--label-key", "json:label", "--out", "data/by_json.json",
                    "--quiet"], check=True, capture_output=True)
    loader = StreamLoader(pattern, batch_size=8, label_key="json:label", index="data/by_json.json")
    assert loader.index.class_counts == [20, 5, 5]
    with pytest.raises(ValueError, match=r"label_key='cls', but the index .*by_json.json' counted classes from 'json:label'"):
        StreamLoader(pattern, label_key="cls", index="data/by_json.json")

def name_labelled_shards(names, labels, field="json"):
    os.makedirs("data", exist_ok=True)
    with wds.ShardWriter("data/part-%04d.tar", maxcount=8, verbose=0) as sink:
        for i, y in enumerate(labels):
            label = json.dumps({"label": names[y]}).encode() if field == "json" else names[y].encode()
            sink.write({"__key__": f"img{i:05d}", "jpeg": jpeg(i), field: label})
    return f"data/part-{{0000..{(len(labels) - 1) // 8:04d}}}.tar"


@pytest.mark.parametrize("field", ["json", "txt"])
def test_labels_written_as_class_names_are_read_as_their_ids(tmp_path, monkeypatch, capsys, field):
    """Newcomer: ShardWriter shards labelled ``{"label": "circle"}`` (or a .txt ``circle``) could not
    be indexed, and the error pointed at another field; an index-free loader's error did not
    say how names are read. Now ``--label-names --class-names`` maps
    the names, the index keeps them, and the loader (workers too) reads each name as its id;
    re-indexing keeps both."""
    monkeypatch.chdir(tmp_path)
    names = ["circle", "square", "triangle"]
    pattern = name_labelled_shards(names, [0] * 12 + [1] * 6 + [2] * 3, field)
    with pytest.raises(StreamError, match=r"key 'img00000'.*read through an index that lists the names: streamaug "
                       r"index SHARDS --label-names --class-names NAMES"):
        next(iter(StreamLoader(pattern, batch_size=4, shuffle=False, index=False,
                               label_key="json:label" if field == "json" else None)))
    assert cli_main(["index", pattern, "--quiet"]) == 1
    assert "pass --label-names with the names in id order" in capsys.readouterr().err
    assert cli_main(["index", pattern, "--quiet", "--label-names", "--class-names", "circle,square"]) == 1
    assert "'triangle' is not one of the 2 class names the labels are written as ('circle', 'square')" in \
        capsys.readouterr().err
    assert cli_main(["index", pattern, "--quiet", "--label-names", "--class-names", ",".join(names)]) == 0
    assert cli_main(["index", pattern, "--quiet"]) == 0                    # re-indexing keeps the names
    index = ShardIndex.load("data/index.json")
    assert index.class_names == names and index.label_names and index.class_counts == [12, 6, 3]
    loader = StreamLoader(pattern, batch_size=7, shuffle=False, num_workers=2, balance=ClassBalancer())
    got = [y for b in loader for y, pad in zip(b.hard_labels.tolist(), b.is_padding.tolist()) if not pad]
    assert sorted(got) == [0] * 12 + [1] * 12 + [2] * 12


def test_names_that_look_like_integers_are_names_and_integer_labels_stay_integers(tmp_path, monkeypatch, capsys):
    """Red team B: with names tried after int(), names ["1", "2", "3"] (1-based classes) read "1"
    as id 1, silently. Names are read by name only; and an index that only names the classes
    of integer labels (streamaug shards writes such) still reads the integers as ids."""
    monkeypatch.chdir(tmp_path)
    pattern = name_labelled_shards(["1", "2", "3"], [0] * 5 + [1] * 3 + [2] * 2, "txt")
    assert cli_main(["index", pattern, "--quiet", "--label-names", "--class-names", "1,2,3"]) == 0
    assert ShardIndex.load("data/index.json").class_counts == [5, 3, 2]
    images = np.zeros((12, 4, 4, 3), np.uint8)
    folder = write_shards((images, np.arange(12) % 11), "ints", class_names=[str(c) for c in [1, 10, *range(2, 10), 11]],
                          progress=False)
    assert not folder.label_names and folder.class_ids is None
    got = sorted(y for b in StreamLoader(folder.urls, batch_size=12) for y in b.hard_labels.tolist())
    assert got == sorted((np.arange(12) % 11).tolist())
    assert cli_main(["index", pattern, "--quiet", "--class-names", "a,b", "--num-classes", "3", "--out", "x.json"]) == 1
    assert "class_names has 2 names but num_classes=3" in capsys.readouterr().err
    assert cli_main(["index", "data/part-9999.tar", "--quiet", "--out", "y.json"]) == 1
    assert "on_error='skip'" not in capsys.readouterr().err       # (the loader's remedy, not the indexer's)


def test_no_message_suggests_streamaug_shards_for_existing_shards():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    found = subprocess.run(["grep", "-rn", "streamaug shards` or\\|write one with `streamaug shards",
                            os.path.join(root, "loader")], capture_output=True, text=True).stdout
    assert found == ""


@pytest.mark.parametrize("command,reason,message", [
    ("cat {t}; exit 3", "pipe_failed", "exited with status 3"),
    ("head -c 3000 {t}", "truncated_shard", "corrupt or truncated")])
def test_failing_or_truncated_pipe_is_refused(tmp_path, command, reason, message):
    write_tar(str(tmp_path / "a.tar"), [m for i in range(4) for m in good(i)])
    url = "pipe:" + command.format(t=tmp_path / "a.tar")
    with pytest.raises(StreamError, match=message) as info:
        build_index(url, str(tmp_path / "index.json"), progress=False)
    assert info.value.reason == reason and info.value.shard == url
    assert not (tmp_path / "index.json").exists()


def test_a_tar_not_written_in_name_order_is_refused_with_the_fix(tmp_path, monkeypatch):
    """`tar cf x.tar dir/` stores files in directory order: a sample's image and label apart."""
    monkeypatch.chdir(tmp_path)
    members = [(f"{i:03d}.png", npy_bytes(np.zeros((2, 2), np.uint8))) for i in range(3)]
    write_tar("apart.tar", [(n.replace(".png", ".npy"), b) for n, b in members] +
              [(f"{i:03d}.cls", b"1") for i in range(3)])
    with pytest.raises(StreamError, match="tar --sort=name"):
        build_index("apart.tar", progress=False)


def test_cli_warnings_read_as_the_commands_not_as_python_source(tmp_path):
    """Newcomer: a warning printed as '/.../cli/__init__.py:58: RuntimeWarning: ...' and the source line."""
    for name in ("a", "b"):
        os.makedirs(tmp_path / "imf" / name)
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "imf" / name / "x.png")
    (tmp_path / "imf" / "a" / "notes.txt").write_text("x")
    done = subprocess.run([sys.executable, "-c", "import sys; from streamaug.cli import main; "
                           "sys.exit(main(['shards', 'imf', 'out']))"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "streamaug shards: warning: image folder 'imf': passed over 1 entries" in done.stderr
    assert "RuntimeWarning" not in done.stderr and "__init__.py" not in done.stderr


def test_cli_shards_and_index_explain_what_to_pass(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    np.savez("xy.npz", x=np.zeros((4, 8, 8, 3), np.uint8), y=np.zeros(4, int))
    assert cli_main(["shards", "xy.npz", "out"]) == 1
    assert "must hold arrays named 'images'" in capsys.readouterr().err
    assert cli_main(["shards", "nonexist", "out"]) == 1
    assert "streamaug shards: source 'nonexist' is not a directory" in capsys.readouterr().err
    os.mkdir("d")
    assert cli_main(["index", "d/", "--quiet"]) == 1
    assert "folder 'd/' holds no shards (no .tar/.tar.gz/.tgz file in it); an image folder (one subfolder per " \
        "class) is written to shards first: streamaug shards d/ OUT" in capsys.readouterr().err     # (newcomer)
    for sub in ("d/a", "d/b"):                          # red team s40: shards in subfolders got that advice too
        os.makedirs(sub)
        write_tar(os.path.join(sub, "s.tar"), [("k.cls", b"0"), ("k.npy", npy_bytes(np.zeros((4, 4, 3), np.uint8)))])
    with pytest.raises(ValueError, match=r"folder 'd' holds no shards \(no .tar/.tar.gz/.tgz file in it\); its "
                                         r"subfolders hold 2 shards, in 2 folders \('d/a', 'd/b'\), most likely "
                                         r"splits such as train and val: pass the folder to read"):
        StreamLoader("d", index=False)                  # (review s40: a pattern over both read val with train)
    os.makedirs("d/a/deeper")
    os.rename("d/b/s.tar", "d/a/deeper/s.tar")
    os.rename("d/a/s.tar", "d/a/deeper/t.tar")
    with pytest.raises(ValueError, match=r"its subfolder 'a/deeper' holds 2 shards: pass 'd/a/deeper'"):
        StreamLoader("d", index=False)
    assert len(list(StreamLoader("d/a/deeper", index=False, batch_size=2, shuffle=0))) == 1
    assert cli_main(["index", "d/", "--quiet", "--workers", "-2"]) == 1
    assert "workers must be an int >= 1 (shards read at once), got -2" in capsys.readouterr().err
    assert cli_main(["index", "wds/*.tar", "--quiet"]) == 1
    assert f"no file matches the pattern 'wds/*.tar' (relative to {str(tmp_path)!r})" in capsys.readouterr().err


@pytest.mark.parametrize("given", ["wds", "wds/", "wds/*.tar", "./wds/train-00000?.tar", "~/wds",
                                   "~/wds/train-{000000..000002}.tar"])
def test_a_folder_or_a_glob_pattern_names_its_shards_in_order(tmp_path, monkeypatch, capsys, given):
    """A newcomer passed "wds/*.tar" and got "index does not list shard 'wds/*.tar'", and a folder
    "Is a directory" (the demo and preview take folders). Both now name the shards, sorted. A
    folder passes over hidden files (macOS's ``._x.tar``) and folders named like shards, as a
    shell's ``*`` does; ``~`` is expanded in every form (red team: "shard does not exist")."""
    from streamaug.loader import expand_urls

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    os.mkdir("wds")
    with wds.ShardWriter("wds/train-%06d.tar", maxcount=5, verbose=0) as sink:
        for i in range(12):
            sink.write({"__key__": f"k{i:03d}", "npy": np.full((4, 4, 3), i, np.uint8), "cls": i % 2})
    open("wds/notes.txt", "w").close()
    with open("wds/._train-000000.tar", "wb") as f:
        f.write(b"AppleDouble junk")
    os.mkdir("wds/sub.tar")
    shards = [f"train-{i:06d}.tar" for i in range(3)]
    assert [os.path.basename(u) for u in expand_urls(given)] == shards
    assert cli_main(["index", given, "--quiet"]) == 0
    capsys.readouterr()
    with StreamLoader(given, batch_size=4, shuffle=False) as loader:
        assert [k for b in loader for k in b.keys] == [f"k{i:03d}" for i in range(12)]


def test_reindexing_keeps_the_class_names_streamaug_shards_wrote(tmp_path):
    for name, value in (("bird", 0), ("cat", 90), ("dog", 180)):
        os.makedirs(tmp_path / "imgs" / name)
        for i in range(3):
            Image.fromarray(np.full((6, 6, 3), value + i, np.uint8)).save(tmp_path / "imgs" / name / f"{i}.png")
    written = write_shards(str(tmp_path / "imgs"), str(tmp_path / "out"), image_format="png", maxcount=4,
                           progress=False)
    assert written.class_names == ["bird", "cat", "dog"]
    again = build_index(written.urls, progress=False)
    assert again.class_names == ["bird", "cat", "dog"] and again.class_counts == written.class_counts
    assert build_index(written.urls, num_classes=5, progress=False).class_names == [str(i) for i in range(5)]
    two = write_shards((np.zeros((4, 6, 6, 3), np.uint8), np.array([0, 1, 0, 1])), str(tmp_path / "two"),
                       maxcount=4, progress=False)
    import shutil
    shutil.copy(tmp_path / "out" / "index.json", tmp_path / "two" / "index.json")   # 3 named classes there
    again = build_index(two.urls, progress=False)
    assert again.num_classes == 2 and again.class_names == ["0", "1"]                # not the old 3 names


def test_writing_over_an_earlier_write_warns_of_its_leftover_shards(tmp_path):
    rng = np.random.default_rng(0)
    write_shards((rng.integers(0, 256, (40, 8, 8), np.uint8), rng.integers(0, 3, 40)), str(tmp_path), maxcount=10,
                 progress=False)                      # grayscale (N, H, W) is one channel
    with pytest.warns(RuntimeWarning, match="still holds 3 train-\\*.tar shard\\(s\\) .*train-000001.tar"):
        index = write_shards((rng.integers(0, 256, (10, 8, 8, 3), np.uint8), rng.integers(0, 3, 10)),
                             str(tmp_path), maxcount=10, progress=False)
    assert index.total == 10


def test_index_on_error_skip_indexes_past_an_image_that_does_not_parse(tmp_path, monkeypatch, capsys):
    """One cut JPEG aborted the whole index (newcomer run). Under --on-error skip the sample is
    indexed with its label, counted and named; the loader then meets it by its own on_error."""
    monkeypatch.chdir(tmp_path)

    def jpg(i: int) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(np.full((8, 8, 3), i * 20, np.uint8)).save(buf, format="JPEG")
        return buf.getvalue()
    members = []
    for i in range(6):
        data = jpg(i)[:12] if i == 2 else b"GIF89a not a jpeg" if i == 4 else jpg(i)
        members += [(f"s{i}.jpg", data), (f"s{i}.cls", str(i % 2).encode())]
    write_tar("x.tar", members)
    assert cli_main(["index", "x.tar", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "'s2'" in err and "--on-error skip indexes past images the loader refuses" in err
    assert cli_main(["index", "x.tar", "--quiet", "--on-error", "skip"]) == 0
    out, err = capsys.readouterr()
    assert "indexed 1 shards, 6 samples, 2 classes [3, 3], .jpg images 8x8x3" in out
    assert "indexed past 2 images the loader refuses" in err and "'x.tar', key 's2'" in err
    with pytest.warns(RuntimeWarning, match="indexed past 2 images the loader refuses"):
        build_index("x.tar", progress=False, on_error="skip")
    with StreamLoader("x.tar", batch_size=6, shuffle=False, on_error="skip") as loader:
        batch = next(iter(loader))
    assert [k for k, p in zip(batch.keys, batch.is_padding.tolist()) if not p] == ["s0", "s1", "s3", "s5"]
    assert sum(loader.stats.skipped.values()) == 2
    with pytest.raises(StreamError, match="'s2'"):
        list(StreamLoader("x.tar", batch_size=6, shuffle=False))
    with pytest.raises(ValueError, match="on_error"):
        build_index("x.tar", progress=False, on_error="ignore")


def test_index_takes_the_loaders_image_and_member_limits(tmp_path, capsys):
    """Red team: an image over the pixel limit could be indexed only by skipping it, since
    neither build_index nor `streamaug index` took the limit the loader takes; the index then
    had no shape, and the loader read the grayscale images as 3 channels."""
    from streamaug.loader.decode_limits import DecodeLimits

    buf = io.BytesIO()
    Image.fromarray(np.zeros((100, 100), np.uint8)).save(buf, format="PNG")
    write_tar(str(tmp_path / "big.tar"), [("k0.png", buf.getvalue()), ("k0.cls", b"0")])
    url = str(tmp_path / "big.tar")
    with pytest.raises(StreamError, match="over max_image_pixels=5000.*streamaug index --max-image-pixels"):
        build_index(url, progress=False, limits=DecodeLimits(max_image_pixels=5000))
    assert cli_main(["index", url, "--quiet", "--max-image-pixels", "5000"]) == 1
    assert "over max_image_pixels=5000" in capsys.readouterr().err
    assert cli_main(["index", url, "--quiet", "--max-image-pixels", "10000", "--max-member-bytes", "100000"]) == 0
    capsys.readouterr()
    assert cli_main(["index", url, "--quiet", "--max-image-pixels", "0"]) == 1
    assert "max_image_pixels must be a positive int, got 0" in capsys.readouterr().err
    assert cli_main(["index", url, "--quiet", "--max-member-bytes", "10"]) == 1
    assert "over max_member_bytes=10 " in capsys.readouterr().err
    with StreamLoader(url, 1, max_image_pixels=10000) as loader:
        assert next(iter(loader)).images.shape == (1, 1, 100, 100)


def test_indexing_one_split_does_not_replace_the_index_of_another_in_the_same_folder(tmp_path, monkeypatch, capsys):
    """Newcomer finding: train and val shards in one folder (img2dataset's layout); indexing the
    val shard replaced the train index beside it without a word, and the train loader then found
    none of its 6 shards listed. Now that is refused, naming the shards it would drop."""
    monkeypatch.chdir(tmp_path)
    os.mkdir("c")
    with wds.ShardWriter("c/train-%06d.tar", maxcount=4, verbose=0) as sink:
        for i in range(8):
            sink.write({"__key__": f"t{i:03d}", "npy": np.full((4, 4, 3), i, np.uint8), "cls": i % 2})
    with wds.ShardWriter("c/val-%06d.tar", maxcount=4, verbose=0) as sink:
        for i in range(3):
            sink.write({"__key__": f"v{i:03d}", "npy": np.full((4, 4, 3), i, np.uint8), "cls": i % 2})
    assert cli_main(["index", "c/train-*.tar", "--quiet"]) == 0
    capsys.readouterr()
    assert cli_main(["index", "c/val-000000.tar", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "already lists 2 other shard(s) still there (train-000000.tar, train-000001.tar)" in err and "--out" in err
    assert cli_main(["index", "c/val-000000.tar", "--out", "c/val.json", "--quiet"]) == 0
    with StreamLoader("c/train-*.tar", 4, False) as train, \
            StreamLoader("c/val-*.tar", 4, False, index="c/val.json") as val:
        assert len(train) == 2 and len(val) == 1
    with pytest.raises(ShardIndexError, match=r"it lists 2: train-000000.tar, train-000001.tar\). Index these shards"):
        StreamLoader("c/val-*.tar", 4, False)
    for name in ("c/train-000000.tar", "c/train-000001.tar"):
        os.remove(name)                                   # gone: re-indexing in place drops nothing still there
    assert cli_main(["index", "c/val-000000.tar", "--quiet"]) == 0


def test_the_not_dropping_check_knows_command_urls_and_covers_write_shards(tmp_path, monkeypatch, capsys):
    """Red team on the check above: re-indexing the same ``pipe:`` shards in place was refused
    (a command URL is stored by its file name), and ``streamaug shards --prefix val`` into the
    train folder still replaced the train index. numpy ints, duplicate class names and ``~`` are
    taken or refused by the writers as by the loader."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    arrays = (rng.integers(0, 255, (12, 4, 4, 3), np.uint8), np.arange(12) % 3)
    index = write_shards(arrays, "p", maxcount=6, progress=False)
    pipes = [f"pipe:cat {u}" for u in index.urls]
    for _ in range(2):                                   # the same command URLs, indexed twice in place
        assert build_index(pipes, out="p/index.json", progress=False).total == 12
    with pytest.raises(ValueError, match=r"lists 2 shard\(s\) of another split still there \(train-000000.tar, "
                                         r"train-000001.tar\).*a folder of its own"):
        write_shards(arrays, "p", prefix="val", progress=False)
    assert cli_main(["shards", "digits", "p", "--prefix", "val"]) == 1
    assert "of another split" in capsys.readouterr().err
    assert write_shards(arrays, "p", maxcount=6, progress=False).total == 12       # the same split again
    assert write_shards(arrays, "q", num_classes=np.int64(4), progress=False).num_classes == 4
    assert build_index("q", num_classes=np.int64(5), progress=False).num_classes == 5
    for bad in (dict(num_classes=True), dict(class_names=["x", "x", "y"])):
        with pytest.raises(ValueError, match="num_classes must be an int|class_names must be distinct"):
            build_index("q", progress=False, **bad)
        with pytest.raises(ValueError, match="num_classes must be an int|class_names must be distinct"):
            write_shards(arrays, "r", progress=False, **bad)
    assert not os.path.exists("r")                       # refused before anything is written
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    write_shards(arrays, "~/s", progress=False)
    assert os.path.exists(tmp_path / "home" / "s" / "index.json") and not os.path.exists("~")



def test_indexing_into_another_file_keeps_the_names_and_the_shape_streamaug_shards_wrote(tmp_path, monkeypatch):
    """Newcomer s32: `streamaug index ts/ --out ts/other.json` (one index file per split, as the
    README says) named the classes '0', '1'; and a folder of gray and colour PNGs of one size
    was recorded with no shape by `streamaug shards`, with (H, W, 3) by `streamaug index`."""
    monkeypatch.chdir(tmp_path)
    for c in ("cat", "dog"):
        os.makedirs(f"imgs/{c}")
        for i in range(3):
            Image.fromarray(np.full((6, 5) + ((3,) if i else ()), i, np.uint8)).save(f"imgs/{c}/{i}.png")
    written = write_shards("imgs", "ts", progress=False)
    assert written.class_names == ["cat", "dog"] and written.image_shape == (6, 5, 3)
    subprocess.run([STREAMAUG, "index", "ts/", "--out", "ts/other.json", "--quiet"], check=True, capture_output=True)
    other = ShardIndex.load("ts/other.json")
    assert other.class_names == ["cat", "dog"] and other.image_shape == (6, 5, 3)
    os.remove("ts/index.json")                          # (nothing left to take the names from)
    subprocess.run([STREAMAUG, "index", "ts/", "--out", "ts/third.json", "--quiet"], check=True, capture_output=True)
    assert ShardIndex.load("ts/third.json").class_names == ["0", "1"]



def test_names_are_kept_only_for_the_label_field_they_name(tmp_path, monkeypatch):
    """Red team s32: indexing another label field (as the loader's label_key refusal advises)
    took the names of the cls classes for another taxonomy."""
    monkeypatch.chdir(tmp_path)
    os.makedirs("data")
    with wds.ShardWriter("data/part-%04d.tar", maxcount=10, verbose=0) as sink:
        for i in range(12):
            sink.write({"__key__": f"img{i:05d}", "jpeg": jpeg(i), "cls": str(i % 3).encode(),
                        "json": json.dumps({"shape": (i // 4) % 3}).encode()})
    build_index("data/", class_names=["cat", "dog", "truck"], progress=False)
    assert build_index("data/", out="data/again.json", progress=False).class_names == ["cat", "dog", "truck"]
    shape = build_index("data/", out="data/shape.json", label_key="json:shape", progress=False)
    assert shape.class_names == ["0", "1", "2"] and shape.label_key == "json:shape"


def test_class_ids_no_sample_has_below_the_largest_label_are_warned_of(tmp_path):
    """Newcomer 2, s32: one label 7 among 0..3 made 8 classes, 4..6 empty, and the default
    balancer repeated the one 7 forty times an epoch; nothing said so."""
    write_tar(str(tmp_path / "a.tar"), [m for i, y in enumerate([0, 1, 2, 3, 0, 1, 7])
                                         for m in ((f"s{i}.npy", npy_bytes(np.zeros((4, 4, 3), np.uint8))),
                                                   (f"s{i}.cls", str(y).encode()))])
    with pytest.warns(RuntimeWarning, match=r"class ids \[4, 5, 6\] have no sample below the largest label 7 "
                      r"\(1 sample\(s\)\): if 7 is a label outside your classes, --num-classes N"):
        build_index(str(tmp_path / "a.tar"), progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_index(str(tmp_path / "a.tar"), num_classes=8, progress=False)
    with pytest.raises(StreamError, match="label is outside num_classes=4"):
        build_index(str(tmp_path / "a.tar"), num_classes=4, progress=False)


def test_an_index_that_names_no_label_field_takes_the_loaders(tmp_path):
    """Red team 3, s32: a hand-written index (no label_key) over .label shards read .cls, and the
    label_key='label' its error advised was refused as another field than the index's."""
    members = [m for i in range(6) for m in ((f"s{i}.npy", npy_bytes(np.zeros((4, 4, 3), np.uint8))),
                                             (f"s{i}.label", str(i % 2).encode()))]
    write_tar(str(tmp_path / "a.tar"), members)
    json.dump({"format": "streamaug-index", "version": 1, "num_classes": 2,
               "shards": [{"url": "a.tar", "count": 6, "class_counts": [3, 3]}]}, open(tmp_path / "index.json", "w"))
    with pytest.raises(StreamError, match="sample has no 'cls' label; label_key= may name what it has: label"):
        list(StreamLoader(str(tmp_path / "a.tar"), batch_size=3, shuffle=0))
    loader = StreamLoader(str(tmp_path / "a.tar"), batch_size=3, shuffle=0, label_key="label")
    assert [y for b in loader for y in b[1].tolist()] == [0, 1, 0, 1, 0, 1]
    assert build_index(str(tmp_path / "a.tar"), out=str(tmp_path / "built.json"), progress=False).label_key == "label"


def test_a_label_past_the_class_limit_is_refused_before_a_count_per_class_is_made(tmp_path, capsys):
    """Red team s33: one .cls of 10,000,000 made the index builder count 10 million classes
    (25 s, 1.5 GB, a 199 MB index.json); 10**22 ran for minutes. The loader would refuse that
    index anyway (MAX_NUM_CLASSES); now the builder refuses the label, naming it."""
    from streamaug.loader.shard_index import MAX_NUM_CLASSES
    members = [(f"s{i}.npy", npy_bytes(np.zeros((4, 4, 3), np.uint8))) for i in range(3)]
    for big in (MAX_NUM_CLASSES, 10 ** 22):
        write_tar(str(tmp_path / "a.tar"), [m for i, m in enumerate(members)
                                            for m in (m, (f"s{i}.cls", str(big if i == 1 else i).encode()))])
        with pytest.raises(StreamError, match=f"label would make {big + 1} classes, over the 100,000") as info:
            build_index(str(tmp_path / "a.tar"), progress=False)
        assert (info.value.key, info.value.value) == ("s1", big)
    write_tar(str(tmp_path / "a.tar"), [m for i, m in enumerate(members)
                                        for m in (m, (f"s{i}.cls", str(MAX_NUM_CLASSES - 1 if i == 1 else i).encode()))])
    with pytest.warns(RuntimeWarning, match="have no sample"):
        assert cli_main(["index", str(tmp_path / "a.tar"), "--workers", "1"]) in (0, None)
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert f"{MAX_NUM_CLASSES} classes [1, 0, 1, 0," in line and f"; {MAX_NUM_CLASSES - 3} with no sample]" in line
    assert len(line) < 500, "the summary is one short line, not 100,000 counts"


def test_a_plain_tar_of_an_image_folder_is_told_to_write_shards_from_the_folder(tmp_path):
    """Newcomer s33: `tar -cf` of a class-subfolder image folder got the hint that the tar was not
    written in name order; it holds no labels at all, and `streamaug shards` is what labels it."""
    import shutil
    import tarfile

    for c in ("cat", "dog"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(2):
            (tmp_path / "imgs" / c / f"{i}.jpg").write_bytes(jpeg(i))
    with tarfile.open(tmp_path / "a.tar", "w") as tar:
        for path in sorted((tmp_path / "imgs").rglob("*.jpg")):
            tar.add(path, arcname="./" + str(path.relative_to(tmp_path / "imgs")))
    for read in (lambda: build_index(str(tmp_path / "a.tar"), progress=False),
                 lambda: next(iter(StreamLoader(str(tmp_path / "a.tar"), index=False, shuffle=0)))):
        with pytest.raises(StreamError, match=r"looks like a tar of an image folder \(one subfolder per class\)\. If "
                                              r"it holds no label files, write shards from the folder itself, "
                                              r"`streamaug shards FOLDER OUT`.*; if it does, the tar was not written "
                                              r"in name order") as info:
            read()
        # (red team s40: an unsorted tar whose label files sit in the subfolders was told it held none)
        assert info.value.key == "./cat/0"
    shutil.rmtree(tmp_path / "imgs" / "dog")
    (tmp_path / "flat").mkdir()
    with tarfile.open(tmp_path / "b.tar", "w") as tar:           # no subfolder: no such guess
        tar.add(tmp_path / "imgs" / "cat" / "0.jpg", arcname="0.jpg")
    with pytest.raises(StreamError, match="name order") as info:
        build_index(str(tmp_path / "b.tar"), progress=False)
    assert "image folder" not in str(info.value)


def test_file_names_with_dots_are_named_as_the_cause(tmp_path):
    """Red team s40: a name-sorted tar of img.000.jpg, img.000.cls, ... is one sample 'img' with
    fields '000.jpg', '000.cls', ...; the hint said the tar was not in name order."""
    write_tar(str(tmp_path / "d.tar"), [m for i in range(3) for m in ((f"img.{i:03d}.cls", b"1"),
                                                                          (f"img.{i:03d}.jpg", jpeg(i)))])
    for read in (lambda: build_index(str(tmp_path / "d.tar"), progress=False),
                 lambda: next(iter(StreamLoader(str(tmp_path / "d.tar"), index=False, shuffle=0)))):
        with pytest.raises(StreamError, match=r"key 'img': sample has no image field .*\. Its fields have dots in "
                                              r"them \(000\.cls, 000\.jpg, 001\.cls, \.\.\.\): .* Rename the files "
                                              r"without dots before the extension \(img_000\.jpg\)") as info:
            read()
        assert "name order" not in str(info.value)


def test_a_json_without_the_label_field_is_named_by_the_index_as_by_the_loader(tmp_path):
    """Red team s40: a .json lacking "label" after samples that had one was, to `streamaug index`,
    a sample with no label field from a tar out of name order; the loader named the field."""
    members = [m for i in range(4) for m in ((f"k{i}.json", b'{"labl": 1}' if i == 2 else b'{"label": 0}'),
                                             (f"k{i}.jpg", jpeg(i)))]
    write_tar(str(tmp_path / "j.tar"), members)
    for read in (lambda: build_index(str(tmp_path / "j.tar"), progress=False),
                 lambda: list(StreamLoader(str(tmp_path / "j.tar"), index=False, shuffle=0, batch_size=4))):
        with pytest.raises(StreamError, match=r"key 'k2': label in 'json:label' is not an integer class: \.json has "
                                              r"no field 'label'; its fields there: labl") as info:
            read()
        assert "name order" not in str(info.value)
    write_tar(str(tmp_path / "first.tar"), members[4:6] + members[:4])      # the sample without it comes first
    with pytest.raises(StreamError, match=r"key 'k2': sample has no label field .*\. It has a \.json: if a field of "
                                          r"it holds the class, choose that field with --label-key json:FIELD"):
        build_index(str(tmp_path / "first.tar"), progress=False)
