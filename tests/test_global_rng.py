"""Library code never draws from, or reseeds, the global RNGs (``random``, numpy's, torch's):
a user's seeded script gets the same numbers whatever the loader does between its draws."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from streamaug.loader import StreamLoader
from streamaug.ops import Compose, Flip, GaussianNoise, MixUp, Rotate
from streamaug.samplers import SMOTE, ClassBalancer


def snapshot() -> tuple:
    return random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state().clone()


def same(a: tuple, b: tuple) -> bool:
    return a[0] == b[0] and np.array_equal(a[1], b[1]) and torch.equal(a[2], b[2])


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("stages", [False, True], ids=["plain", "balance+augment+mixup"])
def test_building_iterating_and_resuming_leave_the_global_rngs_alone(npy_shards, workers, stages):
    """Red team s33: with reading workers, each start of them drew DataLoader's base seed from
    torch's global RNG, so a user's ``torch.randn`` after an epoch depended on ``num_workers``."""
    index = npy_shards[0]
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    before = snapshot()

    def make():
        kw = dict(balance=ClassBalancer("auto", SMOTE()), augment=Compose([Flip(), Rotate(10), GaussianNoise(0.05)]),
                  mixup=MixUp(alpha=0.4)) if stages else {}
        return StreamLoader(index.urls, batch_size=16, num_workers=workers, seed=3, device="cpu", **kw)

    loader = make()
    for _ in range(2):                                           # two passes: the workers start, persist
        list(loader)
    state = loader.state_dict()
    loader.close()
    resumed = make()
    resumed.load_state_dict(state)
    list(resumed)
    resumed.close()                                              # (and a third start after close)
    list(resumed)
    resumed.close()
    assert same(before, snapshot()), "a global RNG moved"
