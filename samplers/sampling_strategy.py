"""``sampling_strategy`` with imbalanced-learn's exact meaning, from class counts.

imbalanced-learn resolves strategies from a label vector; the shard index has
counts, so the vector is rebuilt (``np.repeat``) and handed to imblearn's own
``check_sampling_strategy``. Every form (float, the string presets, a dict of
final counts, a callable) and every error is therefore imbalanced-learn's.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def synthetic_targets(sampling_strategy, class_counts: Sequence[int]) -> dict[int, int]:
    """How many samples to synthesize per class (``{class: n_new}``, zeros dropped).

    >>> synthetic_targets("auto", [50, 10, 5])
    {1: 40, 2: 45}
    >>> synthetic_targets({1: 20}, [50, 10, 5])
    {1: 10}
    """
    counts = np.asarray(class_counts, dtype=np.int64)
    if counts.ndim != 1 or len(counts) < 1 or (counts < 0).any():
        raise ValueError(f"class_counts must be non-negative ints, got {list(class_counts)!r}")
    present = np.flatnonzero(counts)
    if len(present) < 2:
        raise ValueError(f"balancing needs at least two classes with samples, got class counts {counts.tolist()}")
    from imblearn.utils import check_sampling_strategy     # imported when used: streamaug.samplers needs torch + numpy only

    y = np.repeat(np.arange(len(counts)), counts)
    resolved = check_sampling_strategy(sampling_strategy, y, "over-sampling")
    return {int(c): int(n) for c, n in resolved.items() if n > 0}
