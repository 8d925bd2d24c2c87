"""Machine and library facts stored with every benchmark result."""
from __future__ import annotations

import os
import platform
from importlib import metadata


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    try:
        cpu_model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu_model = platform.processor()
    return {"cpu_count": os.cpu_count(), "cpu_affinity": len(os.sched_getaffinity(0)), "cpu_model": cpu_model,
            "gpu": gpu, "python": platform.python_version(), "platform": platform.platform(),
            "versions": {p: _version(p) for p in ("torch", "numpy", "kornia", "webdataset", "nvidia-dali-cuda120",
                                                  "nvidia-dali-cuda130", "imbalanced-learn", "albumentations",
                                                  "pillow", "streamaug")}}
