"""The numbers behind the headline ratios: which pipelines a ratio compares, the feed ratio,
the busy processes of the contention figure, and the demo table's marks, each against
hand-made inputs (the honesty audit of s34 changed each and no test noticed)."""
from __future__ import annotations

import os
import time

import pytest

from shard_factory import make_shards
from streamaug.benchmarks import bench_report, demo_table, run
from streamaug.benchmarks.busy_workers import busy_workers
from streamaug.benchmarks.process_tree import _stat


def row(data, pipeline, rate, **kw):
    return {"section": "pipelines", "status": "ok", "data": data, "pipeline": pipeline, "samples_per_s": rate, **kw}


def test_headline_compares_the_fastest_streamaug_with_the_fastest_peer():
    results = [row("npy32", "streamaug-kornia", 900.0, feed_ratio=0.7), row("npy32", "streamaug-opencv", 1200.0,
                                                                            feed_ratio=0.6),
               row("npy32", "streamaug-opencv+smote", 1500.0),          # a balanced twin is not "best"
               row("npy32", "dataloader-albumentations", 400.0), row("npy32", "dali-only", 600.0),
               row("npy32", "webdataset-kornia-unfused", 300.0),
               row("npy32", "streamaug-kornia+smote", 450.0),
               {**row("npy32", "streamaug-dali", 5000.0), "status": "skipped: time budget"}]
    entry = bench_report.headline(results)["npy32"]
    assert (entry["best_streamaug"], entry["best_peer"]) == ("streamaug-opencv", "dali-only")
    assert entry["best_vs_best_peer"] == pytest.approx(2.0) and entry["best_vs_dali_only"] == pytest.approx(2.0)
    assert entry["feed_ratio_best_streamaug"] == 0.6
    # the SMOTE cost is read on the fastest configuration with a balanced twin: opencv, 1 - 1500/1200
    assert entry["smote_pipeline"] == "streamaug-opencv+smote"
    assert entry["smote_throughput_cost"] == pytest.approx(-0.25)
    assert "jpg224" not in bench_report.headline(results), "no cells, no ratio"


def test_headline_has_a_ratio_for_each_kind_of_data_run_in_its_order(tmp_path):
    """The large-image kind (``--kinds jpg512``) gets its ratio and its plot like the others."""
    from streamaug.benchmarks.bench_data import KINDS

    results = [row("jpg512", "streamaug-kornia", 80.0), row("jpg512", "dataloader-albumentations", 100.0),
               row("npy32", "streamaug-opencv", 900.0), row("npy32", "dali-only", 300.0)]
    head = bench_report.headline(results)
    assert list(head) == ["jpg512", "npy32"]
    assert head["jpg512"]["best_vs_best_peer"] == pytest.approx(0.8) and head["npy32"]["best_vs_best_peer"] == 3.0
    assert "jpg512" in KINDS
    from streamaug.benchmarks.bench_data import make_bench_shards
    with pytest.raises(ValueError, match=r"kind must be one of \('npy32', 'jpg224', 'jpg512'\), got 'jpg1024'"):
        make_bench_shards(str(tmp_path / "data"), "jpg1024", 4)
    assert not os.path.exists(tmp_path / "data"), "nothing written for a kind it refuses"
    assert [os.path.basename(p) for p in bench_report.plots(results, str(tmp_path))] == ["throughput.png"]


def test_a_cell_reports_fed_over_resident_and_times_its_busy_passes_under_the_asked_load(monkeypatch, tmp_path):
    """run_cell's feed ratio is the training rate fed by the loader over the rate on batches
    already in memory; its busy passes run inside busy_workers(N) with the cell's N."""
    make_shards(str(tmp_path), n=100)
    asked = []

    class Spy:
        def __init__(self, n):
            asked.append(n)

        def __enter__(self):
            return []

        def __exit__(self, *exc):
            return False
    rates = iter([50.0, 100.0] * 4)
    monkeypatch.setattr(run, "busy_workers", Spy)
    monkeypatch.setattr(run, "train_rate", lambda model, batches, device: next(rates))
    cell = {"device": "cpu", "index": str(tmp_path / "index.json"), "pipeline": "streamaug-opencv",
            "batch": 16, "workers": 0, "repeats": 2, "busy_workers": 3, "feed": True}
    out = run.run_cell(cell)
    assert asked == [3, 3], "one busy pass per repeat, under the cell's 3 processes"
    assert out["busy"]["workers"] == 3 and out["busy_vs_idle"] == out["busy"]["samples_per_s"] / out["samples_per_s"]
    # train_rate is asked for the warm-up, then fed and resident in turn: fed 100, resident 50 ... (the
    # warm-up takes the first 50), so fed = 100 and resident = 50 each round
    assert (out["fed_samples_per_s"], out["resident_samples_per_s"], out["feed_ratio"]) == (100.0, 50.0, 2.0)
    assert out["samples_per_pass"] == 100


def test_busy_workers_spin_while_the_block_runs_and_are_gone_after():
    with busy_workers(2) as pids:
        assert len(pids) == 2
        first = [int(_stat(p)[11]) for p in pids]          # utime ticks
        time.sleep(0.6)
        assert all(int(_stat(p)[11]) > t for p, t in zip(pids, first)), "each spends CPU time"
    time.sleep(0.1)
    assert all(_stat(p) is None or _stat(p)[0] == "Z" for p in pids)
    with busy_workers(0) as none:
        assert none == []
    with pytest.raises(ValueError, match="busy workers must be an int >= 0, got -1"):
        with busy_workers(-1):
            pass


def arm(mean, std):
    return {"mean": mean, "std": std}


def summary_of(**balanced):
    other = {m: arm(0.5, 0.0) for m in demo_table.METRICS}
    return {a: {**other, "balanced_accuracy": arm(*v)} for a, v in balanced.items()}


def test_the_demo_table_marks_best_near_best_and_differences_within_the_seeds_spread():
    summary = summary_of(plain=(0.70, 0.04), ros=(0.90, 0.01), smote=(0.89, 0.02), augment=(0.60, 0.01))
    lines = demo_table.table(summary, {a: a for a in summary}).splitlines()
    cells = {line.split(":")[0].strip("| "): line.split("|")[2:4] for line in lines[2:6]}
    assert "**best**" in cells["ros"][0] and "≈ best" in cells["smote"][0], "0.01 apart, spread 0.02"
    assert "best" not in cells["plain"][0] and "best" not in cells["augment"][0]
    assert cells["ros"][1].strip() == "+20.0" and cells["augment"][1].strip() == "-10.0", "not within 0.04"
    near = summary_of(plain=(0.70, 0.04), ros=(0.73, 0.01))
    assert demo_table.table(near, {"plain": "", "ros": ""}).splitlines()[3].split("|")[3].strip() == "+3.0 ~"
    assert demo_table.within_noise(arm(0.70, 0.04), arm(0.73, 0.01))
    assert not demo_table.within_noise(arm(0.70, 0.01), arm(0.73, 0.02))


def test_a_dry_gpu_check_that_skips_a_cell_fails(tmp_path, capsys):
    """Honesty audit s34: on 2 loaded cores the dry run's 570 s budget skipped five of six 32²
    cells and the check still passed, so those pipelines could break unseen by CI."""
    import json

    from streamaug.benchmarks import gpu_check

    rc = gpu_check.main(["--device", "cpu", "--dry", "--skip-tests", "--budget", "1", "--out", str(tmp_path / "out"),
                         "--data", str(tmp_path / "data")])
    cells = json.loads((tmp_path / "out" / "gpu_check.json").read_text())["cells"]
    assert rc == 1 and cells and all(c["status"] == "skipped" for c in cells)
    assert "targets (dry run: tiny sizes, so these are not measurements):" in capsys.readouterr().out


RATES = {"streamaug-opencv": [1000.0, 600.0, 900.0], "streamaug-opencv+smote": [950.0, 660.0, 810.0],
         "dataloader-albumentations": [500.0, 400.0, None]}           # None: that round's cell failed


def test_pipelines_run_in_interleaved_rounds_and_each_ratio_is_paired_by_round(tmp_path, monkeypatch):
    """Cells run one after another, so two cells' ratio was also the ratio of two moments of a
    shared machine: one 224² run read a 26% SMOTE cost where six paired re-runs read -52% to +5%
    (s36). The pipelines now run in rounds, the order reversed every other round, and each ratio
    is the median of its per-round values, not the ratio of two medians."""
    import json

    from streamaug.benchmarks import run

    calls = []

    def fake_spawn(cell, timeout):
        calls.append((cell["pipeline"], cell["round"], cell["feed"], cell["repeats"]))
        rate = RATES[cell["pipeline"]][cell["round"]]
        if rate is None:
            return {**cell, "status": "failed", "error": "crashed"}
        out = {**cell, "status": "ok", "samples_per_s": rate, "cpu_s_per_sample": 1 / rate, "samples_per_pass": 512,
               "loadavg": [0.5, 0.5, 0.5], "peak_rss_mib": rate / 10, "busy": {"workers": 1, "samples_per_s": rate / 2},
               "busy_vs_idle": 0.5}
        if cell["feed"]:
            out.update(fed_samples_per_s=30.0, resident_samples_per_s=40.0, feed_ratio=0.75)
        return out
    monkeypatch.setattr(run, "spawn", fake_spawn)
    monkeypatch.setitem(run.SIZES, "quick", {**run.SIZES["quick"], "repeats": 3})    # (other sections' passes)
    out = tmp_path / "out"
    rc = run.main(["--quick", "--sections", "pipelines", "--kinds", "npy32", "--feed-kinds", "npy32", "--rounds", "3",
                   "--pipelines", *RATES, "streamaug-opencv", "--out", str(out), "--data", str(tmp_path / "data")])
    assert rc == 1, "a round that failed fails the run, though its pipeline has a median"
    a, s, d = RATES
    # (a pipeline named twice runs once a round)
    assert [c[:2] for c in calls] == [(a, 0), (s, 0), (d, 0), (d, 1), (s, 1), (a, 1), (a, 2), (s, 2), (d, 2)]
    assert [c[2] for c in calls] == [True] * 3 + [False] * 6, "the feed ratio is measured in the first round"
    assert {c[3] for c in calls} == {1}, "one timed pass a round"
    doc = json.loads((out / "bench.json").read_text())
    cells = {c["pipeline"]: c for c in doc["cells"]}
    assert cells[a]["samples_per_s"] == 900.0 and cells[d]["samples_per_s"] == 450.0, "medians of the rounds that ran"
    assert [r["status"] for r in cells[d]["rounds"]] == ["ok", "ok", "failed"] and cells[d]["status"] == "ok"
    assert cells[a]["peak_rss_mib"] == 100.0 and cells[a]["busy"]["samples_per_s"] == 450.0
    assert cells[a]["feed_ratio"] == 0.75 and "round" not in cells[a]
    head = doc["headline"]["npy32"]
    # paired: 1000/500 and 600/400 (the third round's peer failed); the ratio of medians would read 2.0
    assert head["best_vs_best_peer_rounds"] == [2.0, 1.5] and head["best_vs_best_peer"] == 1.75
    assert head["smote_throughput_cost_rounds"] == pytest.approx([0.05, -0.10, 0.10])
    assert head["smote_throughput_cost"] == pytest.approx(0.05)
    table = (out / "bench.md").read_text()
    assert "| npy32 | dataloader-albumentations | 450 | 500, 400, failed |" in table
    assert "| 1.75× | 2.00×, 1.50× |" in table and "| 5% | 5%, -10%, 10% |" in table


def test_a_pipelines_cell_whose_every_round_failed_is_failed():
    from streamaug.benchmarks.bench_rounds import merge_rounds

    runs = [{"section": "pipelines", "pipeline": "p", "round": r, "status": "failed", "error": f"boom {r}"}
            for r in (1, 0)]
    cell = merge_rounds(runs)
    assert cell["status"] == "failed" and cell["error"] == "boom 1" and "samples_per_s" not in cell
    assert [r["round"] for r in cell["rounds"]] == [0, 1]


def test_a_failed_cell_kept_from_an_earlier_run_does_not_fail_this_one(tmp_path, monkeypatch):
    """Review s37: a kept 32² cell with a failed round made every later 224² run exit 1, unexplained."""
    import json

    from streamaug.benchmarks import run

    out = tmp_path / "out"
    out.mkdir()
    kept = {"section": "pipelines", "data": "npy32", "pipeline": "streamaug-kornia", "status": "ok", "quick": True,
            "samples_per_s": 10.0, "cpu_s_per_sample": 0.1, "peak_rss_mib": 1.0, "loadavg": [0.1] * 3,
            "rounds": [{"round": 0, "status": "ok", "samples_per_s": 10.0},
                       {"round": 1, "status": "failed", "error": "boom"}]}
    (out / "bench.json").write_text(json.dumps({"quick": True, "cells": [kept]}))
    monkeypatch.setattr(run, "spawn", lambda cell, timeout: {
        **cell, "status": "ok", "samples_per_s": 5.0, "cpu_s_per_sample": 0.2, "samples_per_pass": 64,
        "loadavg": [0.1] * 3, "peak_rss_mib": 1.0})
    argv = ["--quick", "--sections", "pipelines", "--kinds", "jpg224", "--feed-kinds", "--busy", "0",
            "--pipelines", "streamaug-opencv", "--out", str(out), "--data", str(tmp_path / "data")]
    assert run.main(argv) == 0
    assert [c["data"] for c in json.loads((out / "bench.json").read_text())["cells"]] == ["npy32", "jpg224"]
