"""A tiny ``streamaug demo`` and ``streamaug preview``: outputs exist and are well formed."""
from __future__ import annotations

import json
import sys

import numpy as np
from PIL import Image

from streamaug.benchmarks import preview
from streamaug.cli import main as cli


def test_tiny_demo_writes_table_json_and_pictures(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli(["demo", "--steps", "4", "--seeds", "1", "--eval-every", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| run | samples/s | balanced accuracy | macro-F1 | minority recall |" in printed
    for variant in ("(a) plain stream", "(b) augment + mixup", "(c) SMOTE balance + augment + mixup"):
        assert variant in printed
    result = json.loads((out / "results.json").read_text())
    assert set(result["summary"]) == {"a", "b", "c"}
    for stats in result["summary"].values():
        for metric in ("balanced_accuracy", "macro_f1", "minority_recall"):
            assert 0.0 <= stats[metric]["mean"] <= 1.0
        assert stats["samples_per_s"]["mean"] > 0
    counts = result["train_class_counts"]
    assert len(counts) == 10 and all(counts[c] < max(counts) * 0.1 for c in result["minority_classes"])
    assert result["runs"]["c"][0]["synthetic"] > 0 and result["runs"]["a"][0]["synthetic"] == 0
    rows, cols = 4, 9
    w, h = Image.open(out / "preview.png").size
    assert (w, h) == tuple(result["preview_size"]) == (round(cols * preview.CELL_INCHES * preview.DPI),
                                                       round(rows * preview.CELL_INCHES * preview.DPI))
    assert Image.open(out / "curves.png").size == (600, 400)
    assert np.asarray(Image.open(out / "preview.png")).std() > 10, "the grid is not blank"


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
    with pytest.raises(ValueError, match="--data must be a folder"):
        cli(["demo", "--data", str(tmp_path / "nope"), "--out", str(tmp_path)])


def test_demo_and_preview_say_plainly_when_matplotlib_is_missing(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)        # import matplotlib now raises ImportError
    for command in ("demo", "preview"):
        assert cli([command, "--help"]) == 2
        assert f"streamaug {command} needs matplotlib" in capsys.readouterr().err
