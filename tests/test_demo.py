"""A tiny ``streamaug demo`` and ``streamaug preview``: outputs exist and are well formed."""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile

import numpy as np
import pytest
import torch
from PIL import Image

from streamaug.benchmarks import preview
from streamaug.cli import main as cli


def test_tiny_demo_writes_table_json_and_pictures(tmp_path, capsys):
    out = tmp_path / "demo"
    arms = "plain,ros,smote,smote-thumb,bmixup,remix"
    threads = torch.get_num_threads()
    assert cli(["demo", "--arms", arms, "--steps", "4", "--seeds", "2", "--eval-every", "2", "--out", str(out),
                "--threads", "1"]) == 0
    assert torch.get_num_threads() == threads, "the caller's thread count is restored"
    printed = capsys.readouterr().out
    assert "| arm | balanced accuracy | Δ vs plain | macro-F1 | minority recall |" in printed
    for row in ("| plain: plain stream |", "| ros: random oversampling + augment |", "| smote: SMOTE + augment |",
                "| smote-thumb: SMOTE, thumbnail neighbours + augment |", "| bmixup: augment + Balanced-MixUp |",
                "| remix: augment + Remix |"):
        assert row in printed
    assert "~ = |Δ| below the seeds' spread" in printed
    result = json.loads((out / "results.json").read_text())
    assert list(result["summary"]) == arms.split(",") and result["table"] in printed and result["torch_threads"] == 1
    for stats in result["summary"].values():
        for metric in ("balanced_accuracy", "macro_f1", "minority_recall", "train_minority_recall"):
            assert 0.0 <= stats[metric]["mean"] <= 1.0
        assert stats["samples_per_s"]["mean"] > 0
    counts = result["train_class_counts"]
    assert len(counts) == 10 and all(counts[c] < max(counts) * 0.1 for c in result["minority_classes"])
    runs = result["runs"]
    assert runs["smote"][0]["synthetic"] > 0 and runs["ros"][0]["synthetic"] > 0 and runs["plain"][0]["synthetic"] == 0
    assert runs["ros"][0]["minority_rows_per_batch"] > 3 * runs["plain"][0]["minority_rows_per_batch"]
    rows, cols = 4, 9
    w, h = Image.open(out / "preview.png").size
    assert (w, h) == tuple(result["preview_size"]) == (round(cols * preview.CELL_INCHES * preview.DPI),
                                                       round(rows * preview.CELL_INCHES * preview.DPI))
    assert Image.open(out / "curves.png").size == (600, 400)
    assert np.asarray(Image.open(out / "preview.png")).std() > 10, "the grid is not blank"


def test_demo_on_a_folder_of_grayscale_images_of_mixed_sizes(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    for c in ("cat", "dog", "eel"):
        (tmp_path / "pics" / c).mkdir(parents=True)
        for i in range(24):
            side = 25 if i % 2 else 31
            Image.fromarray(rng.integers(0, 256, (side, side + 2), dtype=np.uint8)).save(tmp_path / "pics" / c / f"{i}.png")
    assert cli(["demo", "--data", "pics", "--arms", "plain,ros", "--steps", "2", "--seeds", "1",
                "--minority-classes", "1", "--minority-fraction", "0.2", "--no-pictures", "--out", "out"]) == 0
    printed = capsys.readouterr().out
    assert "images were resized to 64x64: their sizes differ" in printed
    result = json.loads((tmp_path / "out" / "results.json").read_text())
    assert result["data"] == "pics" and "resized to 64x64" in result["resize_note"]
    from streamaug.loader import ShardIndex

    assert ShardIndex.load("out/shards/index.json").image_shape == (64, 64, 1), "grayscale stays one channel"


def test_demo_keeps_the_imbalance_of_the_users_own_data(tmp_path, monkeypatch):
    """Shards whose classes 1 and 5 are small: the demo cut 4 random classes further (0, 3, 5, 9),
    scored those as the minority and left class 1 out (newcomer run). Now --data is used as it is
    and the small classes are the minority; a cut is asked for with --minority-classes."""
    from streamaug.benchmarks.demo_data import minority_of, prepare
    from streamaug.loader import write_shards

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    sizes = [60, 8, 60, 60, 60, 8, 60, 60, 60, 60]
    labels = np.repeat(np.arange(10), sizes)
    write_shards((rng.integers(0, 256, (len(labels), 8, 8, 1), dtype=np.uint8), labels), "mine", progress=False)
    data = prepare("out", "mine")
    assert data.minority == [1, 5]
    assert data.index.class_counts == [round(0.7 * n) for n in sizes], "nothing cut"
    cut = prepare("out2", "mine", n_minority=2, minority_fraction=0.1)
    small = [c for c, n in enumerate(cut.index.class_counts) if n < 10]
    assert cut.minority == small and len(small) >= 2
    assert minority_of([50, 40, 30]) == [2], "none under half the largest: the smallest"


def test_demo_on_an_image_folder_leaves_no_temporary_shards(tmp_path, monkeypatch):
    import tempfile

    from streamaug.benchmarks.demo_data import load_any

    monkeypatch.chdir(tmp_path)
    (tmp_path / "scratch").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "scratch"))
    for c in ("a", "b"):
        (tmp_path / "pics" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((6, 6, 3), i * 40, np.uint8)).save(tmp_path / "pics" / c / f"{i}.png")
    images, labels, names, _, _ = load_any("pics")
    assert images.shape == (6, 6, 6, 3) and sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1] and names == ["a", "b"]
    assert list((tmp_path / "scratch").iterdir()) == []


def test_demo_says_what_is_wrong_with_data_it_cannot_use(tmp_path, monkeypatch, capsys):
    """Red team: a kept class of one image left the balanced test split empty (a torch.cat
    traceback), and a folder of shards without index.json was called an image folder with no
    class subfolders. Both now end with one line that says what to do."""
    import shutil

    from streamaug.loader import write_shards

    monkeypatch.chdir(tmp_path)
    for c, n in (("a", 6), ("b", 4), ("c", 1)):
        (tmp_path / "pics" / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((6, 6, 3), i * 40, np.uint8)).save(tmp_path / "pics" / c / f"{i}.png")
    assert cli(["demo", "--data", "pics", "--arms", "plain", "--steps", "1", "--seeds", "1", "--no-pictures",
                "--out", "out"]) == 2
    assert "class 'c' (1) has fewer than 2 samples" in capsys.readouterr().err
    write_shards(str(tmp_path / "pics"), "shards", progress=False)
    (tmp_path / "shards" / "index.json").unlink()
    assert cli(["demo", "--data", "shards", "--arms", "plain", "--steps", "1", "--seeds", "1", "--no-pictures",
                "--out", "out"]) == 2
    assert "holds shards but no index.json: write one with `streamaug index shards`" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "pics" / "c")
    from streamaug.benchmarks.demo_data import prepare
    data = prepare("out", "pics")                  # 6 and 4 images: 4 + 3 to train, a balanced 1 + 1 to test
    assert data.index.class_counts == [4, 3] and sorted(data.test_labels.tolist()) == [0, 1]


def test_preview_of_a_folder_without_an_index_says_so_in_one_line(tmp_path, capsys, npy_shards):
    (tmp_path / "s").mkdir()
    for tar in npy_shards[0].urls[:2]:
        shutil.copy(tar, tmp_path / "s")
    assert cli(["preview", "--data", str(tmp_path / "s"), "--out", str(tmp_path / "p.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("streamaug preview: --data folder ") and "holds shards but no index.json: write one with " \
        "`streamaug index " in err and "Traceback" not in err
    assert cli(["preview", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "p.png")]) == 2
    assert f"--data '{tmp_path / 'nothing'}' does not exist (a folder of shards" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["preview", "demo"])
@pytest.mark.parametrize("given, message", [("majority", "'majority' is not one of"),
                                            ("1.5", "the minority/majority ratio, in \\(0, 1\\], got 1.5")])
def test_a_bad_strategy_is_refused_by_the_command_line_naming_why(command, given, message, capsys):
    """Newcomer s34: --strategy went to the balancer as a string, so 0.5 and majority ended in a traceback."""
    with pytest.raises(SystemExit) as exit_:
        cli([command, "--data", "x", "--strategy", given])
    assert exit_.value.code == 2
    assert re.search(f"argument --strategy: .*{message}", capsys.readouterr().err)


def test_preview_takes_a_float_ratio_strategy(tmp_path, capsys):
    from streamaug.loader import write_shards

    rng = np.random.default_rng(0)
    write_shards((rng.integers(0, 256, (40, 8, 8, 3), np.uint8), np.r_[np.zeros(34, int), np.ones(6, int)]),
                 str(tmp_path / "bin"), progress=False)
    assert cli(["preview", "--data", str(tmp_path / "bin"), "--strategy", "0.5", "--out", str(tmp_path / "p")]) == 0
    assert (tmp_path / "p.png").exists()
    capsys.readouterr()
    write_shards((rng.integers(0, 256, (40, 8, 8, 3), np.uint8), np.arange(40) % 4), str(tmp_path / "four"),
                 progress=False)                  # review s34: a ratio on 4 classes was imbalanced-learn's traceback
    assert cli(["preview", "--data", str(tmp_path / "four"), "--strategy", "0.5", "--out", str(tmp_path / "q")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("streamaug preview: --strategy 0.5 does not fit the data's 4 classes: ") and \
        "Traceback" not in err and not (tmp_path / "q.png").exists()


def test_preview_of_images_of_mixed_sizes_and_of_an_image_folder(tmp_path, monkeypatch, capsys):
    """Newcomer s33: preview over shards of mixed-size images raised a traceback telling the user to
    pass resize=, which preview had no option for; an image folder was told to run streamaug index."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    rng = np.random.default_rng(0)
    for c, n in (("cat", 30), ("dog", 8)):
        (tmp_path / "pics" / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (20 + i % 7, 24, 3), dtype=np.uint8)).save(tmp_path / "pics" / c / f"{i}.jpg")
    assert cli(["shards", "pics", "shards", "--format", "jpg"]) in (0, None)
    capsys.readouterr()
    assert cli(["preview", "--data", "shards", "--out", "a.png"]) == 0
    assert "images were resized to 64x64: their sizes differ" in capsys.readouterr().out
    assert cli(["preview", "--data", "shards", "--out", "b.png", "--resize", "40,50"]) == 0
    assert "resized" not in capsys.readouterr().out
    assert cli(["preview", "--data", "pics", "--out", "c.png"]) == 0
    assert "'pics' has no shards: reading it as an image folder" in capsys.readouterr().out
    assert Image.open("a.png").size == Image.open("b.png").size == Image.open("c.png").size == (990, 440)
    assert os.listdir(tmp_path / "tmp") == [], "the image folder's temporary shards are gone"
    with pytest.raises(SystemExit):
        cli(["preview", "--data", "shards", "--resize", "0"])
    assert "--resize: one side (a square) or H,W in positive ints, got '0'" in capsys.readouterr().err


def test_preview_command_on_user_shards(tmp_path, npy_shards, capsys):
    index, _, _ = npy_shards
    path = tmp_path / "grid.png"
    assert cli(["preview", "--data", index.source, "--out", str(path), "--flip"]) == 0
    assert Image.open(path).size == (990, 440)
    assert "wrote" in capsys.readouterr().out


def test_demo_rejects_bad_options(tmp_path, capsys):
    import pytest

    with pytest.raises(SystemExit):
        cli(["demo", "--steps", "0", "--out", str(tmp_path)])
    assert "--steps must be >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli(["demo", "--minority-classes", "-1", "--out", str(tmp_path)])
    assert "--minority-classes must be >= 0, got -1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli(["demo", "--threads", "0", "--out", str(tmp_path)])
    assert "--threads must be >= 1, got 0" in capsys.readouterr().err
    assert cli(["demo", "--data", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    assert "streamaug demo: --data must be a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli(["demo", "--arms", "plain,smote2", "--out", str(tmp_path)])
    assert "--arms must be 'all', 'default' or names from" in capsys.readouterr().err


def test_demo_and_preview_say_plainly_when_matplotlib_is_missing(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)        # import matplotlib now raises ImportError
    for command in ("demo", "preview"):
        assert cli([command, "--help"]) == 2
        assert f"streamaug {command} needs matplotlib" in capsys.readouterr().err


def test_the_demo_trains_on_one_thread_on_a_busy_machine(tmp_path, capsys, monkeypatch):
    """Newcomer s35: with torch's default threads on a loaded 2-core machine the demo showed
    about 37 minutes to go (8 with --threads 1), and said nothing. Without --threads it now
    takes one thread where the load average is at the core count, and says so."""
    from streamaug.benchmarks import demo
    assert demo.busy_machine_threads(2.0, 2) == 1 and demo.busy_machine_threads(1.9, 2) is None
    assert demo.busy_machine_threads(5.0, 1) is None, "one core: one thread already"
    monkeypatch.setattr(demo.os, "getloadavg", lambda: (7.5, 7.0, 6.0))
    monkeypatch.setattr(demo, "available_cores", lambda: 2)
    assert cli(["demo", "--arms", "plain", "--steps", "2", "--seeds", "1", "--eval-every", "2", "--no-pictures",
                "--out", str(tmp_path)]) == 0
    assert "this machine is busy (load average 7.5 on 2 cores): training on 1 thread" in capsys.readouterr().out
    assert json.loads((tmp_path / "results.json").read_text())["torch_threads"] == 1
    monkeypatch.setattr(demo.os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    assert cli(["demo", "--arms", "plain", "--steps", "2", "--seeds", "1", "--eval-every", "2", "--no-pictures",
                "--out", str(tmp_path)]) == 0
    assert "busy" not in capsys.readouterr().out
    assert json.loads((tmp_path / "results.json").read_text())["torch_threads"] == torch.get_num_threads()
