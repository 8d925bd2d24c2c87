"""Hostile and broken index files (issue #14: security, limits, messages). Each case builds its own files."""
from __future__ import annotations

import json
import resource
import socket
import subprocess
import sys

import numpy as np
import pytest

from shard_factory import good_members, write_tar
from streamaug.loader import ShardIndex, ShardIndexError, StreamError, StreamLoader, write_shards
from streamaug.loader.shard_index import MAX_NUM_CLASSES


@pytest.fixture
def dataset(tmp_path, monkeypatch):
    """A downloaded dataset folder: ``ds/train-000000.tar`` and its honest index; cwd = tmp_path."""
    monkeypatch.chdir(tmp_path)
    images = np.zeros((6, 4, 4, 3), np.uint8)
    write_shards((images, np.arange(6) % 2), "ds", maxcount=6, progress=False)
    return tmp_path / "ds"


def doc_with_url(dataset, url):
    doc = json.load(open(dataset / "index.json"))
    doc["shards"][0]["url"] = url
    json.dump(doc, open(dataset / "index.json", "w"))
    return doc


@pytest.mark.parametrize("url", [
    "pipe:touch {marker}; cat train-000000.tar",
    "pipe:touch {marker}",
    "s3://bucket/train-000000.tar",
    "ais://x/train-000000.tar",
    "file://{dataset}/train-000000.tar",
    "{dataset}/train-000000.tar",
    "../ds/../../etc/passwd",
    "sub/../../other/train-000000.tar",
])
def test_index_may_name_only_relative_paths_under_its_folder_or_http(dataset, url):
    marker = dataset.parent / "marker"
    doc_with_url(dataset, url.format(marker=marker, dataset=dataset))
    with pytest.raises(ShardIndexError, match=r"shards\[0\]\.url is refused") as info:
        ShardIndex.load("ds/index.json")
    assert "ds/index.json" in str(info.value)
    for make in (lambda: StreamLoader("ds/train-000000.tar", batch_size=2),          # index found beside
                 lambda: StreamLoader("ds/train-000000.tar", batch_size=2, index="ds/index.json")):
        with pytest.raises(ShardIndexError, match="refused"):
            list(make())
    assert not marker.exists(), "a command from an index file ran"


def test_preview_command_does_not_run_an_index_command(dataset):
    """`streamaug preview --data` passes index URLs to the loader: a hostile folder must not run code."""
    pytest.importorskip("matplotlib")
    marker = dataset.parent / "marker"
    doc_with_url(dataset, f"pipe:touch {marker}; cat train-000000.tar")
    run = subprocess.run([sys.executable, "-m", "streamaug.cli", "preview", "--data", "ds", "--out", "p.png"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "refused" in run.stderr and not marker.exists()


def test_callers_own_pipe_urls_and_http_entries_are_allowed(dataset):
    doc = json.load(open(dataset / "index.json"))
    assert ShardIndex.from_json(dict(doc, shards=[dict(doc["shards"][0], url="pipe:cat ds/train-000000.tar")]))
    doc_with_url(dataset, "https://example.org/data/train-000000.tar")
    assert ShardIndex.load("ds/index.json").urls == ["https://example.org/data/train-000000.tar"]
    keys = [k for b in StreamLoader("pipe:cat ds/train-000000.tar", batch_size=3, index=False) for k in b.keys]
    assert len(keys) == 6


def test_num_classes_bomb_is_refused_before_allocating(tmp_path):
    path = tmp_path / "index.json"
    path.write_text(json.dumps({"format": "streamaug-index", "version": 1, "num_classes": 1_000_000_000,
                                "shards": [{"url": "a.tar", "count": 0, "class_counts": []}]}))
    assert path.stat().st_size < 200
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ShardIndexError, match=r"'num_classes' is over the limit of 100000.*max_classes=") as info:
        ShardIndex.load(str(path))
    assert "1000000000" in str(info.value) and str(path) in str(info.value)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000      # KiB: nothing allocated
    doc = json.loads(path.read_text())
    doc.update(num_classes=MAX_NUM_CLASSES + 1)
    doc["shards"][0]["class_counts"] = [0] * (MAX_NUM_CLASSES + 1)
    path.write_text(json.dumps(doc))
    with pytest.raises(ShardIndexError, match="over the limit"):
        ShardIndex.load(str(path))
    assert ShardIndex.load(str(path), max_classes=MAX_NUM_CLASSES + 1).num_classes == MAX_NUM_CLASSES + 1


@pytest.mark.parametrize("label", [2_000_000, 10**7])     # (10**9 took 24 GB: a regression must not OOM CI)
def test_a_label_that_is_no_class_id_is_refused_by_the_writer_before_counting(tmp_path, label):
    """Red team s36: write_shards kept a count per class up to the label: 1e9 grew it to 24 GB
    (the OOM killer), and 2,000,000 wrote a 39 MB index.json the loader then refused."""
    import tracemalloc

    images = np.zeros((3, 4, 4, 3), np.uint8)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=rf"label {label} \(sample 1\) would make {label + 1:,} classes, "
                           r"over the 100,000 an index may hold .*no class id .*num_classes=N"):
            write_shards((images, np.array([0, label, 1])), str(tmp_path / "out"), progress=False)
        assert tracemalloc.get_traced_memory()[1] < 10 << 20, "nothing per class was allocated"
    finally:
        tracemalloc.stop()
    assert not (tmp_path / "out").exists(), "refused before the folder is made"
    with pytest.raises(ValueError, match="label 2000000 is out of range for num_classes=2"):
        write_shards((images, np.array([0, 2_000_000, 1])), str(tmp_path / "out"), num_classes=2, progress=False)
    with pytest.raises(ValueError, match="200,000 classes, over the 100,000"):
        write_shards((images, np.array([0, 1, 1])), str(tmp_path / "out"), num_classes=200_000, progress=False)
    # under the class limit, a count per class per shard can still make an index over the loader's size limit
    with pytest.raises(ValueError, match=r"50,000 classes in 400 or more shards of maxcount=1 make an index.json of "
                       r"at least 114 MiB .*over the 64 MiB the loader reads .*maxcount="):
        write_shards((np.zeros((400, 2, 2, 3), np.uint8), np.arange(400)), str(tmp_path / "out"), maxcount=1,
                     num_classes=50_000, progress=False)


def test_index_size_limit(dataset):
    doc = json.load(open(dataset / "index.json"))
    doc["padding"] = "x" * 5000
    json.dump(doc, open(dataset / "index.json", "w"))
    with pytest.raises(ShardIndexError, match=r"is \d+ bytes, over the limit of 4096 .*max_bytes="):
        ShardIndex.load("ds/index.json", max_bytes=4096)
    assert ShardIndex.load("ds/index.json").total == 6


@pytest.mark.parametrize("text,message", [
    (b'{"format": "streamaug-index", "name": "\xff\xfe"}', r"is not UTF-8 text: byte 39 is b'\\xff'"),
    ("class_names=5", r"'class_names' must be a list of strings \(value: 5\)"),
    ("class_names=['a']", r"'class_names' must have num_classes=2 entries \(value: \['a'\]\)"),
    ("label_key=7", r"'label_key' must be null or a string"),
    ("image_ext=['npy']", r"'image_ext' must be null or a string"),
    ("count=True", r"shards\[0\]\.count must be an int >= 0 \(shard 'train-000000.tar'\) \(value: True\)"),
    ("url=None", r"shards\[0\]\.url must be a non-empty string \(value: None\)"),
    ("nested", "nested too deeply"),
    (b'{"format": "streamaug-index", "shards": [', r"is not valid JSON: .*; if it was cut short or edited, write it "
                                                  r"again from the shards: streamaug index SHARDS --out ds/index.json"),
])
def test_broken_index_messages_name_file_field_and_value(dataset, text, message):
    path = dataset / "index.json"
    if isinstance(text, bytes):
        path.write_bytes(text)
    elif text == "nested":
        path.write_text("[" * 100_000 + "]" * 100_000)
    else:
        field, value = text.split("=")
        doc = json.load(open(path))
        target = doc["shards"][0] if field in ("count", "url") else doc
        target[field] = eval(value)
        json.dump(doc, open(path, "w"))
    with pytest.raises(ShardIndexError, match=message) as info:
        ShardIndex.load("ds/index.json")
    assert "ds/index.json" in str(info.value)


def test_unreachable_http_index_names_the_url():
    with socket.socket() as s:                     # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/data/index.json"
    with pytest.raises(ShardIndexError, match=f"index '{url}' cannot be read: URLError") as info:
        ShardIndex.load(url, timeout=5)
    assert "refused" in str(info.value).lower()
    with pytest.raises(ShardIndexError, match="not a 'ftp' URL"):
        ShardIndex.load("ftp://host/index.json")


def test_extra_samples_are_all_counted_and_named(tmp_path):
    write_tar(str(tmp_path / "a.tar"), good_members(6))
    doc = {"format": "streamaug-index", "version": 1, "num_classes": 2,
           "shards": [{"url": "a.tar", "count": 4, "class_counts": [2, 2]}]}
    json.dump(doc, open(tmp_path / "index.json", "w"))
    url = str(tmp_path / "a.tar")
    with pytest.raises(StreamError, match="shard holds 2 more samples than the index count 4") as info:
        list(StreamLoader(url, batch_size=4, shuffle=0))
    assert (info.value.shard, info.value.key, info.value.value) == (url, "s_00004", 6)
    loader = StreamLoader(url, batch_size=4, shuffle=0, on_error="skip")
    assert sum(len(b.keys) for b in loader) == 4 and loader.stats.skipped == {"index_mismatch": 2}
