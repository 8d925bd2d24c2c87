"""A worker's final batch is allocated in shared memory, so its result queue sends it
without a copy; every other batch stays private (core/batch_memory.py)."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from streamaug.core.batch_memory import empty_batch, shared_outputs
from streamaug.core.flight import BatchInFlight
from streamaug.loader.worker_stages import WorkerStages
from streamaug.ops import Compose, Flip, GaussianNoise, MixUp, Rotate


def test_empty_batch_is_shared_only_inside_the_scope_of_its_thread():
    assert not empty_batch((2, 3), torch.uint8).is_shared()
    seen = {}
    with shared_outputs():
        t = empty_batch(torch.Size((4, 3, 5, 6)), torch.float32)
        with shared_outputs():
            pass                                            # nesting restores the outer scope
        nested = empty_batch((1,), torch.uint8)
        assert empty_batch((0, 3, 8, 8), torch.uint8).shape == (0, 3, 8, 8), "an empty batch too"
        other = threading.Thread(target=lambda: seen.update(shared=empty_batch((2,), torch.uint8).is_shared()))
        other.start()
        other.join()
    assert t.is_shared() and nested.is_shared() and seen == {"shared": False}
    assert t.shape == (4, 3, 5, 6) and t.dtype == torch.float32 and t.is_contiguous()
    t.fill_(2.5)
    assert float(t.sum()) == 2.5 * t.numel()
    assert not empty_batch((2, 3), torch.uint8).is_shared(), "the scope ended"


def test_scope_ends_when_the_stage_raises():
    with pytest.raises(RuntimeError):
        with shared_outputs():
            raise RuntimeError("a stage failed")
    assert not empty_batch((2,), torch.uint8).is_shared()


def test_uint8_kernels_allocate_through_empty_batch():
    from streamaug.core.row_blend import blend_rows
    from streamaug.ops.backends.opencv_backend import warp_rows
    from streamaug.ops.backends.opencv_uint8 import add_noise_uint8

    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    m = torch.eye(3, dtype=torch.float64).repeat(4, 1, 1)
    m[:, 0, 2] = 1.5                                      # a translation: every row is warped
    sigma = torch.full((4,), 0.1)
    make = (lambda: blend_rows(x.view(4, -1), [0, 1], [2, 3], [0.3, 0.7]),
            lambda: warp_rows(x, m), lambda: add_noise_uint8(x, sigma, 0))
    for kernel in make:
        private = kernel()
        with shared_outputs():
            shared = kernel()
        assert shared.is_shared() and not private.is_shared() and torch.equal(shared, private)


def batch(n=6, size=16):
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(n))
    return BatchInFlight(images=images, labels=torch.arange(n) % 3, keys=[str(i) for i in range(n)],
                         urls=["s.tar"] * n, is_padding=torch.zeros(n, dtype=torch.bool), batch_id=0, stats={})


@pytest.mark.parametrize("mixup", [True, False])
def test_the_stage_that_makes_a_workers_batch_allocates_it_shared(mixup):
    """Mixup makes the final batch when there is one, else augment; the result is the same
    numbers as a main-process run of the same stages."""
    stages = lambda: WorkerStages(balance=None, augment=Compose([Flip(p=0.5), Rotate(20), GaussianNoise(0.05)],  # noqa: E731
                                                              backend="opencv"),
                                  mixup=MixUp(0.4) if mixup else None, seeds={"augment": 1, "mixup": 2},
                                  rank=0, num_classes=3)
    out = stages().apply(batch(), epoch=0, plan=None, offsets=None)
    assert out.images.is_shared() and out.stages_done
    main = stages()
    main.outputs = lambda final: __import__("contextlib").nullcontext()    # the main process: no shared scope
    ref = main.apply(batch(), epoch=0, plan=None, offsets=None)
    assert not ref.images.is_shared() and torch.equal(out.images, ref.images)
    assert not np.array_equal(out.images.numpy(), batch().images.numpy()), "the stages ran"


@pytest.mark.parametrize("last", ["noise", "brightness"])
def test_only_the_batch_a_compose_returns_is_shared(monkeypatch, last):
    """A warp whose output is only an intermediate stays private; the returned batch is shared,
    whether the last op runs in uint8 (noise, in place into the warp's output) or in float."""
    import streamaug.ops.backends.opencv_backend as ocv
    from streamaug.ops import BrightnessContrast

    warped, original = [], ocv.warp_rows

    def recording(*args):
        out = original(*args)
        warped.append(out.is_shared())
        return out
    monkeypatch.setattr(ocv, "warp_rows", recording)
    tail = GaussianNoise(0.05) if last == "noise" else BrightnessContrast(0.2, 0.2)
    aug = Compose([Rotate(20), tail], backend="opencv", seed=0)
    with shared_outputs():
        out = aug(batch().images)
    assert out.is_shared() and out.dtype == torch.uint8
    assert warped == [last == "noise"], "the warp's output is shared only when it is the batch returned"


def test_empty_batches_pass_through_the_uint8_kernels():
    from streamaug.core.row_blend import blend_rows
    from streamaug.ops.backends.opencv_uint8 import add_noise_uint8

    empty = torch.empty((0, 3, 8, 8), dtype=torch.uint8)
    assert blend_rows(empty, [], [], []).shape == (0, 3, 8, 8)
    assert add_noise_uint8(empty, torch.empty(0), 0).shape == (0, 3, 8, 8)
    assert blend_rows(torch.zeros((2, 3, 8, 8), dtype=torch.uint8), [], [], []).shape == (0, 3, 8, 8)
    mixed, _ = MixUp(0.4, seed=0)(empty, torch.empty(0, dtype=torch.int64), num_classes=3)
    assert mixed.shape == (0, 3, 8, 8)


def test_blend_rows_refuses_what_it_cannot_take_naming_it():
    from streamaug.core.row_blend import blend_rows

    with pytest.raises(ValueError, match="contiguous uint8 CPU rows, got torch.float32 on cpu"):
        blend_rows(torch.rand(2, 3, 4, 4), [0], [1], [0.5])


def test_small_tensors_of_a_batch_travel_inside_the_pickle_and_images_in_shared_memory():
    """What a worker's result queue does to a batch (ForkingPickler with torch's reductions):
    the images go to shared memory, the labels, masks and soft targets by value, so the main
    process receives no descriptor for them; every field comes back equal and writable."""
    import pickle
    from multiprocessing.reduction import ForkingPickler

    import torch.multiprocessing  # noqa: F401  (registers torch's reductions, as DataLoader does)

    n = 256
    b = BatchInFlight(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8), torch.arange(n) % 10,
                      [str(i) for i in range(n)], ["u"] * n, torch.arange(n) % 7 == 0, 5)
    b.targets = torch.rand(n, 10)
    b.is_synthetic = torch.arange(n) % 5 == 0
    back = pickle.loads(bytes(ForkingPickler.dumps(b)))
    assert b.images.is_shared()
    assert not any(getattr(b, f).is_shared() for f in ("labels", "is_padding", "is_synthetic", "targets"))
    for f in ("images", "labels", "is_padding", "is_synthetic", "targets"):
        sent, got = getattr(b, f), getattr(back, f)
        assert got.dtype == sent.dtype and torch.equal(got, sent), f
    back.labels[0] = 99                                   # writable, and not the sender's memory
    assert int(b.labels[0]) == 0 and back.keys == b.keys and back.batch_id == 5
    empty = pickle.loads(pickle.dumps(BatchInFlight(torch.zeros(0, 3, 4, 4, dtype=torch.uint8),
                                                    torch.zeros(0, dtype=torch.int64), [], [],
                                                    torch.zeros(0, dtype=torch.bool), 0)))
    assert empty.labels.shape == (0,) and empty.is_synthetic.dtype == torch.bool


def test_a_strided_small_tensor_keeps_its_layout_through_the_pickle():
    import pickle

    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    b = BatchInFlight(images, torch.arange(4), list("abcd"), ["u"] * 4, torch.zeros(4, dtype=torch.bool), 0)
    back = pickle.loads(pickle.dumps(b))
    assert back.images.stride() == images.stride() and torch.equal(back.images, images)
