"""A loader's state after some batches of a pass: what resume tests start from."""
from __future__ import annotations


def state_after(make, taken: int) -> dict:
    """``state_dict()`` of a fresh loader from ``make()`` after ``taken`` batches of its first pass."""
    with make() as loader:
        it = iter(loader)
        for _ in range(taken):
            next(it)
        return loader.state_dict()
