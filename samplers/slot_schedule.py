"""Where synthetic samples go in the stream: an evenly interleaved class sequence.

The global budget ``{class: n_new}`` becomes one sequence in which each class's
slots sit at evenly spaced fractional positions ``(i + 0.5) / n_new``, so any
stretch of the stream carries close to the target class mix. Each class's slots
are split over the ``W`` ranks (``n // W`` each, the remainders dealt in turn,
class after class), and each rank interleaves its own share: per-class totals
over ranks are exact, rank totals differ by at most one, and every rank carries
every class in proportion. (Rank ``r`` used to take every ``W``-th slot of the
global sequence; where that sequence repeats with period ``W`` (two minority
classes with equal targets and two ranks) each rank got one class's slots only.)
"""
from __future__ import annotations

import math

import numpy as np


def interleaved_slots(targets: dict[int, int]) -> np.ndarray:
    """Class ids of all synthetic slots, evenly interleaved (deterministic)."""
    if not targets:
        return np.zeros(0, dtype=np.int64)
    classes = np.concatenate([np.full(n, c, dtype=np.int64) for c, n in sorted(targets.items())])
    position = np.concatenate([(np.arange(n) + 0.5) / n for _, n in sorted(targets.items())])
    return classes[np.lexsort((classes, position))]


def rank_targets(targets: dict[int, int], world_size: int, rank: int) -> dict[int, int]:
    """This rank's share ``{class: n}`` of the global budget ``targets``."""
    share, dealt = {}, 0
    for c, n in sorted(targets.items()):
        whole, rest = divmod(n, world_size)
        share[c] = whole + int((rank - dealt) % world_size < rest)   # rest slots go to ranks dealt, dealt+1, ...
        dealt += rest
    return share


def rank_slots(targets: dict[int, int], world_size: int, rank: int) -> np.ndarray:
    """Class ids of this rank's synthetic slots, evenly interleaved."""
    return interleaved_slots(rank_targets(targets, world_size, rank))


def max_rank_slots(total: int, world_size: int) -> int:
    return math.ceil(total / world_size)


def take_available(slots: np.ndarray, start: int, count: int, available) -> tuple[list[tuple[int, int]], list[int]]:
    """Make slots ``[start, start+count)`` usable: a slot whose class has no samples
    yet swaps with the nearest later slot whose class has some. Returns the swaps
    made (to replay on resume) and positions that no swap could fill."""
    swaps, unfilled = [], []
    for p in range(start, start + count):
        if available(int(slots[p])):
            continue
        later = next((q for q in range(start + count, len(slots)) if available(int(slots[q]))), None)
        if later is None:
            unfilled.append(p)
            continue
        slots[p], slots[later] = slots[later], slots[p]
        swaps.append((p, later))
    return swaps, unfilled


def stratified_choice(final_counts, budget: np.ndarray, planned: np.ndarray, available: np.ndarray,
                      real_labels: np.ndarray, count: int) -> list[int]:
    """Give ``count`` slots, one at a time, to the class furthest below its target share
    of the batch (real rows counted), among classes with budget left and samples in the
    reservoir; of classes equally far below, to the one with the largest share of its
    epoch's budget (``planned``) left, so equal classes spend theirs at one pace. (Ties went
    to the lowest class id, whose budget ran out first: the epoch's last batches lacked it,
    e.g. [4, 1, 0, 11] rows for a target of 4 each.) ``budget`` is decremented in place."""
    final = np.asarray(final_counts, dtype=np.float64)
    want = final / final.sum() * (len(real_labels) + count)
    have = np.bincount(real_labels, minlength=len(final)).astype(np.float64)
    planned = np.maximum(np.asarray(planned, dtype=np.float64), 1.0)
    chosen = []
    for _ in range(count):
        ok = (budget > 0) & (available > 0)
        if not ok.any():
            ok = budget > 0                       # nothing usable: the caller's shortfall path fills it
        below = np.where(ok, want - have, -np.inf)
        tied = below >= below.max() - 1e-9
        c = int(np.argmax(np.where(tied, budget / planned, -np.inf)))
        chosen.append(c)
        have[c] += 1
        budget[c] -= 1
    return chosen
