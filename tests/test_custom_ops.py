"""Ops a user writes (``GeometricOp``/``IntensityOp`` subclasses, docs/augmentation.md's
"Writing an op") run on every backend × device, against torch references; a missing method is
refused when the ``Compose`` is built, naming the op and the method."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from op_cases import grid, images
from streamaug.ops import Compose, Flip, GeometricOp, IntensityOp


class QuarterTurn(GeometricOp):
    """``torch.rot90(x, 1, dims=(2, 3))`` of square images, on the rows ``apply`` picks."""

    def _matrices(self, params, height, width):
        n = len(params["apply"])
        m = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, width - 1.0], [0.0, 0.0, 1.0]])
        return np.broadcast_to(m, (n, 3, 3))


class Invert(IntensityOp):
    """``1 - x`` on the rows ``apply`` picks. DALI gets the pick as a per-row argument (its
    graph is the same for every row); for uint8 its arithmetic gives float32, cast back."""

    dali_argument_names = ("on",)

    def apply_torch(self, x, params):
        return torch.where(params["apply"].to(x.device).view(-1, 1, 1, 1), 1.0 - x, x)

    def dali_arguments(self, params):
        return {"on": [np.float32(a) for a in params["apply"]]}

    def dali_apply(self, fn, images, arguments, uint8):
        top = 255.0 if uint8 else 1.0
        return images + arguments["on"] * (top - 2.0 * images)


class Level(IntensityOp):
    """Adds a per-row level drawn in ``_draw`` and fed to DALI as an argument."""

    dali_argument_names = ("level",)

    def _draw(self, n, height, width):
        return {"level": torch.from_numpy(self.rng.uniform(-0.2, 0.2, n)).float()}

    def apply_torch(self, x, params):
        return x + torch.where(params["apply"], params["level"], 0.0).to(x.device, x.dtype).view(-1, 1, 1, 1)

    def dali_arguments(self, params):
        level = torch.where(params["apply"], params["level"], 0.0)
        return {"level": [np.float32(v) for v in level]}

    def dali_apply(self, fn, images, arguments, uint8):
        return images + arguments["level"] * (255.0 if uint8 else 1.0)


@pytest.mark.parametrize("backend,device", list(grid()))
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_a_geometric_op_of_ones_own_matches_torch_rot90(backend, device, dtype):
    x = images(n=6, h=12, w=12, dtype=dtype, device=device)
    aug = Compose([QuarterTurn(p=0.5)], backend=backend, seed=3)
    y = aug(x)
    picked = aug.last_params[0]["apply"].to(device)
    assert 0 < int(picked.sum()) < 6, "some rows turned, some not"
    want = torch.where(picked.view(-1, 1, 1, 1), torch.rot90(x, 1, dims=(2, 3)), x)
    assert y.dtype == dtype and torch.allclose(y.float(), want.float(), atol=1e-5)
    assert torch.equal(aug(x, params=aug.last_params), y), "replays"


@pytest.mark.parametrize("backend,device", list(grid()))
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_intensity_ops_of_ones_own_match_their_torch_form(backend, device, dtype):
    x = images(n=6, h=10, w=10, dtype=dtype, device=device)
    aug = Compose([Flip(p=0.5), Invert(p=0.5), Level()], backend=backend, seed=4)
    y = aug(x)
    flip, invert, level = aug.last_params
    xf = torch.where(flip["apply"].to(device).view(-1, 1, 1, 1), x.flip(3), x).double()
    xf = xf / 255 if dtype == torch.uint8 else xf
    xf = torch.where(invert["apply"].to(device).view(-1, 1, 1, 1), 1.0 - xf, xf)
    want = (xf + level["level"].to(device).double().view(-1, 1, 1, 1)).clamp(0, 1)
    got = y.double() / 255 if dtype == torch.uint8 else y.double()
    assert y.dtype == dtype and y.device.type == device
    assert (got - want).abs().max() <= (0.5 / 255 + 1e-6 if dtype == torch.uint8 else 1e-6)
    assert torch.equal(aug(x, params=aug.last_params), y), "replays"


class NoDali(IntensityOp):
    def apply_torch(self, x, params):
        return x


class NoTorch(IntensityOp):
    def dali_apply(self, fn, images, arguments, uint8):
        return images


class NoMatrices(GeometricOp):
    pass


@pytest.mark.parametrize("op,backend,missing", [
    (NoDali(), "dali", "dali_apply"), (NoTorch(), "kornia", "apply_torch"), (NoTorch(), "opencv", "apply_torch"),
    (NoMatrices(), "kornia", "_matrices"), (NoMatrices(), "dali", "_matrices")])
def test_an_op_missing_what_its_backend_runs_is_refused_when_composed(op, backend, missing):
    """s41: the DALI backend raised a bare NotImplementedError at the first batch."""
    with pytest.raises(TypeError, match=f"{type(op).__name__} has no {missing}, which backend='{backend}' runs"):
        Compose([op], backend=backend)
    called = {"dali_apply": lambda: op.dali_apply(None, None, {}, True), "apply_torch": lambda: op.apply_torch(None, {}),
              "_matrices": lambda: op.matrix_array({"apply": [True]}, 4, 4)}[missing]
    with pytest.raises(NotImplementedError, match=f"{type(op).__name__} has no {missing}: an op of one's own"):
        called()                                # (called directly, not through a Compose)
    other = {"dali": "kornia", "kornia": "dali", "opencv": "dali"}[backend]
    if missing != "_matrices":
        Compose([op], backend=other)            # what it has is enough there
