"""Competing CPU load for the benchmarks: ``N`` busy worker processes.

In training, the loader's main-process stages share the cores with DataLoader
workers and the training step, so every benchmark that reports a rate also
reports it "with N busy workers": the same timed section while ``N`` other
processes each spin one core.

>>> from streamaug.benchmarks.busy_workers import busy_workers
>>> with busy_workers(1):            # doctest: +SKIP
...     rate = measure()

Each busy process is a pure-Python loop in a fresh interpreter (no thread pool
of its own), so it competes like one CPU-bound worker or training process. They
are started before the block and killed after it, even when it raises.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator


_SPIN = "x = 0\nwhile True:\n    x = (x * 1103515245 + 12345) & 0x7FFFFFFF\n"


@contextlib.contextmanager
def busy_workers(n: int) -> Iterator[list[int]]:
    """Run the block while ``n`` CPU-bound processes spin; yields their pids."""
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"busy workers must be an int >= 0, got {n!r}")
    # a fresh interpreter per worker: nothing of the caller (its main module, thread pools) is inherited
    procs = [subprocess.Popen([sys.executable, "-S", "-c", _SPIN], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(n)]
    try:
        if procs:
            time.sleep(0.2)               # let them reach the loop
            dead = [p.pid for p in procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"busy workers {dead} exited at start")
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def load_average() -> list[float]:
    """``os.getloadavg()`` as a list (recorded beside every contention figure)."""
    return [round(v, 2) for v in os.getloadavg()]
