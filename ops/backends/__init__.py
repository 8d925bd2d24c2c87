"""The backends ``Compose`` runs on: Kornia, DALI and OpenCV (each imported when first used)."""
from __future__ import annotations

import functools
import importlib


@functools.cache
def opencv_installed() -> bool:
    """Whether OpenCV imports here: ``Compose(backend="auto")`` runs CPU batches on it then."""
    try:
        importlib.import_module("cv2")
    except ImportError:
        return False
    return True
