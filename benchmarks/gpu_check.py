"""``streamaug bench --gpu-check``: the GPU proof in one command (under 10 minutes).

    streamaug bench --gpu-check --out benchmarks/results/gpu     # on a machine with CUDA
    streamaug bench --gpu-check --device cpu --dry --out /tmp/g  # CI: the same harness, tiny, on the CPU

1. **Tests.** ``pytest -m cuda``: every test case that runs on CUDA (the op grid on
   ``cuda``, op on CUDA = op on CPU, nvJPEG = PIL, no host sync in the plug-in path,
   balance + SMOTE counts on CUDA, resume on ``backend="dali"``). With ``--device cpu``
   the device-path tests run on the CPU instead, so the harness itself is exercised.
2. **Benchmark.** 224² JPEG and 32² ``.npy`` shards; streamaug (Kornia and DALI
   backends, worker or nvJPEG decode, with and without balancing) against
   DataLoader + albumentations, a hand-written DALI pipeline and WebDataset + Kornia
   unfused, each cell in its own process, with a ResNet-18-like training step for
   the feed ratio; samples/s, CPU per sample, peak RSS and GPU memory.
3. **Report.** ``OUT/gpu_check.json`` (device named), ``bench.md``, ``throughput.png``,
   ``tests.txt``; the target ratios are printed.

``--dali off`` leaves out the DALI cells and test cases (``-m "cuda and not dali"``), and
``--dali only`` runs only those, so the check can run in two halves on a machine that gets
DALI later (``--merge`` adds the first half's cells to the second's ratios); ``auto`` (the
default) runs both where ``nvidia.dali`` imports and records the DALI cells as skipped, by
name, where it does not. ``gpu_check.json`` is rewritten after the tests and after each
cell, so a run stopped part-way still leaves what it measured.

Cells run in priority order within ``--budget`` seconds; a cell that would start too
late is recorded as skipped, never silently dropped. ``--dry`` has no budget unless given
one, and a cell skipped or failed there fails the check: it exists to show that every
cell still runs (on 2 loaded cores the 570 s budget skipped five of six 32² cells, and the
check passed).
"""
from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET

import torch

TARGETS = {"vs_albumentations_jpg224": 3.0, "vs_dali_only": 1.0, "feed_ratio": 0.95, "smote_cost": 0.10}
FULL_BUDGET = 480.0      # s: run 2 used 482 s of a 500 s budget; a lent machine's command stops at 600 s
SIZES = {"full": {"npy32": 30000, "jpg224": 6000, "repeats": 2},
         "dry": {"npy32": 256, "jpg224": 32, "repeats": 1}}
ORDER = {   # the target cells first
    "jpg224": ["streamaug-kornia+nvjpeg", "dataloader-albumentations", "dali-only", "streamaug-dali+nvjpeg",
               "streamaug-kornia+nvjpeg+smote", "streamaug-kornia", "webdataset-kornia-unfused",
               "streamaug-kornia+smote", "streamaug-dali"],
    "npy32": ["streamaug-kornia", "dataloader-albumentations", "dali-only", "streamaug-dali",
              "streamaug-kornia+smote", "webdataset-kornia-unfused"],
}


def dali_missing() -> str | None:
    """Why ``nvidia.dali`` cannot be used here (``None``: it can)."""
    try:
        importlib.import_module("nvidia.dali")
    except Exception as e:     # (ImportError, or a broken install's OSError)
        return f"nvidia.dali does not import: {type(e).__name__}: {e}"
    return None


def is_dali_cell(pipeline: str) -> bool:
    """A cell that needs DALI: its augmentation backend, nvJPEG decode, or the DALI-only peer."""
    return "dali" in pipeline or "nvjpeg" in pipeline


def host_id() -> str:
    """This machine, as two halves of a check run on it can be matched: host name and boot id."""
    try:
        boot = open("/proc/sys/kernel/random/boot_id").read().strip()
    except OSError:
        boot = "?"
    return f"{os.uname().nodename}/{boot}"


def merged_cells(path: str, device_name: str) -> list[dict]:
    """The measured cells of an earlier half (``--merge``), each marked with where it came from.
    Refused from another kind of device; from another machine (host or boot) they are kept and
    said to be, since rates move between machines."""
    import json

    try:
        with open(path) as f:
            first = json.load(f)
    except OSError as e:
        raise SystemExit(f"--merge {path}: cannot be read ({type(e).__name__}: {e})")
    except ValueError as e:
        raise SystemExit(f"--merge {path}: not a gpu_check.json (not JSON: {e})")
    if not isinstance(first, dict) or not isinstance(first.get("cells", []), list):
        raise SystemExit(f"--merge {path}: not a gpu_check.json (no object with a list of cells)")
    if first.get("device_name") != device_name:
        raise SystemExit(f"--merge {path}: measured on {first.get('device_name')!r}, not this {device_name!r}")
    if first.get("host") != host_id():
        print(f"note: --merge {path} ran on {first.get('host')}, this run on {host_id()}: "
              "ratios across the halves compare two machines", flush=True)
    return [{**c, "merged_from": path, "merged_host": first.get("host")}
            for c in first.get("cells", []) if c.get("status") == "ok"]


def run_tests(device: str, tests: str, out: str, timeout: float, dali: str = "auto") -> dict:
    """Run the device test cases (``dali``: ``auto``, ``off`` or ``only`` the DALI cases, marked
    ``dali`` by ``tests/conftest.py``); return counts and the failures' first lines."""
    if not os.path.isdir(tests):
        return {"status": "not run", "reason": f"no tests folder at {tests!r} (run from the repository root)"}
    xml = os.path.join(out, "tests.xml")
    marks = {"auto": [], "off": ["not dali"], "only": ["dali"]}[dali]
    if device == "cuda":
        selection = [tests, "-m", " and ".join(["cuda", *marks])]
    else:
        selection = [os.path.join(tests, "test_device_path.py"), *(["-m", marks[0]] if marks else [])]
    # (one module that fails to import must not cost the others' cases)
    cmd = [sys.executable, "-m", "pytest", *selection, "-q", "-p", "no:cacheprovider", f"--junitxml={xml}",
           "--continue-on-collection-errors", "-W", "ignore::DeprecationWarning"]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        text, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        text, rc = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or ""), -1
    with open(os.path.join(out, "tests.txt"), "w") as f:
        f.write(" ".join(cmd) + "\n\n" + text)
    summary = {"command": " ".join(cmd[1:]), "returncode": rc, "seconds": round(time.perf_counter() - t0, 1)}
    if os.path.exists(xml):
        root = ET.parse(xml).getroot()
        counts = {"passed": 0, "failed": 0, "skipped": 0}
        failures = []
        for case in root.iter("testcase"):
            bad = case.find("failure") if case.find("failure") is not None else case.find("error")
            if bad is not None:
                counts["failed"] += 1
                message = (bad.get("message") or bad.text or "").strip().splitlines()
                failures.append(f"{case.get('classname')}::{case.get('name')}: {message[0][:300] if message else ''}")
            elif case.find("skipped") is not None:
                counts["skipped"] += 1
            else:
                counts["passed"] += 1
        os.remove(xml)
        summary.update(counts, failures=failures)
    summary["status"] = "passed" if rc == 0 else ("timed out" if rc == -1 else "failed")
    if rc == 5:       # pytest: nothing collected (a selection that matches no case is not a pass)
        summary["status"] = "failed"
        summary.setdefault("failures", []).append(f"no test case was selected by {' '.join(selection)!r}")
    return summary


def bench_cells(device: str, data: str, plan: dict, workers: int, batch: int, busy: int = 0,
                dali: str = "auto") -> list[dict]:
    from streamaug.benchmarks.bench_data import make_bench_shards

    cells = []
    for kind in ("jpg224", "npy32"):
        index = make_bench_shards(data, kind, plan[kind])
        for name in ORDER[kind]:
            if (dali == "off" and is_dali_cell(name)) or (dali == "only" and not is_dali_cell(name)):
                continue
            cells.append({"device": device, "repeats": plan["repeats"], "batch": batch, "workers": workers,
                          "section": "pipelines", "data": kind, "pipeline": name, "index": index.source,
                          "feed": True, "busy_workers": busy})
    return cells


def run_bench(cells: list[dict], deadline: float, cell_timeout: float, no_dali: str | None = None,
              save=lambda results: None) -> list[dict]:
    """Each cell in its own process, in order; ``no_dali``: why DALI cells are skipped (they are
    recorded, by name). ``save(results)`` runs after each cell."""
    from streamaug.benchmarks.run import spawn

    results = []
    for cell in cells:
        save(results)
        if no_dali and is_dali_cell(cell["pipeline"]):
            results.append({**cell, "status": "skipped", "error": no_dali})
            print(f"  skipped {cell['data']} {cell['pipeline']}: no DALI", flush=True)
            continue
        left = deadline - time.time()
        if left < 20:
            results.append({**cell, "status": "skipped", "error": "time budget used up before this cell"})
            print(f"  skipped {cell['data']} {cell['pipeline']}: time budget", flush=True)
            continue
        t0 = time.perf_counter()
        try:
            r = spawn(cell, min(cell_timeout, left))
        except subprocess.TimeoutExpired:
            r = {**cell, "status": "failed", "error": f"timed out after {min(cell_timeout, left):.0f} s"}
        r["wall_s"] = round(time.perf_counter() - t0, 1)
        results.append(r)
        shown = (f"{r['samples_per_s']:,.0f} samples/s, feed {r.get('feed_ratio', float('nan')):.2f}"
                 if r["status"] == "ok" else f"{r['status']}: {r['error'][-400:]}")
        print(f"  {cell['data']} {cell['pipeline']}: {shown} ({r['wall_s']} s)", flush=True)
    save(results)
    return results


def target_lines(headline: dict, results: list[dict]) -> list[dict]:
    """Each target with its measured value (None where its cells did not run)."""
    out = []
    rows = {(r["data"], r["pipeline"]): r for r in results if r["status"] == "ok"}
    jpg = headline.get("jpg224", {})
    best = jpg.get("best_streamaug")
    alb = rows.get(("jpg224", "dataloader-albumentations"))
    value = rows[("jpg224", best)]["samples_per_s"] / alb["samples_per_s"] if best and alb else None
    out.append({"target": "jpg224 best streamaug / DataLoader+albumentations", "goal": f">= {TARGETS['vs_albumentations_jpg224']}",
                "measured": value, "met": value is not None and value >= TARGETS["vs_albumentations_jpg224"]})
    for data, h in headline.items():
        v = h.get("best_vs_dali_only")
        out.append({"target": f"{data} best streamaug / DALI-only", "goal": f">= {TARGETS['vs_dali_only']}",
                    "measured": v, "met": v is not None and v >= TARGETS["vs_dali_only"]})
        v = h.get("feed_ratio_best_streamaug")
        out.append({"target": f"{data} feed ratio of {h.get('best_streamaug')}", "goal": f">= {TARGETS['feed_ratio']}",
                    "measured": v, "met": v is not None and v >= TARGETS["feed_ratio"]})
        v = h.get("smote_throughput_cost")
        out.append({"target": f"{data} balance+SMOTE throughput cost ({h.get('smote_pipeline')})",
                    "goal": f"<= {TARGETS['smote_cost']:.0%}", "measured": v,
                    "met": v is not None and v <= TARGETS["smote_cost"]})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="streamaug bench --gpu-check", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    p.add_argument("--dry", action="store_true", help="tiny sizes: checks the harness, measures nothing")
    p.add_argument("--out", default="benchmarks/results/gpu")
    p.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "streamaug-gpu-check-data"))
    p.add_argument("--tests", default="tests", help="the repository's tests folder")
    p.add_argument("--budget", type=float, default=None,
                   help=f"seconds for the tests and cells (default {FULL_BUDGET:.0f}, which leaves a 600 s command "
                        "room for start-up and the report; none with --dry)")
    p.add_argument("--test-timeout", type=float, default=200.0)
    p.add_argument("--cell-timeout", type=float, default=150.0)
    p.add_argument("--workers", type=int, default=None, help="loader workers (default: all cores)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--busy", type=int, default=0,
                   help="also time each cell with N busy CPU workers (see busy_workers.py); doubles bench time")
    p.add_argument("--dali", choices=["auto", "off", "only"], default="auto",
                   help="the DALI cells and test cases: all where DALI imports (auto), none (off), or only them")
    p.add_argument("--merge", default=None, metavar="GPU_CHECK_JSON",
                   help="a first half's gpu_check.json: its cells join this run's ratios and tables")
    p.add_argument("--skip-tests", action="store_true")
    p.add_argument("--skip-bench", action="store_true")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch sees no CUDA device; use --device cpu --dry to check the harness")
    from streamaug.benchmarks.bench_report import headline, markdown, plots
    from streamaug.benchmarks.timing import write_result

    start = time.time()
    budget = args.budget if args.budget is not None else (float("inf") if args.dry else FULL_BUDGET)
    deadline = start + budget
    os.makedirs(args.out, exist_ok=True)
    plan = SIZES["dry" if args.dry else "full"]
    workers = args.workers if args.workers is not None else len(os.sched_getaffinity(0))
    device_name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    no_dali = dali_missing() if args.dali != "off" else None
    if no_dali and args.dali == "only":
        p.error(f"--dali only, but {no_dali}")
    print(f"gpu-check on {device_name} (torch {torch.__version__}, {workers} workers, "
          f"{'dry' if args.dry else 'full'} sizes, budget {budget:.0f} s, DALI {args.dali}"
          f"{': missing' if no_dali else ''})", flush=True)
    merged = merged_cells(args.merge, device_name) if args.merge else []
    tests = {"status": "not run", "reason": "--skip-tests"}
    results: list[dict] = []

    def save(done: list[dict]) -> None:
        head = headline(merged + done)
        write_result(os.path.join(args.out, "gpu_check.json"),
                     {"device": args.device, "device_name": device_name, "host": host_id(), "dry": args.dry,
                      "workers": workers, "dali": args.dali, "dali_missing": no_dali, "merged_from": args.merge,
                      "seconds": round(time.time() - start, 1), "tests": tests, "headline": head,
                      "targets": target_lines(head, merged + done), "cells": done, "merged_cells": merged},
                     quiet=True)

    made: dict = {}      # shards are generated (CPU) while the tests use the device

    def make_cells():
        try:
            made["cells"] = bench_cells(args.device, args.data, plan, workers, args.batch, args.busy, args.dali)
        except Exception as e:     # reported below, with the tests' results kept
            made["error"] = f"{type(e).__name__}: {e}"
    maker = threading.Thread(target=make_cells)
    if not args.skip_bench:
        maker.start()
    if not args.skip_tests:
        print("tests ...", flush=True)
        tests = run_tests(args.device, args.tests, args.out, min(args.test_timeout, budget / 2),
                          "off" if no_dali else args.dali)
        save(results)
        print(f"tests: {tests['status']} {dict((k, tests.get(k)) for k in ('passed', 'failed', 'skipped'))} "
              f"in {tests.get('seconds')} s", flush=True)
        for line in tests.get("failures", [])[:40]:
            print("  FAIL " + line, flush=True)
    if not args.skip_bench:
        maker.join()
        if "error" in made:
            print(f"bench data could not be made: {made['error']}", flush=True)
        else:
            print("bench ...", flush=True)
            results = run_bench(made["cells"], deadline, args.cell_timeout, no_dali, save)
    save(results)
    print(f"wrote {os.path.join(args.out, 'gpu_check.json')}")
    targets = target_lines(headline(merged + results), merged + results)
    shown_cells = merged + results
    if shown_cells:
        with open(os.path.join(args.out, "bench.md"), "w") as f:
            f.write(f"Device: {device_name}; {workers} loader workers; batch {args.batch}."
                    + (f" Cells of {args.merge} merged in." if merged else "") + "\n\n" + markdown(shown_cells))
        plots(shown_cells, args.out)
        print(markdown(shown_cells))
    print("targets (dry run: tiny sizes, so these are not measurements):" if args.dry else "targets:")
    for t in targets:
        shown = "not measured" if t["measured"] is None else f"{t['measured']:.2f}"
        verdict = "(dry)" if args.dry else ("met" if t["met"] else "MISSED")
        print(f"  {t['target']}: {shown} (goal {t['goal']}) {verdict}")
    print(f"done in {time.time() - start:.0f} s", flush=True)
    not_ok = {"failed"} | ({"skipped"} if args.dry else set())
    failed = tests["status"] in ("failed", "timed out") or "error" in made \
        or any(r["status"] in not_ok and not (no_dali and r.get("error") == no_dali) for r in results)
    if no_dali:         # (not a failure: the DALI half can follow with --dali only --merge)
        print(f"DALI cells and test cases skipped: {no_dali}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
