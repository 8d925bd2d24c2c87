"""The per-batch balancing path never reads device data back on the host, and sends host
data to the device only through ``core.transfer.to_device`` (pinned, non-blocking).

On a GPU either would make the loader wait for the training step queued before it. The
CUDA test (``test_device_path.test_plugin_path_never_waits_for_the_device``) needs a GPU;
this one runs everywhere: the reservoir is built on the CPU, then its storage is moved to
PyTorch's ``meta`` device, which holds shapes and no data. Any read of device data on the
host (``.cpu()``, ``.item()``, ``.tolist()``, ``bool()``) then raises, and a mode records
every host → device copy that was not made non-blocking.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.neighbors import NearestNeighbors
from torch.overrides import TorchFunctionMode

from streamaug.core.flight import BatchInFlight
from streamaug.samplers import ADASYN, SMOTE, BorderlineSMOTE, ClassBalancer
from streamaug.samplers.neighbour_tables import pool_labels

SYNTHESIZERS = {
    "random": lambda: None,
    "smote": lambda: SMOTE(k_neighbors=3),
    "smote-thumbnail": lambda: SMOTE(k_neighbors=3, neighbour_space="thumbnail"),
    "smote-projection": lambda: SMOTE(k_neighbors=3, neighbour_space="projection"),
    "borderline-1": lambda: BorderlineSMOTE(k_neighbors=3, kind="borderline-1"),
    "borderline-2": lambda: BorderlineSMOTE(k_neighbors=3, kind="borderline-2"),
    "adasyn": lambda: ADASYN(k_neighbors=3),
}
COUNTS = [40, 12, 6]


def fixed_balancer(synthesizer, seed=0) -> ClassBalancer:
    """A balancer whose reservoirs were filled once from an index (as the loader does), prepared."""
    rng = np.random.default_rng(seed)
    bal = ClassBalancer("auto", synthesizer)
    bal.fit(COUNTS)
    for c, n in enumerate(COUNTS):
        images = torch.from_numpy(rng.integers(0, 256, (n, 3, 8, 8), dtype=np.uint8))
        bal.reservoir_.fill(c, images, [("shard", f"{c}_{i}") for i in range(n)])
    bal.reservoir_.fixed = True
    bal._filled, bal._rows = True, object()          # as after the loader's _fill
    bal.synthesizer.prepare(bal.reservoir_, [0, 1, 2])
    return bal


class HostToDeviceCopies(TorchFunctionMode):
    """Records host → device copies made without ``non_blocking=True``."""

    def __init__(self):
        super().__init__()
        self.blocking: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        if name in ("to", "cuda", "copy_") and args and isinstance(args[0], torch.Tensor):
            src = args[0] if name != "copy_" else args[1]
            target = next((a for a in list(args[1:]) + list(kwargs.values())
                           if isinstance(a, (torch.device, str)) and str(a) != "cpu"), None)
            if src.device.type == "cpu" and target is not None and not kwargs.get("non_blocking", False):
                self.blocking.append(f"{name} to {target}")
        if name in ("tensor", "as_tensor") and str(kwargs.get("device", "cpu")) != "cpu":
            self.blocking.append(f"torch.{name}(..., device={kwargs['device']})")
        return func(*args, **kwargs)


def on_meta(bal: ClassBalancer) -> None:
    res = bal.reservoir_
    for c in list(res.storage):
        res.storage[c] = res.storage[c].to("meta")
    res._float.clear()
    for c in list(res._dist):
        res._dist[c] = res._dist[c].to("meta")


@pytest.mark.parametrize("name", list(SYNTHESIZERS))
def test_balancing_a_batch_never_reads_the_device(name):
    bal = fixed_balancer(SYNTHESIZERS[name]())
    on_meta(bal)
    n = 16
    batch = BatchInFlight(images=torch.empty((n, 3, 8, 8), dtype=torch.uint8, device="meta"),
                          labels=torch.zeros(n, dtype=torch.int64), keys=[f"r{i}" for i in range(n)],
                          urls=["shard"] * n, is_padding=torch.zeros(n, dtype=torch.bool), batch_id=0)
    with HostToDeviceCopies() as copies:
        out = bal(batch, 20)                        # a device read would raise here
    assert out.images.device.type == "meta" and len(out) == n + 20
    assert int(out.is_synthetic.sum()) == 20
    assert copies.blocking == []


@pytest.mark.parametrize("name", ["smote", "borderline-1", "borderline-2", "adasyn"])
def test_fixed_reservoir_tables_choose_as_the_streamed_search(name):
    """The host tables of a fixed reservoir give the neighbours the per-batch search of a
    streamed one gives (pixel space: both read one distance matrix), so the same seed draws
    make the same rows."""
    fixed, streamed = fixed_balancer(SYNTHESIZERS[name]()), fixed_balancer(SYNTHESIZERS[name]())
    streamed.reservoir_.fixed = False
    for c in (1, 2):
        a = fixed.synthesizer.synthesize(fixed.reservoir_, c, 50, np.random.default_rng(c))
        b = streamed.synthesizer.synthesize(streamed.reservoir_, c, 50, np.random.default_rng(c))
        assert a.partner_entries == b.partner_entries and torch.equal(a.values, b.values)


@pytest.mark.parametrize("fixed", [True, False])
def test_danger_and_adasyn_weights_follow_sklearns_neighbours(fixed):
    """Borderline-SMOTE's danger set and ADASYN's seed weights, from m nearest of any class
    (own point excluded), equal the rule applied to scikit-learn's NearestNeighbors."""
    border, adasyn = fixed_balancer(BorderlineSMOTE(m_neighbors=6)), fixed_balancer(ADASYN(n_neighbors=5))
    for bal in (border, adasyn):
        bal.reservoir_.fixed = fixed
    pool, _ = border.reservoir_.pool()
    x, y = pool.numpy(), pool_labels(border.reservoir_)
    for c in range(3):
        own = np.flatnonzero(y == c)
        nn = NearestNeighbors(n_neighbors=7).fit(x).kneighbors(x[own], return_distance=False)
        other6 = np.array([(y[[j for j in row if j != i][:6]] != c).sum() for i, row in zip(own, nn)])
        assert border.synthesizer.danger(border.reservoir_, c, None).tolist() == \
            np.flatnonzero((other6 >= 3) & (other6 < 6)).tolist()
        other5 = np.array([(y[[j for j in row if j != i][:5]] != c).mean() for i, row in zip(own, nn)])
        expected = other5 / other5.sum() if other5.sum() else np.full(len(own), 1 / len(own))
        np.testing.assert_allclose(adasyn.synthesizer.weights(adasyn.reservoir_, c, None), expected)


def test_a_fixed_reservoir_refuses_new_rows():
    bal = fixed_balancer(SMOTE())
    with pytest.raises(RuntimeError, match="fixed"):
        bal.reservoir_.add(torch.zeros((1, 3, 8, 8), dtype=torch.uint8), torch.zeros(1, dtype=torch.int64),
                           ["x"], ["shard"], np.random.default_rng(0))


@pytest.mark.parametrize("dtype,normalize", [(torch.uint8, None), (torch.float32, ((0.5,) * 3, (0.25,) * 3))])
def test_the_plugin_path_never_reads_the_device(dtype, normalize):
    """The loader's per-batch stages (``plugin_stage.apply_plugins``): SMOTE with thumbnail
    neighbours, Kornia flip + rotate + shear, MixUp, then the output format, on ``meta``.
    (``GaussianNoise`` draws from a ``torch.Generator`` on the images' device, which ``meta``
    cannot hold, and DALI cannot take ``meta`` tensors; the CUDA test covers both.)"""
    from types import SimpleNamespace

    from streamaug.loader.errors import LoaderStats
    from streamaug.loader.output_format import OutputFormat
    from streamaug.loader.plugin_stage import apply_plugins
    from streamaug.ops import Compose, Flip, MixUp, Rotate, Shear

    bal = fixed_balancer(SMOTE(k_neighbors=3, neighbour_space="thumbnail"))
    on_meta(bal)
    loader = SimpleNamespace(_plugin_seeds={"balance": 1, "augment": 2, "mixup": 3}, balance=bal,
                             augment=Compose([Flip(p=0.5), Rotate(30), Shear(x=15)]), mixup=MixUp(0.2),
                             stats=LoaderStats(), device=torch.device("meta"), num_classes=3, rank=0,
                             output=OutputFormat(dtype, normalize, False))
    n = 16
    batch = BatchInFlight(images=torch.empty((n, 3, 8, 8), dtype=torch.uint8, device="meta"),
                          labels=torch.zeros(n, dtype=torch.int64), keys=[f"r{i}" for i in range(n)],
                          urls=["shard"] * n, is_padding=torch.zeros(n, dtype=torch.bool), batch_id=0)
    with HostToDeviceCopies() as copies:
        out = apply_plugins(loader, batch, SimpleNamespace(synthetic={0: 20}), epoch=0)
    assert out.images.device.type == "meta" and out.images.dtype == dtype and out.images.shape[0] == n + 20
    assert out.targets.shape == (n + 20, 3) and loader.stats.synthetic == 20
    assert copies.blocking == []


def test_the_copy_recorder_sees_blocking_copies_and_not_to_device():
    from streamaug.core.transfer import to_device

    with HostToDeviceCopies() as copies:
        to_device(torch.zeros(3), "meta")
        torch.zeros(3).to("meta")
        torch.tensor([1, 2], device="meta")
    assert copies.blocking == ["to to meta", "torch.tensor(..., device=meta)"]
    # The premise of this file: reading a meta tensor on the host raises. If a torch release
    # stopped raising, every "never reads the device" test here would pass vacuously.
    with pytest.raises(NotImplementedError):
        torch.zeros(3, device="meta").tolist()


def test_balancer_launches_benchmark_runs_and_tables_dispatch_fewer_ops(tmp_path, capsys):
    """The committed benchmark's quick run; op counts are deterministic, not timings."""
    import json

    from streamaug.benchmarks.balancer_launches import main

    out = tmp_path / "launches.json"
    assert main(["--size", "8", "--batches", "1", "--repeats", "1", "--json", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    for name in ("SMOTE", "SMOTE thumbnail", "Borderline-SMOTE 2", "ADASYN"):
        assert results[name]["tables"]["aten_ops_per_batch"] < results[name]["search per batch"]["aten_ops_per_batch"]
    assert "| ADASYN |" in capsys.readouterr().out


@pytest.mark.parametrize("argv,named", [(["--batches", "0"], "'0'"), (["--size", "x"], "'x'"),
                                        (["--repeats", "-2"], "'-2'")])
def test_balancer_launches_refuses_bad_arguments_by_value(argv, named, capsys):
    from streamaug.benchmarks.balancer_launches import main

    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and f"must be an int >= 1, got {named}" in capsys.readouterr().err
