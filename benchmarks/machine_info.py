"""Machine and library facts stored with every benchmark result."""
from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def source_commit() -> str | None:
    """The streamaug checkout's commit (``+dirty`` with uncommitted changes to tracked files
    outside ``benchmarks/results``),
    or None outside a git checkout: results say which code they measured."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":(top)",
                                ":(top,exclude)benchmarks/results"],      # a run's own output is not the code
                               cwd=here, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty else "")


def machine_info() -> dict:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    try:
        cpu_model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu_model = platform.processor()
    return {"cpu_count": os.cpu_count(), "cpu_affinity": len(os.sched_getaffinity(0)), "cpu_model": cpu_model,
            "gpu": gpu, "commit": source_commit(), "python": platform.python_version(), "platform": platform.platform(),
            "versions": {p: _version(p) for p in ("torch", "numpy", "kornia", "webdataset", "nvidia-dali-cuda120",
                                                  "nvidia-dali-cuda130", "imbalanced-learn", "albumentations",
                                                  "pillow", "streamaug")}}
