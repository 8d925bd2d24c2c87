"""Shared timing helpers for the benchmark scripts: median of repeats after warm-up."""
from __future__ import annotations

import json
import os
import resource
import time
from collections.abc import Callable

from streamaug.benchmarks.machine_info import machine_info


def median_rate(fn: Callable[[], int], repeats: int = 5, warmup: int = 1) -> dict:
    """Call ``fn`` (returns items processed) ``warmup`` + ``repeats`` times; median items/s and CPU s/item."""
    for _ in range(warmup):
        fn()
    rates, cpu = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        n = fn()
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        rates.append(n / dt)
        cpu.append(dc / max(n, 1))
    rates.sort()
    cpu.sort()
    return {"items_per_s": rates[len(rates) // 2], "min": rates[0], "max": rates[-1],
            "cpu_s_per_item": cpu[len(cpu) // 2], "repeats": repeats}


def peak_rss_mib() -> float:
    """Peak resident memory of this process (and its reaped children) in MiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024.0


def write_result(path: str, payload: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"machine": machine_info(), **payload}, f, indent=1)
    print(f"wrote {path}")


def idle_and_busy_rate(fn: Callable[[], int], busy: int, repeats: int = 5, warmup: int = 1) -> dict:
    """``median_rate`` on its own and "with ``busy`` busy workers" (``busy_workers.py``), the two
    timed alternately (so drift in the machine's load hits both alike). Adds ``busy`` (its own
    rate dict), ``busy_vs_idle`` and the load average at the end of each."""
    from streamaug.benchmarks.busy_workers import busy_workers, load_average

    for _ in range(warmup):
        fn()
    idle, loaded = [], []
    for _ in range(repeats):
        idle.append(median_rate(fn, repeats=1, warmup=0))
        if busy:
            with busy_workers(busy):
                loaded.append(median_rate(fn, repeats=1, warmup=0))
    out = _median_of(idle, repeats)
    out["loadavg"] = load_average()
    if busy:
        out["busy"] = {"workers": busy, **_median_of(loaded, repeats), "loadavg": load_average()}
        out["busy_vs_idle"] = out["busy"]["items_per_s"] / out["items_per_s"]
    return out


def _median_of(runs: list[dict], repeats: int) -> dict:
    rates = sorted(r["items_per_s"] for r in runs)
    cpu = sorted(r["cpu_s_per_item"] for r in runs)
    return {"items_per_s": rates[len(rates) // 2], "min": rates[0], "max": rates[-1],
            "cpu_s_per_item": cpu[len(cpu) // 2], "repeats": repeats}
