"""CPU time and peak memory of this process and its children, live ones included.

``getrusage(RUSAGE_CHILDREN)`` counts only children already reaped. A loader's
persistent DataLoader workers are reaped when the loader closes, so a pass timed
with it alone shows the main process's CPU only (streamaug's workers looked free).
Live children are read from ``/proc``. A child reaped between two readings moves from
the live sum to ``RUSAGE_CHILDREN`` with its whole total, so a difference of two
readings is the CPU the tree spent in between.
"""
from __future__ import annotations

import os
import resource

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()        # fields after the command name, from "state"


def live_descendants(root: int | None = None) -> list[int]:
    """Pids of the live descendants of ``root`` (default: this process), from ``/proc``."""
    root = os.getpid() if root is None else root
    parents: dict[int, list[int]] = {}
    for name in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if name.isdigit():
            fields = _stat(int(name))
            if fields is not None:
                parents.setdefault(int(fields[1]), []).append(int(name))
    out, todo = [], [root]
    while todo:
        kids = parents.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def tree_cpu_seconds() -> float:
    """User + system CPU seconds of this process, its reaped children and its live descendants."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    total = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
    for pid in live_descendants():
        fields = _stat(pid)
        if fields is not None:                        # utime, stime: fields 14 and 15 of stat
            total += (int(fields[11]) + int(fields[12])) / _TICK
    return total


def tree_peak_rss_mib() -> float:
    """The largest peak resident set of this process, a reaped child or a live descendant (MiB):
    a maximum, not a sum (summed, pages shared copy-on-write would count once per process)."""
    peak_kib = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                   resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    for pid in live_descendants():
        try:
            with open(f"/proc/{pid}/status") as f:
                hwm = next((line for line in f if line.startswith("VmHWM:")), None)
        except OSError:
            continue
        if hwm is not None:
            peak_kib = max(peak_kib, int(hwm.split()[1]))
    return peak_kib / 1024
