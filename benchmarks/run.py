"""``streamaug bench``: end-to-end loader and training-feed throughput against the peers.

    streamaug bench --out benchmarks/results/cpu            # full run on this machine
    streamaug bench --quick --out /tmp/bench                # tiny: what CI runs (no thresholds)
    streamaug bench --gpu-check                             # the GPU proof (see gpu_check.py)

Generates its own shards (32×32 ``.npy`` and 224×224 ``.jpg`` from scikit-learn's bundled
photos, imbalanced labels), then runs every pipeline in ``bench_pipelines`` over the same
shards, ops and batch size, each cell in its own process (so peak RSS is its own):

* samples/s (median of repeats after a warm-up pass) and CPU seconds per sample of the
  whole process tree (the main process and its DataLoader workers, live or reaped:
  ``process_tree.py``). The pipelines run in ``--rounds`` (default 3), interleaved, each
  pipeline once per round in a process of its own, and each ratio is the median of its values
  paired by round (``bench_rounds.py``);
* peak RSS, and peak GPU memory on a GPU;
* the training *feed ratio*: one small CNN trained from the pipeline, divided by the same
  model trained on the same batches already resident on the device (1.0 = the loader is free);
  both after the same warm-up steps, timed alternately, median of each;
* scaling: streamaug with balancing over 10k → 1M samples (a resampled stream: the shards
  are linked under new names), and sweeps over ``num_workers`` and batch size;
* contention: each pipeline's samples/s again "with N busy workers" (``--busy``, default 1:
  N CPU-bound processes spin during those passes, see ``busy_workers.py``), the idle and busy
  passes alternating, with ``busy_vs_idle`` and the load average recorded.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import shutil
import subprocess
import sys
import tempfile
import time

import torch

from streamaug.benchmarks.bench_data import KINDS, make_bench_shards
from streamaug.benchmarks.bench_pipelines import MAIN_SIDE, PIPELINES, build
from streamaug.benchmarks.bench_rounds import interleaved, merge_rounds
from streamaug.benchmarks.busy_workers import busy_workers, load_average
from streamaug.benchmarks.cli_arguments import at_least_one
from streamaug.benchmarks.machine_info import source_commit
from streamaug.benchmarks.process_tree import tree_cpu_seconds, tree_peak_rss_mib
from streamaug.loader import ShardIndex
from streamaug.loader.shard_index import INDEX_NAME, ShardInfo

SIZES = {"full": {"npy32": 20000, "jpg224": 2000, "jpg512": 400, "repeats": 3, "rounds": 3, "round_repeats": 1,
                  "scaling": [10_000, 100_000, 1_000_000], "workers": [0, 1, 2], "batches": [64, 256]},
         "quick": {"npy32": 512, "jpg224": 64, "jpg512": 16, "repeats": 1, "rounds": 1, "round_repeats": 1,
                   "scaling": [1000, 4000], "workers": [0, 2], "batches": [32, 64]}}


def feed_model(device, size: int):
    from streamaug.benchmarks.small_cnn import ResNet18Like, SmallCNN

    if device.type == "cuda":
        return ResNet18Like(3, 10, small_input=size < 64).to(device).to(memory_format=torch.channels_last)
    return SmallCNN(3, 10, width=16).to(device)


def train_rate(model, batches, device) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    n, start = 0, time.perf_counter()
    for images, targets in batches:
        loss = torch.nn.functional.cross_entropy(model(images), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n += len(images)
    sync()
    return n / (time.perf_counter() - start)


def run_cell(cell: dict) -> dict:
    """One pipeline on one dataset, in this process."""
    device = torch.device(cell["device"])
    index = ShardIndex.load(cell["index"])
    pipe = build(cell["pipeline"], index, cell["batch"], cell["workers"], device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def one_pass() -> tuple[int, float, float]:
        c0, t0, n = tree_cpu_seconds(), time.perf_counter(), 0
        for images, _ in pipe:
            n += len(images)
        sync()
        return n, time.perf_counter() - t0, tree_cpu_seconds() - c0

    one_pass()                                                    # warm-up
    idle, loaded = [], []
    for _ in range(cell["repeats"]):          # idle and busy passes alternate, so drift hits both alike
        idle.append(one_pass())
        if cell.get("busy_workers"):
            with busy_workers(cell["busy_workers"]):
                loaded.append(one_pass())
    runs = sorted(idle, key=lambda r: r[0] / r[1])
    n, dt, cpu = runs[len(runs) // 2]
    out = {"samples_per_s": n / dt, "cpu_s_per_sample": cpu / n, "samples_per_pass": n, "loadavg": load_average()}
    if loaded:
        rates = sorted(r[0] / r[1] for r in loaded)
        out["busy"] = {"workers": cell["busy_workers"], "samples_per_s": rates[len(rates) // 2], "loadavg": load_average()}
        out["busy_vs_idle"] = out["busy"]["samples_per_s"] / out["samples_per_s"]
    if cell.get("feed"):
        size = index.image_shape[0]
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = feed_model(device, size)
        torch.backends.cudnn.benchmark = True
        resident = [(x.clone(), y.clone()) for x, y in pipe]
        train_rate(model, resident[:3], device)          # warm-up (cuDNN autotuning, allocator) before timing
        fed, kept = [], []
        for _ in range(max(3, cell["repeats"])):           # alternate, so drift hits both alike; a median of 3
            fed.append(train_rate(model, pipe, device))
            kept.append(train_rate(model, resident, device))
        out.update(fed_samples_per_s=sorted(fed)[len(fed) // 2], resident_samples_per_s=sorted(kept)[len(kept) // 2])
        out["feed_ratio"] = out["fed_samples_per_s"] / out["resident_samples_per_s"]
    out["peak_rss_mib"] = tree_peak_rss_mib()        # live workers included (process_tree.py)
    if device.type == "cuda":
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


CELL_COMMAND = [sys.executable, "-m", "streamaug.benchmarks.run", "--cell"]     # + the cell, as JSON


def spawn(cell: dict, timeout: float) -> dict:
    """Run ``cell`` in a process of its own; past ``timeout`` it and the processes it started
    (reading workers, busy workers) are killed and the cell is recorded as failed, and the run
    goes on (red team s36: the timeout ended the whole run, with no report)."""
    proc = subprocess.Popen([*CELL_COMMAND, json.dumps(cell)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env=dict(os.environ, PYTHONWARNINGS="ignore"))
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        stdout, stderr = proc.communicate()
        return {**cell, "status": "failed", "error": f"timed out after {timeout:.0f} s (--timeout; the largest "
                f"scaling cell gets 3x); its last output: {(stderr or stdout)[-500:]}"}
    except BaseException:             # Ctrl-C: its own session gets no SIGINT from the terminal
        _kill_group(proc)
        proc.wait()
        raise
    line = next((ln for ln in stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        return {**cell, "status": "failed", "error": (stderr or stdout)[-800:]}
    return {**cell, "status": "ok", **json.loads(line[7:])}


@contextlib.contextmanager
def termination_raises():
    """SIGTERM and SIGHUP (``kill``, ``timeout``, a closed terminal) raise ``SystemExit`` while the
    cells run, so ``spawn`` kills the running cell's process group, as on Ctrl-C (a cell in its own
    session gets no signal from the terminal)."""
    def leave(signum, frame):
        raise SystemExit(128 + signum)
    earlier = {sig: signal.signal(sig, leave) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in earlier.items():
            signal.signal(sig, handler)


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def resampled_index(index: ShardIndex, n: int, folder: str) -> ShardIndex:
    """An index of ``n`` samples made of the same shards hard-linked under new names (a
    symlink would resolve to the shard it repeats, and an index may not list a shard twice)."""
    os.makedirs(folder, exist_ok=True)
    shards, total, i = [], 0, 0
    while total < n:
        src = index.shards[i % len(index.shards)]
        dst = os.path.join(folder, f"copy-{i:06d}.tar")
        if os.path.islink(dst):                  # left by an older version of this function
            os.remove(dst)
        if not os.path.exists(dst):
            try:
                os.link(src.url, dst)
            except OSError:                      # another filesystem: copy
                shutil.copyfile(src.url, dst)
        shards.append(ShardInfo(dst, src.count, src.class_counts))
        total += src.count
        i += 1
    out = ShardIndex(shards, index.num_classes, index.class_names, index.image_ext, index.image_shape,
                     os.path.join(folder, INDEX_NAME), index.label_key, index.label_names)
    out.save(out.source)
    return out


SECTIONS = ("pipelines", "scaling", "workers", "batch")


def _kept_cells(out: str, sections: list[str], kinds: list[str], quick: bool) -> list[dict]:
    """Cells not being rerun (other sections, and the pipelines of other ``kinds``), from an
    earlier ``bench.json`` in ``out``; each keeps the ``commit`` it measured. Only cells of the
    same kind of run: a ``--quick`` cell in a full report would read as a measurement (red team
    s36), and a full one in a quick report would be labelled as not one."""
    path = os.path.join(out, "bench.json")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        doc = json.load(f)
    others = [c for c in doc["cells"] if c["section"] not in sections
              or (c["section"] == "pipelines" and c["data"] not in kinds)]
    kept = [c for c in others if c.get("quick", doc.get("quick", False)) == quick]
    if len(kept) < len(others):
        print(f"{path}: left out {len(others) - len(kept)} cell(s) of an earlier "
              f"{'full' if quick else '--quick'} run, which a {'--quick' if quick else 'full'} report does not mix in",
              flush=True)
    return kept


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--cell"]:
        print("RESULT " + json.dumps(run_cell(json.loads(argv[1]))), flush=True)
        return 0
    if "--gpu-check" in argv:
        from streamaug.benchmarks.gpu_check import main as gpu_check

        return gpu_check([a for a in argv if a != "--gpu-check"])
    p = argparse.ArgumentParser(prog="streamaug bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--gpu-check", action="store_true",
                   help="run the GPU proof instead (CUDA tests, GPU benchmark, results; with --device cpu --dry "
                        "it checks the harness on a CPU): see `streamaug bench --gpu-check --help`")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the harness, measures nothing")
    p.add_argument("--out", default="benchmarks/results/bench")
    p.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "streamaug-bench-data"),
                   help="where shards are generated (outside the repository)")
    p.add_argument("--kinds", nargs="+", default=["npy32", "jpg224"], choices=KINDS,
                   help="the data of the pipelines section, run in this order (default: npy32 jpg224; "
                        "jpg512, on request, is the large-image regime)")
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS,
                   help="run only these; the others are kept from an existing OUT/bench.json")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--pipelines", nargs="+", default=None, choices=PIPELINES + MAIN_SIDE,
                   help="default: all (the CPU-only streamaug-opencv* ones only with --device cpu)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: all cores)")
    p.add_argument("--busy", type=int, default=1,
                   help="busy workers for each pipeline's contention figure (0: skip it)")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--feed-kinds", nargs="*", default=["npy32", "jpg224"], choices=KINDS,
                   help="the data whose pipeline cells also measure the feed ratio (default: both). On a "
                        "2-core CPU the small CNN trains at ~35 samples/s at 224², so there it times the "
                        "model, not the loader, and takes most of the run")
    p.add_argument("--repeats", type=at_least_one, default=None,
                   help="timed passes per cell and round (default: 3, and 1 per round of the pipelines; quick: 1)")
    p.add_argument("--rounds", type=at_least_one, default=None,
                   help="runs of each pipelines cell, interleaved (the order reversed every other round); a "
                        "pipeline's rate is the median of its rounds, each target ratio the median of its per-round "
                        "values (default: 3, quick: 1)")
    args = p.parse_args(argv)
    if args.pipelines is None:
        args.pipelines = [n for n in PIPELINES if args.device == "cpu" or "opencv" not in n]
    from tqdm.auto import tqdm

    from streamaug.benchmarks.bench_report import write_report

    plan = SIZES["quick" if args.quick else "full"]
    workers = args.workers if args.workers is not None else len(os.sched_getaffinity(0))
    data = args.data
    indexes = {kind: make_bench_shards(data, kind, plan[kind]) for kind in dict.fromkeys(["npy32", *args.kinds])}
    repeats = args.repeats if args.repeats is not None else plan["repeats"]
    rounds = args.rounds if args.rounds is not None else plan["rounds"]
    base = {"device": args.device, "repeats": repeats, "batch": args.batch, "workers": workers,
            "commit": source_commit(), "quick": args.quick}       # per cell: cells kept from an earlier run keep theirs
    pipelines = list(dict.fromkeys(args.pipelines))          # (one cell a pipeline, named twice or not)
    cells = [dict(base, section="pipelines", data=kind, pipeline=name, index=indexes[kind].source, round=r,
                  repeats=args.repeats if args.repeats is not None else plan["round_repeats"],
                  feed=kind in args.feed_kinds and r == 0, busy_workers=args.busy)
             for kind in dict.fromkeys(args.kinds) for r, name in interleaved(pipelines, rounds)]
    biggest = max(plan["scaling"])
    for n in plan["scaling"]:
        scaled = resampled_index(indexes["npy32"], n, os.path.join(data, f"scaled-{n}"))
        cells.append(dict(base, section="scaling", data="npy32", n=scaled.total, repeats=1,
                          pipeline="streamaug-kornia+smote", index=scaled.source))
    for w in plan["workers"]:
        cells.append(dict(base, section="workers", data="npy32", pipeline="streamaug-kornia", workers=w,
                          index=indexes["npy32"].source))
    for b in plan["batches"]:
        cells.append(dict(base, section="batch", data="npy32", pipeline="streamaug-kornia", batch=b,
                          index=indexes["npy32"].source))
    cells = [c for c in cells if c["section"] in args.sections]
    kept, results, runs = _kept_cells(args.out, args.sections, args.kinds, args.quick), [], {}
    for i, cell in enumerate(tqdm(cells, desc="bench cells", unit="cell")):
        with termination_raises():
            r = spawn(cell, args.timeout * (3 if cell.get("n") == biggest else 1))
        if "round" in cell:
            runs.setdefault((cell["data"], cell["pipeline"]), []).append(r)
        else:
            results.append(r)
        if r["status"] != "ok":
            where = f" round {cell['round']}" if "round" in cell else ""
            tqdm.write(f"FAILED {cell['section']} {cell['pipeline']} {cell['data']}{where}: {r['error'][-300:]}")
        if i + 1 < len(cells):       # a stopped run keeps the cells it finished (marked incomplete)
            write_report(kept + [merge_rounds(v) for v in runs.values()] + results, args.out, quick=args.quick,
                         complete=False)
    results = kept + [merge_rounds(v) for v in runs.values()] + results
    write_report(results, args.out, quick=args.quick)
    ran = results[len(kept):]                 # (a kept cell's failure was reported by the run that made it)
    failed = [r for r in ran if r["status"] != "ok" or any(x["status"] != "ok" for x in r.get("rounds", ()))]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
