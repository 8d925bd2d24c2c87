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
