"""A loader's state after some batches of a pass: what resume tests start from."""
from __future__ import annotations

import copy


def state_after(make, taken: int) -> dict:
    """``state_dict()`` of a fresh loader from ``make()`` after ``taken`` batches of its first pass."""
    with make() as loader:
        it = iter(loader)
        for _ in range(taken):
            next(it)
        return loader.state_dict()


def states_after_each(make, last: int) -> list[dict]:
    """``[state_after(make, k) for k in range(last + 1)]`` from one pass of one loader: the state is
    taken at the same points (after ``iter()`` and after each ``next()``), each a deep copy, so a
    later batch cannot change an earlier state. One loader instead of ``last + 1`` (each starting
    its workers)."""
    with make() as loader:
        it = iter(loader)
        states = [copy.deepcopy(loader.state_dict())]
        for _ in range(last):
            next(it)
            states.append(copy.deepcopy(loader.state_dict()))
        return states
