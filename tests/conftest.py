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


def pytest_collection_modifyitems(config, items):
    """Mark every CUDA case ``cuda``: ``streamaug bench --gpu-check`` runs ``pytest -m cuda``.
    A test that needs CUDA whatever its parameters says so with ``@pytest.mark.cuda``; it is
    skipped without a GPU (a ``skipif`` of its own would leave it out of the GPU check)."""
    for item in items:
        needs_cuda = item.get_closest_marker("cuda") is not None      # marked by its author
        if _on_cuda(item):
            item.add_marker(pytest.mark.cuda)
        if needs_cuda and not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason="no GPU"))
