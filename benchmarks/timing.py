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


def write_result(path: str, payload: dict, quiet: bool = False) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"machine": machine_info(), **payload}, f, indent=1)
    if not quiet:
        print(f"wrote {path}")


def idle_and_busy_rate(fn: Callable[[], int], busy: int, repeats: int = 5, warmup: int = 1) -> dict:
    """``median_rate`` on its own and "with ``busy`` busy workers" (``busy_workers.py``), the two
    timed alternately (so drift in the machine's load hits both alike): :func:`paired_rates`
    of the one way. Adds ``busy`` (its own rate dict), ``busy_vs_idle`` and the load average
    at the end of each."""
    return paired_rates({"fn": fn}, busy, repeats, warmup)["fn"]


def _median_of(runs: list[dict], repeats: int) -> dict:
    rates = sorted(r["items_per_s"] for r in runs)
    cpu = sorted(r["cpu_s_per_item"] for r in runs)
    return {"items_per_s": rates[len(rates) // 2], "min": rates[0], "max": rates[-1],
            "cpu_s_per_item": cpu[len(cpu) // 2], "repeats": repeats}


def paired_rates(fns: dict[str, Callable[[], int]], busy: int, repeats: int = 9, warmup: int = 1) -> dict:
    """Each of ``fns`` (name → callable returning items processed) timed once per repeat, all
    of them back to back, the order reversed every other repeat, idle and then "with ``busy``
    busy workers": side by side, so the machine's drift hits them alike. Per name, the
    ``median_rate``-style dict of the idle repeats, with ``busy`` and ``busy_vs_idle`` as in
    :func:`idle_and_busy_rate` and the per-repeat rates kept (``per_repeat``), which
    :func:`paired_ratio` divides repeat by repeat."""
    from streamaug.benchmarks.busy_workers import busy_workers, load_average

    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    idle: dict[str, list] = {n: [] for n in names}
    loaded: dict[str, list] = {n: [] for n in names}
    for r in range(repeats):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            idle[name].append(median_rate(fns[name], repeats=1, warmup=0))
        if busy:
            with busy_workers(busy):
                for name in order:
                    loaded[name].append(median_rate(fns[name], repeats=1, warmup=0))
    out = {}
    for name in names:
        out[name] = {**_median_of(idle[name], repeats), "per_repeat": [x["items_per_s"] for x in idle[name]],
                     "loadavg": load_average()}
        if busy:
            out[name]["busy"] = {"workers": busy, **_median_of(loaded[name], repeats),
                                 "per_repeat": [x["items_per_s"] for x in loaded[name]], "loadavg": load_average()}
            out[name]["busy_vs_idle"] = out[name]["busy"]["items_per_s"] / out[name]["items_per_s"]
    return out


def paired_ratio(results: dict, a: str, b: str, busy: bool = False) -> float:
    """The median over repeats of ``a``'s rate / ``b``'s, each repeat's pair timed side by side."""
    pa = (results[a]["busy"] if busy else results[a])["per_repeat"]
    pb = (results[b]["busy"] if busy else results[b])["per_repeat"]
    ratios = sorted(x / y for x, y in zip(pa, pb))
    return ratios[len(ratios) // 2]
