"""augment= and mixup= in the reading workers (CPU device): the same batches as in the
main process, resumable, and only where nothing needs the stream first."""
from __future__ import annotations

import pytest
import torch

from streamaug.loader import StreamLoader
from test_loader_plugins import collect
from streamaug.ops import Compose, CutMix, Flip, GaussianNoise, MixUp, Rotate, Shear
from streamaug.samplers import ClassBalancer


def make(index, backend="kornia", workers=2, where=None, mixup=True, use_index=True, **kw):
    aug = Compose([Flip(p=0.5), Rotate(20), Shear(x=10), GaussianNoise(0.03)], backend=backend)
    return StreamLoader(index.urls, batch_size=9, seed=3, num_workers=workers, device="cpu",
                        index=index if use_index else False, num_classes=index.num_classes,
                        augment=aug, mixup=MixUp(0.4, p=0.5) if mixup else None,
                        augment_in_workers=where, **kw)


def same(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) and torch.equal(s, t) and k == m
                                    for (x, s, k), (y, t, m) in zip(a, b))


@pytest.mark.parametrize("backend", ["kornia", "opencv"])
@pytest.mark.parametrize("use_index", [True, False])
def test_worker_side_batches_equal_main_side(npy_shards, backend, use_index):
    index, _, _ = npy_shards
    workers = make(index, backend, use_index=use_index)
    main = make(index, backend, where=False, use_index=use_index)
    assert workers.augment_in_workers and not main.augment_in_workers
    for epoch in range(2):
        a, b = collect(workers), collect(main)
        assert same(a, b), f"epoch {epoch}: worker-side and main-side batches differ"
        assert sum(len(k) for _, _, k in a) == 100
    assert workers.augment.last_params is None, "the main process's stages were not called"
    assert main.augment.last_params is not None
    plain = StreamLoader(index.urls, batch_size=9, seed=3, num_workers=2, device="cpu",
                         index=index if use_index else False, num_classes=index.num_classes)
    assert not torch.equal(a[0][0], next(iter(plain))[0]), "the stages changed the images"


@pytest.mark.parametrize("workers", [1, 3])
def test_worker_side_equals_main_side_for_any_worker_count(npy_shards, workers):
    index, _, _ = npy_shards
    assert same(collect(make(index, workers=workers)), collect(make(index, workers=workers, where=False)))


def test_cutmix_and_augment_only_run_in_workers_too(npy_shards):
    index, _, _ = npy_shards
    for mixup in (CutMix(1.0), None):
        a = StreamLoader(index.urls, batch_size=9, seed=1, num_workers=2, device="cpu", index=index,
                         augment=Compose([Rotate(30)]), mixup=mixup)
        b = StreamLoader(index.urls, batch_size=9, seed=1, num_workers=2, device="cpu", index=index,
                         augment=Compose([Rotate(30)]), mixup=mixup, augment_in_workers=False)
        assert a.augment_in_workers and same(collect(a), collect(b)), mixup


@pytest.mark.parametrize("cut", [0, 5, 11])
def test_worker_side_resume_is_bit_identical(npy_shards, cut):
    """Start, middle and end of the epoch (12 batches of 9 over 100 samples)."""
    index, _, _ = npy_shards
    reference = collect(make(index))
    first = make(index)
    it = iter(first)
    assert first.augment_in_workers and len([b for _, b in zip(range(cut), it)]) == cut
    state = first.state_dict()
    resumed = make(index)
    resumed.load_state_dict(state)
    assert same(collect(resumed), reference[cut:])


def test_where_the_stages_run(npy_shards):
    index, _, _ = npy_shards
    assert not make(index, workers=0).augment_in_workers
    balanced = make(index, balance=ClassBalancer("auto"))
    assert not balanced.augment_in_workers
    assert not make(index, backend="dali").augment_in_workers
    with pytest.raises(ValueError, match="augment_in_workers=True, but balance= must see the real rows"):
        make(index, where=True, balance=ClassBalancer("auto"))
    with pytest.raises(ValueError, match="augment_in_workers=True, but num_workers=0"):
        make(index, where=True, workers=0)
    with pytest.raises(ValueError, match="augment_in_workers must be None, True or False, got 'yes'"):
        make(index, where="yes")
    assert make(index, where=True).augment_in_workers
