"""The ``streamaug`` command's answers to a user's mistakes: one line naming the path or value
and the way out, a non-zero exit, no traceback (red team s36)."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from streamaug.cli import main
from streamaug.loader import StreamLoader, write_shards


@pytest.fixture
def shards(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_shards((np.zeros((40, 8, 8, 3), np.uint8), np.arange(40) % 2), "s1", maxcount=10, progress=False)
    return tmp_path


def run(argv, capsys) -> tuple[int, str]:
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    return rc, capsys.readouterr().err


def test_an_index_file_passed_as_shards(shards, capsys):
    """`streamaug index s1/index.json` said the index "would drop 4 other shards"; the loader
    said the index "does not list shard 's1/index.json'"."""
    rc, err = run(["index", "s1/index.json"], capsys)
    assert rc == 1 and "streamaug index: 's1/index.json' is an index file, not a shard: pass the shards, " \
        "e.g. their folder ('s1') or a pattern" in err
    for urls, index in (("s1/index.json", None), (["s1/index.json"], None), ("s1/index.json", False)):
        loader = StreamLoader(urls, batch_size=10, index=index)
        assert sum(len(b.keys) for b in loader) == 40, "the loader reads its shards"
        assert (loader.index is None) == (index is False)
    with pytest.raises(ValueError, match=r"urls='s1/index.json' is an index file, and index= is given too"):
        StreamLoader("s1/index.json", batch_size=10, index="s1/index.json")


def test_index_out_into_a_missing_folder_is_refused_before_the_shards_are_read(shards, capsys):
    """It read every shard, then failed with a FileNotFoundError traceback on its partial file."""
    rc, err = run(["index", "pipe:cat s1/train-000000.tar", "--out", "nowhere/index.json", "--quiet"], capsys)
    assert rc == 1 and f"out='nowhere/index.json': its folder {str(shards / 'nowhere')!r} does not exist" in err


def test_preview_of_a_shard_file_and_into_a_path_under_a_file(shards, capsys):
    rc, err = run(["preview", "--data", "s1/train-000000.tar"], capsys)
    assert rc == 2 and "--data 's1/train-000000.tar' is a file, not a folder of shards or an index.json: pass " \
        "the folder 's1', or the index.json" in err
    (shards / "afile").write_text("")
    rc, err = run(["preview", "--data", "s1", "--out", "afile/p.png"], capsys)
    assert rc == 2 and "--out 'afile/p.png' cannot be written: a file is in the way" in err
    rc, err = run(["preview", "--data", "s1", "--resize", "abc"], capsys)
    assert rc == 2 and "invalid image_size value: 'abc'" in err        # (it was `_size`)


def test_shards_into_a_file_and_class_names_from_a_missing_index(shards, capsys):
    (shards / "afile").write_text("")
    rc, err = run(["shards", "s1", "afile"], capsys)
    assert rc == 1 and "out_dir 'afile' is a file, not a folder" in err       # (was "[Errno 17] File exists")
    rc, err = run(["shards", "s1", "out", "--class-names", "nonexist.json"], capsys)
    assert rc == 1 and "--class-names 'nonexist.json': 'nonexist.json' does not exist" in err
    assert "index=" not in err, "a loader argument is no help at the command line"


def test_a_folder_named_digits_is_written_as_a_folder(shards, capsys):
    """It was replaced by scikit-learn's digits, silently, exit 0."""
    from PIL import Image

    for c in "ab":
        os.makedirs(f"digits/{c}")
        for i in range(3):
            Image.fromarray(np.full((8, 8, 3), i * 40, np.uint8)).save(f"digits/{c}/{i}.png")
    rc, err = run(["shards", "digits", "mine"], capsys)
    assert rc == 0 and "'digits' is a folder here, so it is written as one (scikit-learn's digits: sklearn:digits)" \
        in err
    assert StreamLoader("mine", batch_size=6).index.class_counts == [3, 3]
    assert run(["shards", "sklearn:digits", "sk"], capsys)[0] == 0
    assert StreamLoader("sk", batch_size=6).index.total == 1797


def test_ctrl_c_is_one_line_and_exit_status_130(shards, capsys, monkeypatch):
    import streamaug.loader

    def interrupted(*args, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(streamaug.loader, "write_shards", interrupted)
    rc, err = run(["shards", "s1", "out"], capsys)
    assert rc == 130 and err == "streamaug shards: interrupted\n"


WARNING_IN_PREVIEW = """
import warnings
import streamaug.benchmarks.preview as preview
from streamaug.cli import main
preview.main = lambda argv: warnings.warn("fewer than k_neighbors+1 samples", RuntimeWarning) or 0
raise SystemExit(main(["preview"]))
"""


def test_warnings_of_demo_preview_and_bench_print_as_one_line():
    """Only `shards` and `index` printed warnings without the library's source line."""
    done = subprocess.run([sys.executable, "-c", WARNING_IN_PREVIEW], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr == "streamaug preview: warning: fewer than k_neighbors+1 samples\n"
