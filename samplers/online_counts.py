"""Class balancing without an index: targets estimated from the counts seen so far.

Mid-epoch only ratio strategies (strings, floats) act, once ``ONLINE_MIN_SEEN`` real
samples are in, and only up to ``ONLINE_FRACTION`` of the estimate (targets keep growing as
counts do), less ``ONLINE_NOISE_SIGMAS`` times the counts' sampling noise, so a class that
only looks short part-way (nearly as large as the majority) is not given rows the epoch's end
would not; ``"minority"`` acts once its class is settled beyond that noise
(:func:`clear_minority`). Dict and callable strategies are absolute, so they wait for the
epoch's last batch, which takes whatever is still due (a dict asking for fewer samples of a
class than the stream has already held raises at once: :func:`check_dict_targets`). The epoch's totals then
equal imbalanced-learn's ``fit_resample`` on the epoch's labels, unless a mid-epoch
estimate overshot: that excess cannot be taken back and is reported.
"""
from __future__ import annotations

import numbers

import numpy as np

from .sampling_strategy import synthetic_targets

ONLINE_MIN_SEEN = 256
ONLINE_FRACTION = 0.8
ONLINE_NOISE_SIGMAS = 3.0


def _targets(strategy, seen: np.ndarray) -> dict[int, int]:
    """imbalanced-learn's targets for the counts seen. A float ratio the counts already meet
    is nothing due, not imbalanced-learn's error (it would remove samples): part-way the
    counts are estimates, and at the epoch's end the epoch has been streamed."""
    if isinstance(strategy, numbers.Real) and not isinstance(strategy, bool) and np.count_nonzero(seen) == 2:
        present = np.sort(seen[seen > 0])
        if present[0] >= strategy * present[1]:
            return {}
    return synthetic_targets(strategy, seen.tolist())


def clear_minority(seen: np.ndarray) -> bool:
    """Whether the smallest class seen is the smallest beyond the counts' sampling noise
    (``ONLINE_NOISE_SIGMAS`` standard deviations of the gap to the next smallest). Until then
    ``"minority"`` waits: part-way, a class that only looked smallest got its rows (112 against
    a target of 12), and waiting for the end put every row in the last batch."""
    present = np.sort(seen[seen > 0])
    a, b = int(present[0]), int(present[1])
    return b - a > ONLINE_NOISE_SIGMAS * np.sqrt(a + b)


def check_dict_targets(strategy, seen: np.ndarray, name=lambda c: f"class {c}") -> None:
    """A dict strategy asks for final counts; a class the stream already holds more of this
    epoch cannot meet its count (over-sampling adds, never removes). Raise at once, naming it,
    rather than at the epoch's end, as imbalanced-learn's check on the epoch's counts did."""
    if not isinstance(strategy, dict):
        return
    for c, n in strategy.items():
        if isinstance(c, numbers.Integral) and 0 <= c < len(seen) and seen[c] > n:
            raise ValueError(f"sampling_strategy asks for {n} samples of {name(int(c))} in all, but this epoch's "
                             f"stream has already held {int(seen[c])}; over-sampling adds samples and cannot remove "
                             "them, so ask for at least the class's count (an index, streamaug index, checks this "
                             "when the loader is built)")


def online_due(strategy, seen: np.ndarray, made: np.ndarray, last: bool) -> tuple[list[int], dict[int, int]]:
    """Classes of the synthetic rows due now (``made`` is updated in place) and, at the
    epoch's end, any class made beyond its final target ``{class: excess}``."""
    ratio = isinstance(strategy, (str, float))
    if not last and (not ratio or seen.sum() < ONLINE_MIN_SEEN):
        return [], {}
    if np.count_nonzero(seen) < 2:
        return [], {}
    if strategy == "minority" and not last and not clear_minority(seen):
        return [], {}           # which class is the minority is not settled yet (see clear_minority)
    targets = _targets(strategy, seen)
    classes, overshoot = [], {}
    top = int(seen.max())
    for c in range(len(seen)):
        n = targets.get(c, 0)
        # part-way, hold back what the counts' sampling noise could still take away: a target is
        # a difference of counts (e.g. majority − own), each off by about √count from its share
        margin = ONLINE_NOISE_SIGMAS * np.sqrt(top + int(seen[c]))
        due = n if last else int(max(0.0, n - margin) * ONLINE_FRACTION)
        if last and made[c] > n:
            overshoot[c] = int(made[c] - n)
        extra = max(0, due - int(made[c]))
        classes += [c] * extra
        made[c] += extra
    return classes, overshoot
