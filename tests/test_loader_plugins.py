"""augment= and mixup= in the loader: seeded from the loader, resumable, soft targets out."""
from __future__ import annotations

import pytest
import torch

from streamaug.loader import StreamLoader
from streamaug.ops import Compose, Flip, GaussianNoise, MixUp, Rotate, Shear


def make(index, backend="kornia", seed=0, workers=0):
    aug = Compose([Flip(p=0.5), Rotate(20), Shear(x=10), GaussianNoise(0.03)], backend=backend)
    return StreamLoader(index.urls, batch_size=9, seed=seed, num_workers=workers,
                        augment=aug, mixup=MixUp(0.4, p=0.5))


def collect(loader, limit=None):
    out = []
    for i, b in enumerate(loader):
        if limit is not None and i == limit:
            break
        out.append((b[0].clone(), b[1].clone(), tuple(b.keys)))
    return out


@pytest.mark.parametrize("backend", ["kornia", "dali"])
def test_augmented_soft_target_batches(npy_shards, backend):
    index, _, _ = npy_shards
    batches = collect(make(index, backend))
    x, t, _ = batches[0]
    assert x.dtype == torch.uint8 and x.shape == (9, 3, 8, 8)
    assert t.shape == (9, 4) and torch.allclose(t.sum(1), torch.ones(9)) and (t >= 0).all()
    assert sum(len(k) for _, _, k in batches) == 100


def test_plugins_are_seeded_from_the_loader(npy_shards):
    index, _, _ = npy_shards
    a, b, c = collect(make(index, seed=1)), collect(make(index, seed=1)), collect(make(index, seed=2))
    assert all(torch.equal(x, y) and torch.equal(s, t) for (x, s, _), (y, t, _) in zip(a, b))
    assert not torch.equal(a[0][0], c[0][0])


@pytest.mark.parametrize("workers", [0, 2, 3])
@pytest.mark.parametrize("cut", [0, 5, 7, 12])
def test_resume_with_augmentation_is_bit_identical(npy_shards, workers, cut):
    index, _, _ = npy_shards
    reference = make(index, workers=workers)
    full = collect(reference)
    next_epoch = collect(reference)
    first = make(index, workers=workers)
    it = iter(first)
    head = [(b[0].clone(), b[1].clone(), tuple(b.keys)) for _, b in zip(range(cut), it)]
    state = first.state_dict()
    resumed = make(index, workers=workers)
    resumed.load_state_dict(state)
    tail = collect(resumed)
    expected = full + next_epoch if cut == len(full) else full   # the end resumes into the next epoch
    assert len(head) + len(tail) == len(expected)
    for (x, t, k), (y, s, j) in zip(head + tail, expected):
        assert k == j and torch.equal(x, y) and torch.equal(t, s)
