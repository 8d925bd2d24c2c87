"""Contracts of the device path: what ``streamaug bench --gpu-check`` runs on a GPU.

Each test runs on every device present (CPU here, CUDA where there is one):

* every op × backend on the device equals its CPU result for the same params;
* ``StreamLoader(device=...)`` yields tensors on the device, and its plug-in path
  (balance, augment, mixup) never waits for the device: timed on the host while a
  long GPU kernel is queued (CUDA only; on the CPU there is nothing to wait for);
* balance + SMOTE on the device meets imbalanced-learn's counts;
* resume with ``backend="dali"`` is bit-identical.
"""
from __future__ import annotations

import time
import warnings
from collections import Counter

import numpy as np
import pytest
import torch
from imblearn.over_sampling import SMOTE as ImbSMOTE

from op_cases import OPS, images
from shard_factory import make_shards
from streamaug.loader import StreamLoader, loader_pass
from streamaug.ops import Compose, Flip, GaussianNoise, MixUp, Rotate, Shear
from streamaug.samplers import SMOTE, ClassBalancer

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
needs_cuda = pytest.mark.cuda          # selected by the GPU check, skipped without a GPU (conftest)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(str(tmp_path_factory.mktemp("dev")), n=120, maxcount=25, fmt="npy", size=16)


def augment(backend: str) -> Compose:
    return Compose([Flip(p=0.5), Rotate(20), Shear(x=10), GaussianNoise(0.03)], backend=backend)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", ["kornia", "dali"])
@pytest.mark.parametrize("name", sorted(OPS))
def test_op_on_device_equals_cpu(name, backend, device):
    """The CPU case replays the CPU call (so this test's own code runs without a GPU too)."""
    x = images(n=16, h=32, w=32) // 2 + 64          # mid-range: noise is not clipped
    aug = Compose([OPS[name]()], backend=backend, seed=3)
    cpu_out = aug(x)
    params = aug.last_params
    gpu_out = aug(x.to(device), params=params).cpu()
    if name == "noise":     # the field is drawn on each device (different generators): compare σ per row
        sigma = params[0]["std"] * params[0]["apply"]
        for out in (cpu_out, gpu_out):
            measured = (out.float() - x.float()).flatten(1).std(1) / 255
            assert torch.allclose(measured, sigma.float(), atol=0.01)
        return
    diff = (cpu_out.int() - gpu_out.int()).abs()
    # bilinear weights round differently on each device: a level here and there
    assert diff.float().mean() < 0.05 and int(diff.max()) <= 2, f"max {int(diff.max())}, mean {diff.float().mean():.4f}"


def watch_plugin_stage(monkeypatch, around) -> None:
    """Route every batch's plug-in stages (``plugin_stage.apply_plugins``, as the loader
    calls it) through ``around(run)``, where ``run()`` runs them and returns the batch."""
    original = loader_pass.apply_plugins

    def watched(loader, batch, plan, epoch):
        return around(lambda: original(loader, batch, plan, epoch))
    monkeypatch.setattr(loader_pass, "apply_plugins", watched)


def _host_waits_in_plugins(loader: StreamLoader, monkeypatch, skip: int = 2) -> tuple[list[float], float, list[str]]:
    """Run one pass. Before each batch's plug-in stages, queue ``GPU_BUSY_S`` of GPU work
    (``torch.cuda._sleep``) and time the stages on the host: a stage that waits for the
    device (``.item()``, a blocking copy, a device read-back) waits for that queue too.
    Returns the host times after ``skip`` warm-up batches, the queue's measured length,
    and the synchronizing calls torch's sync debug mode reported."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(GPU_BUSY_CYCLES)
    end.record()
    end.synchronize()
    busy = start.elapsed_time(end) / 1000
    times, messages = [], []

    def timed(run):
        torch.cuda.synchronize()
        torch.cuda._sleep(GPU_BUSY_CYCLES)
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                t0 = time.perf_counter()
                out = run()
                times.append(time.perf_counter() - t0)
        finally:
            torch.cuda.set_sync_debug_mode(0)
        messages.extend(str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message))
        torch.cuda.synchronize()
        return out

    watch_plugin_stage(monkeypatch, timed)
    for _ in loader:
        pass
    return times[skip:], busy, messages


GPU_BUSY_CYCLES = 400_000_000          # about 0.2-0.3 s of one spinning kernel


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", ["kornia", "dali"])
def test_loader_yields_on_device(shards, device, backend):
    index, _, _ = shards
    loader = StreamLoader(index.urls, batch_size=16, device=device, augment=augment(backend), mixup=MixUp(0.2))
    for images_, targets in loader:
        assert images_.device.type == device and targets.device.type == device
        assert images_.dtype == torch.uint8 and targets.shape == (len(images_), index.num_classes)


@needs_cuda
@pytest.mark.parametrize("backend", ["kornia", "dali"])
@pytest.mark.parametrize("balance", [False, True], ids=["plain", "balance"])
def test_plugin_path_never_waits_for_the_device(shards, backend, balance, monkeypatch):
    index, _, _ = shards
    loader = StreamLoader(index.urls, batch_size=16, device="cuda", augment=augment(backend), mixup=MixUp(0.2),
                          balance=ClassBalancer("auto") if balance else None)
    times, busy, syncs = _host_waits_in_plugins(loader, monkeypatch)
    assert len(times) >= 4
    waited = sorted(times)[len(times) // 2]
    assert waited < 0.25 * busy, (f"plug-in stages took {waited * 1e3:.0f} ms on the host (median) while "
                                  f"{busy * 1e3:.0f} ms of GPU work was queued: they wait for the device; "
                                  f"torch reported {Counter(syncs).most_common(3)}")


def test_gpu_check_selects_every_gpu_only_test():
    """``pytest -m cuda`` (the GPU check's selection) holds the CUDA-only tests. The no-wait
    test above was once skipped by its own ``skipif`` but not marked, so no GPU run selected it."""
    import subprocess
    import sys

    here = __file__
    listed = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "cuda", "-p",
                             "no:cacheprovider", here], capture_output=True, text=True, timeout=300)
    ids = [line.split("::", 1)[1] for line in listed.stdout.splitlines() if "::" in line]
    assert sum(i.startswith("test_plugin_path_never_waits_for_the_device[") for i in ids) == 4, listed.stdout
    assert not [i for i in ids if "[" in i and "cpu" in i.split("[", 1)[1].split("-")], ids


@pytest.mark.parametrize("workers", [0, 2])
def test_plugin_stage_watch_sees_every_batch(shards, monkeypatch, workers):
    """The seam the CUDA test above times is the one the loader calls, once per batch
    (it named a method the loader no longer had, and only a GPU would have run it)."""
    index, _, _ = shards
    loader = StreamLoader(index.urls, batch_size=16, device="cpu", num_workers=workers, stages_in_workers=False,
                          augment=augment("kornia"), mixup=MixUp(0.2), balance=ClassBalancer("auto"))
    seen = []
    watch_plugin_stage(monkeypatch, lambda run: seen.append(run()) or seen[-1])
    batches = list(loader)
    assert len(batches) == len(loader) and [b.keys for b in seen] == [b.keys for b in batches]


@pytest.mark.parametrize("device", DEVICES)
def test_balance_counts_on_device_equal_imblearn(shards, device):
    index, _, labels = shards
    loader = StreamLoader(index.urls, batch_size=16, device=device, balance=ClassBalancer("auto", SMOTE()))
    counts = Counter()
    for batch in loader:
        assert batch[0].device.type == device
        keep = ~batch.is_padding
        counts.update(batch[1][keep].cpu().tolist())
    features = np.random.default_rng(0).random((len(labels), 4))
    _, y = ImbSMOTE(k_neighbors=3, random_state=0).fit_resample(features, labels)
    assert dict(counts) == dict(Counter(y.tolist()))


def _flat(batches):
    return [(tuple(b.keys), b[0].cpu().clone(), b[1].cpu().clone()) for b in batches]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("workers", [0, 2])
def test_resume_on_dali_backend_is_bit_identical(shards, device, workers):
    index, _, _ = shards

    def make():
        return StreamLoader(index.urls, batch_size=12, device=device, num_workers=workers, seed=4,
                            augment=augment("dali"), mixup=MixUp(0.2, p=0.5))

    full = _flat(make())
    first = make()
    it = iter(first)
    head = _flat(next(it) for _ in range(4))
    state = first.state_dict()
    del it
    first.close()
    resumed = make()
    resumed.load_state_dict(state)
    tail = _flat(resumed)
    assert len(head) + len(tail) == len(full)
    for (k, x, t), (j, y, s) in zip(head + tail, full):
        assert k == j and torch.equal(x, y) and torch.equal(t, s)
