"""Streaming SMOTE (``ClassBalancer``) vs imbalanced-learn's ``SMOTE.fit_resample``.

    python -m streamaug.benchmarks.smote_vs_imblearn --json benchmarks/results/smote_cpu.json

Data: 3×32×32 images, 10% minority (binary), k=5, ``sampling_strategy="auto"``
(the minority is synthesized up to the majority: 0.8·N new samples). Each
(method, N) runs in its own process so peak RSS is its own; a watchdog ends a
run whose RSS passes ``--mem-limit-gib`` and records it as out of memory.

* imbalanced-learn gets the whole set as one float32 matrix (its API), and the
  timed part is ``fit_resample`` alone.
* streamaug gets the same kind of data as a stream of uint8 batches made on the
  fly (never stored), and the timed part is the balancer stage alone, run as the
  loader runs it (inside ``IntraOpThreads(main_process_threads(0))``); stream
  generation is excluded.

Every (method, N) is also timed "with N busy workers" (``--busy``, default 1):
the same timed part while that many CPU-bound processes spin (see
``busy_workers.py``); ``busy_vs_idle`` is the ratio of the two rates, and the load
average is recorded with each. ``--threads K`` runs the stage at K intra-op threads
instead (0: torch's default, no scope) to compare candidates.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

SHAPE = (3, 32, 32)
MINORITY = 0.10


def labels_for(n: int) -> np.ndarray:
    y = np.zeros(n, dtype=np.int64)
    y[: int(round(n * MINORITY))] = 1
    return np.random.default_rng(0).permutation(y)


def run_imblearn(n: int, busy: int = 0, threads: int = -1) -> dict:
    from imblearn.over_sampling import SMOTE

    from streamaug.benchmarks.busy_workers import busy_workers

    y = labels_for(n)
    x = np.random.default_rng(1).integers(0, 256, (n, int(np.prod(SHAPE))), dtype=np.uint8).astype(np.float32)
    with busy_workers(busy):
        start = time.perf_counter()
        _, y_new = SMOTE(k_neighbors=5, random_state=0).fit_resample(x, y)
        dt = time.perf_counter() - start
    return {"synthetic": int(len(y_new) - n), "seconds": dt}


def stage_threads(threads: int):
    """The scope the stage runs in: the loader's (``-1``), K threads, or none (``0``)."""
    import contextlib

    from streamaug.core.threads import IntraOpThreads, main_process_threads

    if threads == 0:
        return contextlib.nullcontext()
    return IntraOpThreads(main_process_threads(0) if threads < 0 else threads)


def run_streamaug(n: int, busy: int = 0, threads: int = -1, batch: int = 256) -> dict:
    import torch

    from streamaug.benchmarks.busy_workers import busy_workers
    from streamaug.core import BatchInFlight
    from streamaug.samplers import SMOTE, ClassBalancer

    y = labels_for(n)
    balancer = ClassBalancer("auto", SMOTE(k_neighbors=5), random_state=0, reservoir_size=512)
    balancer.fit(np.bincount(y, minlength=2).tolist())
    total_synth = balancer.synthetic_counts()[0]
    gen = torch.Generator().manual_seed(1)
    done, seconds, made = 0, 0.0, 0
    batch_id = 0
    scope, competing = stage_threads(threads), busy_workers(busy)
    competing.__enter__()
    while done < n:
        m = min(batch, n - done)
        images = torch.randint(0, 256, (m, *SHAPE), generator=gen, dtype=torch.uint8)
        labels = torch.from_numpy(y[done:done + m])
        keys = [str(i) for i in range(done, done + m)]
        s = round(total_synth * (done + m) / n) - round(total_synth * done / n)
        item = BatchInFlight(images=images, labels=labels, keys=keys, urls=["stream"] * m,
                             is_padding=torch.zeros(m, dtype=torch.bool), batch_id=batch_id)
        start = time.perf_counter()
        with scope:
            out = balancer(item, s)
            scope_threads = torch.get_num_threads()
        seconds += time.perf_counter() - start
        made += int(out.is_synthetic.sum())
        done += m
        batch_id += 1
    competing.__exit__(None, None, None)
    return {"synthetic": made, "seconds": seconds, "stage_threads": scope_threads,
            "reservoir_mib": balancer.reservoir_.memory_bytes() / 2**20}


def child(method: str, n: int, busy: int, threads: int) -> None:
    import resource

    result = (run_imblearn if method == "imblearn" else run_streamaug)(n, busy, threads)
    result["loadavg"] = [round(v, 2) for v in os.getloadavg()]
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result), flush=True)


def rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024
    except (OSError, StopIteration):
        return 0.0


def measure(method: str, n: int, mem_limit_gib: float, timeout: float, busy: int = 0, threads: int = -1) -> dict:
    proc = subprocess.Popen([sys.executable, "-m", "streamaug.benchmarks.smote_vs_imblearn", "--child", method, str(n),
                             str(busy), str(threads)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak, start = 0.0, time.time()
    while proc.poll() is None:
        peak = max(peak, rss_mib(proc.pid))
        if peak > mem_limit_gib * 1024:
            proc.kill()
            proc.wait()
            return {"status": "out of memory", "peak_rss_mib": peak,
                    "note": f"killed at {peak / 1024:.1f} GiB RSS (limit {mem_limit_gib} GiB on a machine of "
                            f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB)"}
        if time.time() - start > timeout:
            proc.kill()
            proc.wait()
            return {"status": "timeout", "seconds": timeout, "peak_rss_mib": peak}
        time.sleep(0.05)
    out, err = proc.communicate()
    line = next((ln for ln in out.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        oom = proc.returncode in (-9, 137) or "MemoryError" in err
        return {"status": "out of memory" if oom else "failed", "returncode": proc.returncode,
                "peak_rss_mib": peak, "stderr_tail": err[-500:]}
    result = json.loads(line[7:])
    result.update(status="ok", synthetic_per_s=result["synthetic"] / result["seconds"],
                  peak_rss_mib=max(peak, result["peak_rss_mib"]))
    return result


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child(argv[1], int(argv[2]), int(argv[3]), int(argv[4]))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 200_000, 1_000_000])
    p.add_argument("--mem-limit-gib", type=float, default=20.0)
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--busy", type=int, default=1, help="busy workers for the contention figure (0: skip it)")
    p.add_argument("--threads", type=int, default=-1,
                   help="stage threads: -1 the loader's scope (default), 0 torch's default, K fixed")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    rows = []
    for n in args.sizes:
        for method in ("streamaug", "imblearn"):
            r = {"n": n, "method": method, **measure(method, n, args.mem_limit_gib, args.timeout, 0, args.threads)}
            if args.busy and r["status"] == "ok":
                b = measure(method, n, args.mem_limit_gib, args.timeout, args.busy, args.threads)
                r["busy"] = {"workers": args.busy, **b}
                if b["status"] == "ok":
                    r["busy_vs_idle"] = b["synthetic_per_s"] / r["synthetic_per_s"]
            rows.append(r)
            rate = f"{r['synthetic_per_s']:10.0f}/s" if r["status"] == "ok" else f"{r['status']:>12s}"
            contention = (f"  with {args.busy} busy: {r['busy']['synthetic_per_s']:8.0f}/s ({r['busy_vs_idle']:.2f}x idle)"
                          if "busy_vs_idle" in r else "")
            print(f"N={n:>9,} {method:10s} {rate}{contention}  peak RSS {r['peak_rss_mib'] / 1024:6.2f} GiB"
                  f"  load {r.get('loadavg', [0])[0]:.2f}", flush=True)
    for n in args.sizes:
        ours = next(r for r in rows if r["n"] == n and r["method"] == "streamaug")
        theirs = next(r for r in rows if r["n"] == n and r["method"] == "imblearn")
        if ours["status"] == theirs["status"] == "ok":
            ours["rate_vs_imblearn"] = ours["synthetic_per_s"] / theirs["synthetic_per_s"]
            print(f"N={n:>9,}: streamaug/imblearn synthetic rate = {ours['rate_vs_imblearn']:.2f}x")
            if "busy_vs_idle" in ours and "busy_vs_idle" in theirs:
                ours["busy_rate_vs_imblearn"] = ours["busy"]["synthetic_per_s"] / theirs["busy"]["synthetic_per_s"]
                print(f"N={n:>9,}: with {args.busy} busy worker(s): {ours['busy_rate_vs_imblearn']:.2f}x")
    if args.json:
        from streamaug.benchmarks.timing import write_result

        write_result(args.json, {"shape": list(SHAPE), "minority": MINORITY, "k_neighbors": 5,
                                 "sampling_strategy": "auto", "reservoir_size": 512, "busy_workers": args.busy,
                                 "threads": args.threads, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
