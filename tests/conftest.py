import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

from shard_factory import make_shards  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture(scope="session")
def npy_shards(tmp_path_factory):
    """100 numbered 8×8 RGB images in 7 uneven shards (16 per shard), npy."""
    tmp = str(tmp_path_factory.mktemp("npy"))
    return make_shards(tmp, n=100, maxcount=16, fmt="npy")



def _on_cuda(item) -> bool:
    """A case parametrized with a CUDA device, or a test named for CUDA."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    return "cuda" in item.name or any(str(v) == "cuda" or getattr(v, "type", None) == "cuda"
                                      for v in params.values())


def _on_dali(item) -> bool:
    """A case parametrized with DALI (``backend="dali"``, ``decode="dali"``) or named for it."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    return "dali" in item.name.lower() or any(str(v) == "dali" for v in params.values())


def _dali_missing() -> str | None:
    from streamaug.benchmarks.gpu_check import dali_missing     # (the GPU check's own test of it)

    why = dali_missing()
    return f"{why}; it is the [dali] extra" if why else None


def pytest_collection_modifyitems(config, items):
    """Mark every CUDA case ``cuda``: ``streamaug bench --gpu-check`` runs ``pytest -m cuda``.
    A test that needs CUDA whatever its parameters says so with ``@pytest.mark.cuda``; it is
    skipped without a GPU (a ``skipif`` of its own would leave it out of the GPU check).

    Mark every DALI case ``dali`` (or its author does, as ``test_device_decode.py`` does for
    the module), so that the GPU check can run without DALI and then with it alone
    (``--dali off``/``only``). Without DALI installed they are skipped, by name; CI installs
    it and checks that it imports (``.ci/run``)."""
    no_dali = None
    for item in items:
        needs_cuda = item.get_closest_marker("cuda") is not None      # marked by its author
        if _on_cuda(item):
            item.add_marker(pytest.mark.cuda)
        if needs_cuda and not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason="no GPU"))
        if _on_dali(item):
            item.add_marker(pytest.mark.dali)
        if item.get_closest_marker("dali") is not None:
            no_dali = no_dali if no_dali is not None else (_dali_missing() or "")
            if no_dali:
                item.add_marker(pytest.mark.skip(reason=no_dali))
