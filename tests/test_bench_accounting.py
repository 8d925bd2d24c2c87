"""What the benchmarks count: CPU time and memory of live worker processes, and the
commit a result measured."""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from streamaug.benchmarks.machine_info import source_commit
from streamaug.benchmarks.process_tree import live_descendants, tree_cpu_seconds, tree_peak_rss_mib

SPIN = "import time\nt = time.process_time()\nwhile time.process_time() - t < {s}: pass\ntime.sleep(30)"
HOLD = "b = bytearray(300 * 2**20)\nb[::4096] = b'x' * len(b[::4096])\nimport time; time.sleep(30)"


def _wait_cpu(proc, seconds):
    from streamaug.benchmarks.process_tree import _stat, _TICK

    deadline = time.time() + 20
    while time.time() < deadline:
        f = _stat(proc.pid)
        if f is not None and (int(f[11]) + int(f[12])) / _TICK >= seconds:
            return
        time.sleep(0.05)
    raise AssertionError("the child did not spin")


def test_a_live_childs_cpu_is_counted():
    before = tree_cpu_seconds()
    child = subprocess.Popen([sys.executable, "-c", SPIN.format(s=0.6)])
    try:
        _wait_cpu(child, 0.6)
        assert child.pid in live_descendants()
        assert tree_cpu_seconds() - before >= 0.5, "the live child's CPU seconds are in the sum"
    finally:
        child.kill()
        child.wait()
    assert child.pid not in live_descendants()
    assert tree_cpu_seconds() - before >= 0.5, "reaped, it is counted once through RUSAGE_CHILDREN"


def test_a_live_childs_peak_memory_is_counted():
    child = subprocess.Popen([sys.executable, "-c", HOLD])
    try:
        deadline = time.time() + 20
        while tree_peak_rss_mib() < 300 and time.time() < deadline:
            time.sleep(0.05)
        assert tree_peak_rss_mib() >= 300
    finally:
        child.kill()
        child.wait()


def test_results_name_the_commit():
    commit = source_commit()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=__import__("os").path.dirname(__file__))
    if head.returncode != 0:                  # not a git checkout (an sdist): nothing to name
        assert commit is None
    else:
        assert commit.split("+")[0] == head.stdout.strip()


def test_bench_refuses_a_repeat_count_below_one(capsys):
    import pytest

    from streamaug.benchmarks.run import main

    for flag in ("--repeats", "--rounds"):
        for bad in ("0", "-2", "three"):
            with pytest.raises(SystemExit):
                main([flag, bad])
            assert f"{flag}: must be an int >= 1, got '{bad}'" in capsys.readouterr().err


def test_batch_profile_names_the_functions_that_cost_most(tmp_path, capsys):
    import json

    import pytest

    from streamaug.benchmarks.batch_profile import main

    with pytest.raises(SystemExit):
        main(["--batches", "0"])
    assert "--batches: must be an int >= 1, got '0'" in capsys.readouterr().err
    out = tmp_path / "profile.json"
    assert main(["--kind", "npy32", "--n", "600", "--batches", "1", "--top", "5", "--data", str(tmp_path),
                 "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = result["top_own_time_ms_per_batch"]
    assert len(rows) == 5 and result["per_batch_ms_profiled"] > 0
    assert [r["ms"] for r in rows] == sorted((r["ms"] for r in rows), reverse=True)
    assert sum(r["ms"] for r in rows) <= result["per_batch_ms_profiled"] * 1.05


def test_tar_read_bench_reads_every_sample_both_ways(tmp_path, capsys):
    """The tar reading bench on the quick bench's shards: both readers, every sample, and
    webdataset's own shards (a pax header per member) among them."""
    import json

    from streamaug.benchmarks import tar_read

    assert tar_read.main(["--quick", "--repeats", "1", "--data", str(tmp_path), "--json",
                          str(tmp_path / "t.json")]) == 0
    rows = json.load(open(tmp_path / "t.json"))["results"]
    assert [r["samples"] for r in rows.values()] == [512, 512, 64]
    assert all(r["ustar_reader_samples_per_s"] > 0 and r["tarfile_samples_per_s"] > 0 for r in rows.values())
    assert "| npy32 (webdataset ShardWriter, pax per member) | 512 |" in capsys.readouterr().out


@pytest.mark.dali                       # (its nvJPEG arm decodes with DALI)
def test_decode_overlap_bench_runs_both_ways(tmp_path, capsys):
    """The decode-ahead bench on the quick bench's 64 JPEGs: in place and ahead, both steps."""
    import json

    from streamaug.benchmarks import decode_overlap

    assert decode_overlap.main(["--quick", "--repeats", "1", "--device", "cpu", "--data", str(tmp_path),
                                "--json", str(tmp_path / "d.json")]) == 0
    result = json.load(open(tmp_path / "d.json"))
    assert result["batches"] == 4 and result["batch"] == 16 and result["decode_alone_ms"] > 0
    for step in ("wait", "compute"):
        r = result["steps"][step]
        assert r["in_place_ms_per_batch"] > 0 and r["ahead_ms_per_batch"] > 0
    assert "| wait |" in capsys.readouterr().out


def test_draft_decode_bench_times_both_ways_to_the_same_size(tmp_path, capsys):
    """The reduced-size JPEG figure (docs/benchmarks.md) has this command behind it (honesty audit s34: it
    had none); each way decodes the sample photos and resizes them to the target."""
    import json

    from streamaug.benchmarks import draft_decode
    from streamaug.loader.image_codec import decode_image, decode_image_at_least, resize_image

    draft_decode.main(["--sizes", "100x150", "--repeats", "1", "--rounds", "1", "--json", str(tmp_path / "d.json")])
    (row,) = json.load(open(tmp_path / "d.json"))["results"]
    assert row["size"] == [100, 150] and row["full_ms"] > 0 and row["draft_ms"] > 0
    assert row["speedup"] == pytest.approx(row["full_ms"] / row["draft_ms"], rel=0.02)
    assert "| 100×150 |" in capsys.readouterr().out
    raw = draft_decode.photos()[0]
    assert resize_image(decode_image(raw, "jpg"), (100, 150)).shape == \
        resize_image(decode_image_at_least(raw, "jpg", (100, 150)), (100, 150)).shape == (100, 150, 3)


@pytest.mark.parametrize("module, argv, message", [
    ("draft_decode", ["--sizes", "10x"], "--sizes takes HxW targets such as 100x150, got \\['10x'\\]"),
    ("draft_decode", ["--sizes", "0x5"], "--sizes takes HxW targets"),
    ("draft_decode", ["--repeats", "0"], "argument --repeats: must be an int >= 1, got '0'"),
    ("unused_fields_memory", ["--fields", "0"], "argument --fields: must be an int >= 1, got '0'"),
    ("unused_fields_memory", ["--mib", "x"], "argument --mib: must be an int >= 1, got 'x'"),
])
def test_memory_and_decode_benches_name_a_bad_argument(module, argv, message, capsys):
    import importlib

    with pytest.raises(SystemExit):
        importlib.import_module(f"streamaug.benchmarks.{module}").main(argv)
    assert re.search(message, capsys.readouterr().err)


@pytest.mark.parametrize("argv, message", [(["--device", "gpu"], "invalid choice: 'gpu'"),
                                           (["--repeats", "0"], "--repeats"), (["--batch", "-3"], "--batch")])
def test_decode_overlap_bench_names_a_bad_argument(argv, message, capsys):
    from streamaug.benchmarks import decode_overlap

    with pytest.raises(SystemExit):
        decode_overlap.main(argv)
    assert message in capsys.readouterr().err


def test_host_overhead_bench_counts_and_times_every_stage(tmp_path, capsys):
    import json

    from streamaug.benchmarks import host_overhead

    assert host_overhead.main(["--batch", "16", "--calls", "2", "--repeats", "1", "--json", str(tmp_path / "h.json")]) == 0
    result = json.load(open(tmp_path / "h.json"))
    stages = result["stages"]
    receive = stages.pop("receive")
    assert len(stages) == 3 and receive["main_process_cpu_ms_per_batch"] > 0 and receive["batches"] == 16
    for name, row in stages.items():
        assert row["ms_per_batch"] > 0 and row["aten_ops"] >= row["aten_ops_on_images"] >= 1, name
    assert stages["output format (float32, normalize)"]["aten_ops"] < 20
    assert "| bench Compose (flip, rotate, shear, noise) |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        host_overhead.main(["--batch", "0"])


def test_raise_position_counts_the_batches_before_the_error(tmp_path):
    """The README's read-ahead figures: each layout raises, and no batch at or after the one that
    holds the bad sample comes first (with an index, in dataset order, that batch is 10)."""
    from streamaug.benchmarks import raise_position

    rows = raise_position.main(["--workers", "0", "2", "--json", str(tmp_path / "r.json")])
    assert [(r["index"], r["workers"]) for r in rows] == [(True, 0), (True, 2), (False, 0), (False, 2)]
    assert all(r["raised"] and 0 <= r["batches_before_error"] <= r["bad_sample_batch"] for r in rows)
    assert [r["bad_sample_batch"] for r in rows if r["index"]] == [10, 10]
    with pytest.raises(SystemExit):
        raise_position.main(["--workers", "-1"])


def test_a_quick_bench_report_says_its_ratios_are_not_measurements(tmp_path, capsys):
    """--quick printed its target ratios (19.01x vs DALI-only, SMOTE cost -39%) like results, and
    only bench.json said quick (newcomer run)."""
    from streamaug.benchmarks.bench_report import write_report

    write_report([], str(tmp_path / "quick"), quick=True)
    assert "**Quick run (--quick)" in capsys.readouterr().out
    assert (tmp_path / "quick" / "bench.md").read_text().startswith("**Quick run (--quick)")
    write_report([], str(tmp_path / "full"))
    assert "Quick run" not in (tmp_path / "full" / "bench.md").read_text()


def test_the_peer_pipelines_refuse_shards_they_cannot_read(tmp_path):
    """Before, any index that was not npy was read as jpg: png shards, or a mix of types,
    failed inside webdataset or DALI with a missing-field error."""
    from streamaug.benchmarks.bench_pipelines import peer_ext
    from streamaug.loader import write_shards

    images, labels = np.zeros((4, 8, 8, 3), np.uint8), np.arange(4) % 2
    for fmt in ("npy", "jpg"):
        assert peer_ext(write_shards((images, labels), str(tmp_path / fmt), image_format=fmt, progress=False)) == fmt
    index = write_shards((images, labels), str(tmp_path / "png"), image_format="png", progress=False)
    with pytest.raises(ValueError, match=r"read \.npy or \.jpg shards of one image type, not 'png'"):
        peer_ext(index)


STUCK_CELL = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
open(sys.argv[1], "w").write(str(child.pid))
print("working on it", flush=True)
time.sleep(120)
"""


def ended(pid: int) -> bool:
    """Whether ``pid`` ends within 5 s (killed: gone, or a zombie until init reaps it)."""
    for _ in range(100):
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ")[1][0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def test_a_cell_past_its_timeout_is_recorded_as_failed_with_its_processes_killed(tmp_path, monkeypatch):
    """Red team s36: TimeoutExpired ended the whole run, traceback and no report, and the cells
    after it never ran."""
    from streamaug.benchmarks import run

    pid_file = tmp_path / "child.pid"
    monkeypatch.setattr(run, "CELL_COMMAND", [sys.executable, "-c", STUCK_CELL, str(pid_file)])
    start = time.monotonic()
    r = run.spawn({"section": "batch", "pipeline": "p", "data": "npy32"}, timeout=3)
    assert time.monotonic() - start < 60
    assert r["status"] == "failed" and r["section"] == "batch"
    assert r["error"].startswith("timed out after 3 s (--timeout") and "working on it" in r["error"]
    assert ended(int(pid_file.read_text())), "the cell's own child process outlived the timeout"


def test_a_full_run_does_not_keep_the_cells_of_an_earlier_quick_run(tmp_path, capsys):
    """Red team s36: `bench --quick --sections batch`, then a full `--sections workers` into the
    same --out, gave a full report whose batch rows were the quick run's, unmarked."""
    import json

    from streamaug.benchmarks.run import _kept_cells

    cells = [{"section": "batch", "data": "npy32", "pipeline": "streamaug-kornia", "quick": True},
             {"section": "batch", "data": "npy32", "pipeline": "streamaug-kornia", "quick": False},
             {"section": "scaling", "data": "npy32", "pipeline": "streamaug-kornia+smote"}]   # older: the file's flag
    (tmp_path / "bench.json").write_text(json.dumps({"quick": True, "cells": cells}))
    assert _kept_cells(str(tmp_path), ["workers"], ["npy32"], quick=False) == [cells[1]]
    assert "left out 2 cell(s) of an earlier --quick run, which a full report does not mix in" in \
        capsys.readouterr().out
    assert _kept_cells(str(tmp_path), ["workers"], ["npy32"], quick=True) == [cells[0], cells[2]]
    assert _kept_cells(str(tmp_path), ["batch", "scaling"], ["npy32"], quick=False) == []


SIGNAL_IN_BENCH = """
import signal, sys
from streamaug.benchmarks import run
signal.signal(signal.SIGINT, signal.default_int_handler)   # (as at a terminal: a background job inherits it ignored)
run.CELL_COMMAND = [sys.executable, "-c", sys.argv[1], sys.argv[2]]
try:
    with run.termination_raises():
        run.spawn({"section": "batch"}, timeout=100)
except (KeyboardInterrupt, SystemExit) as e:
    print("stopped", type(e).__name__, flush=True)
"""


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM", "SIGHUP"])
def test_ctrl_c_or_a_kill_of_bench_stops_the_cell_and_its_processes(tmp_path, sig):
    """Review s36: in a session of its own, the cell got no SIGINT from the terminal and ran on
    (and a second review: nor SIGTERM or SIGHUP)."""
    pid_file = tmp_path / "child.pid"
    bench = subprocess.Popen([sys.executable, "-c", SIGNAL_IN_BENCH, STUCK_CELL, str(pid_file)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(1200):            # the cell runs (its child is started): the signal comes from outside,
        if pid_file.exists() and pid_file.read_text():      # as a terminal's Ctrl-C or a kill does (a
            break                    # thread of its own sending it could have it land on that thread)
        time.sleep(0.05)
    bench.send_signal(getattr(signal, sig))
    stdout, stderr = bench.communicate(timeout=120)
    assert stdout.startswith("stopped "), stderr[-2000:]
    assert ended(int(pid_file.read_text())), "the cell's child process outlived Ctrl-C"
