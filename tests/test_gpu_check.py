"""The GPU check's halves: without DALI, with DALI alone, and the halves merged (s42).

A lent GPU machine's image lacks DALI, which is too large to carry in one call, so the check
must run its Kornia half first and its DALI half after (``--dali off``/``only``, ``--merge``).
The cells are faked here (the real ones run in CI's ``--dry`` run); the test selection and
the DALI marks are checked on the real test files.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from streamaug.benchmarks import gpu_check

HERE = os.path.dirname(os.path.abspath(__file__))
RECORDED = os.path.join(HERE, "..", "benchmarks", "results", "gpu", "gpu_check.json")


@pytest.fixture
def fake_cells(monkeypatch, tmp_path):
    """Cells that return H100 run 2's recorded result for their (data, pipeline), without data
    or processes; ``spawned`` lists the pipelines run."""
    import streamaug.benchmarks.bench_data as bench_data
    import streamaug.benchmarks.run as run

    with open(RECORDED) as f:
        recorded = {(c["data"], c["pipeline"]): c for c in json.load(f)["cells"]}
    spawned = []

    def spawn(cell, timeout):
        spawned.append(cell["pipeline"])
        got = recorded[(cell["data"], cell["pipeline"])]
        return {**cell, **{k: v for k, v in got.items() if k not in cell}}

    class Index:
        source = str(tmp_path / "index.json")
    monkeypatch.setattr(run, "spawn", spawn)
    monkeypatch.setattr(bench_data, "make_bench_shards", lambda data, kind, n: Index())
    import streamaug.benchmarks.bench_report as bench_report
    monkeypatch.setattr(bench_report, "plots", lambda results, out: [])
    return spawned


def check(tmp_path, *args) -> tuple[int, dict]:
    out = tmp_path / "out"
    rc = gpu_check.main(["--device", "cpu", "--skip-tests", "--out", str(out), "--data", str(tmp_path / "data"),
                         *args])
    return rc, json.loads((out / "gpu_check.json").read_text())


def test_the_two_halves_split_the_cells_and_merged_give_the_whole_runs_targets(tmp_path, fake_cells):
    every = [p for kind in ("jpg224", "npy32") for p in gpu_check.ORDER[kind]]
    rc, first = check(tmp_path / "a", "--dali", "off")
    assert rc == 0 and fake_cells == [p for p in every if not gpu_check.is_dali_cell(p)]
    assert "dali-only" not in fake_cells and "streamaug-kornia+nvjpeg" not in fake_cells
    fake_cells.clear()
    rc, second = check(tmp_path / "b", "--dali", "only", "--merge", str(tmp_path / "a" / "out" / "gpu_check.json"))
    assert rc == 0 and fake_cells == [p for p in every if gpu_check.is_dali_cell(p)]
    assert len(second["merged_cells"]) == len(first["cells"]) and second["merged_from"]
    fake_cells.clear()
    rc, whole = check(tmp_path / "c")
    assert rc == 0 and len(fake_cells) == len(every)
    assert second["headline"] == whole["headline"] and second["targets"] == whole["targets"]
    assert whole["headline"]["jpg224"]["best_vs_dali_only"] == pytest.approx(11983.575 / 31338, rel=1e-3)


def test_without_dali_its_cells_are_skipped_by_name_and_the_check_still_passes(tmp_path, fake_cells, monkeypatch):
    monkeypatch.setattr(gpu_check, "dali_missing", lambda: "nvidia.dali does not import: ImportError: nope")
    rc, result = check(tmp_path, "--dry")
    skipped = [c for c in result["cells"] if c["status"] == "skipped"]
    assert rc == 0 and skipped and all(gpu_check.is_dali_cell(c["pipeline"]) for c in skipped)
    assert {c["error"] for c in skipped} == {result["dali_missing"]} == {"nvidia.dali does not import: ImportError: nope"}
    assert not any(gpu_check.is_dali_cell(p) for p in fake_cells)
    with pytest.raises(SystemExit):          # only the DALI half, with no DALI: refused at once
        check(tmp_path / "only", "--dali", "only")


def test_the_json_is_written_after_each_cell(tmp_path, fake_cells, monkeypatch):
    """A command stopped at the lent machine's 600 s brings back no file written at the end."""
    import streamaug.benchmarks.run as run

    seen = []
    real = run.spawn

    def spawn(cell, timeout):
        path = tmp_path / "out" / "gpu_check.json"
        seen.append(len(json.loads(path.read_text())["cells"]) if path.exists() else None)
        return real(cell, timeout)
    monkeypatch.setattr(run, "spawn", spawn)
    check(tmp_path, "--dali", "off")
    assert seen == list(range(len(seen))) and len(seen) > 2


def test_a_merge_from_another_device_or_of_no_check_is_refused_by_name(tmp_path, fake_cells):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"device_name": "NVIDIA H100 80GB HBM3", "cells": []}))
    with pytest.raises(SystemExit, match="measured on 'NVIDIA H100 80GB HBM3'"):
        check(tmp_path, "--merge", str(other))
    with pytest.raises(SystemExit, match="--merge .*missing.json: cannot be read"):
        check(tmp_path, "--merge", str(tmp_path / "missing.json"))
    other.write_text("{not json")
    with pytest.raises(SystemExit, match="--merge .*other.json: not a gpu_check.json"):
        check(tmp_path, "--merge", str(other))
    other.write_text("[1, 2]")
    with pytest.raises(SystemExit, match="--merge .*other.json: not a gpu_check.json"):
        check(tmp_path, "--merge", str(other))


def collected(*args) -> list[str]:
    listed = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
                            capture_output=True, text=True, timeout=300, cwd=os.path.dirname(HERE))
    return [line for line in listed.stdout.splitlines() if "::" in line]


def test_the_dali_mark_splits_the_device_tests():
    files = [os.path.join("tests", f) for f in ("test_device_path.py", "test_device_decode.py", "test_ops_contract.py")]
    dali, rest = collected(*files, "-m", "dali"), collected(*files, "-m", "not dali")
    assert dali and rest and not set(dali) & set(rest)
    assert all("test_device_decode.py" not in t for t in rest)
    assert all("dali" not in t.split("::", 1)[1].lower() for t in rest), rest
    assert any("test_erasing_fills_the_same_level_on_every_backend" in t for t in dali)
    assert any("test_resume_on_dali_backend_is_bit_identical" in t for t in dali)


def test_without_dali_installed_its_cases_skip_by_name(tmp_path):
    """As on a lent machine before DALI is carried there: the DALI cases skip, saying why."""
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\n"
        "class Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[:2] == ['nvidia', 'dali']:\n"
        "            raise ImportError('hidden by the test')\n"
        "sys.meta_path.insert(0, Hide())\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
                          os.path.join("tests", "test_ops_contract.py"), "-k", "erasing_fills_the_same_level"],
                         capture_output=True, text=True, timeout=300, cwd=os.path.dirname(HERE), env=env)
    assert run.returncode == 0 and "3 skipped" in run.stdout, run.stdout[-2000:]
    assert "nvidia.dali does not import: ImportError: hidden by the test; it is the [dali] extra" in run.stdout
