"""``sampling_strategy`` with imbalanced-learn's exact meaning, from class counts.

imbalanced-learn resolves strategies from a label vector; the shard index has
counts, so the vector is rebuilt (``np.repeat``) and handed to imblearn's own
``check_sampling_strategy``. Every form (float, the string presets, a dict of
final counts, a callable) and every error is therefore imbalanced-learn's.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np

PRESETS = ("auto", "minority", "not minority", "not majority", "all")   # imblearn's, for over-sampling


def check_strategy_form(sampling_strategy) -> None:
    """Refuse, before any data is seen, a ``sampling_strategy`` no class counts could make valid,
    naming it: imbalanced-learn's forms for over-sampling are one of ``PRESETS``, a float in
    (0, 1] (two classes), a dict ``{class: final count}`` of ints, or a callable."""
    s = sampling_strategy
    if isinstance(s, str):
        if s not in PRESETS:
            raise ValueError(f"sampling_strategy {s!r} is not one of {PRESETS} (over-sampling)")
    elif isinstance(s, dict):
        for c, n in s.items():
            if not isinstance(c, numbers.Integral) or isinstance(c, bool) or c < 0:
                raise ValueError(f"sampling_strategy keys are class indices (ints >= 0), got {c!r}")
            if not isinstance(n, numbers.Integral) or isinstance(n, bool) or n < 0:
                raise ValueError(f"sampling_strategy[{c!r}] must be a sample count (an int >= 0), got {n!r}")
    elif isinstance(s, numbers.Real) and not isinstance(s, bool):
        if not (math.isfinite(s) and 0 < s <= 1):
            raise ValueError(f"a float sampling_strategy is the minority/majority ratio, in (0, 1], got {s!r}")
    elif isinstance(s, type) or not callable(s):      # (a class is callable: ClassBalancer(SMOTE) failed later)
        named = s if isinstance(s, type) else type(s)
        hint = (f"; {named.__name__} is a synthesizer: ClassBalancer(\"auto\", synthesizer={named.__name__}(...))"
                if hasattr(named, "synthesize") else "")
        raise ValueError(f"sampling_strategy must be one of {PRESETS}, a float in (0, 1], a dict "
                         f"{{class: count}} or a callable, got {s!r}{hint}")


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
