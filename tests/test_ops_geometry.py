"""Geometry against references: torch.flip, torch.rot90, inverses, and backend agreement."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from op_cases import grid, images, run, smooth_images
from streamaug.ops import (BrightnessContrast, Compose, Flip, GaussianNoise, RandomErasing, RandomResizedCrop, Rotate,
                           Shear, Translate)
from streamaug.ops.geometric.affine_matrix import rotation


def fixed(op_cls, n, **values):
    """Params for ``n`` rows, all applied, with the given fixed values."""
    params = {"apply": torch.ones(n, dtype=torch.bool)}
    params.update({k: torch.full((n,), float(v), dtype=torch.float64) for k, v in values.items()})
    return params


GRID = list(grid())


@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_flip_twice_is_identity_and_matches_torch_flip(backend, device, dtype):
    x = images(dtype=dtype, device=device)
    once, _ = run(Flip(p=1.0), x, backend)
    assert torch.equal(once, x.flip(-1))
    twice, _ = run([Flip(p=1.0), Flip(p=1.0)], x, backend)
    assert torch.equal(twice, x)
    vertical, _ = run(Flip(horizontal=False, vertical=True, p=1.0), x, backend)
    assert torch.equal(vertical, x.flip(-2))
    both, _ = run(Flip(horizontal=True, vertical=True, p=1.0), x, backend)
    assert torch.equal(both, x.flip(-2, -1))


@pytest.mark.parametrize("backend,device", GRID)
def test_flip_twice_through_separate_calls(backend, device):
    x = images(device=device)
    aug = Compose([Flip(p=0.5)], backend=backend, seed=0)
    y = aug(x)
    flipped = aug.last_params[0]["apply"]
    assert torch.equal(aug(y, params=aug.last_params), x)
    assert torch.equal(y[flipped.to(device)], x[flipped.to(device)].flip(-1))


@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("op,values", [(Rotate(30), {"degrees": 0}), (Shear(x=15, y=15), {"shear_x": 0, "shear_y": 0}),
                                       (Translate(0.2), {"dx": 0, "dy": 0})])
def test_zero_transform_is_identity_including_borders(backend, device, op, values):
    x = images(dtype=torch.float32, device=device)
    aug = Compose([op], backend=backend, seed=0)
    y = aug(x, params=[fixed(type(op), len(x), **values)])
    assert (y - x).abs().max() <= 1e-5


@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_rotate_90_matches_rot90_in_the_interior(backend, device, dtype):
    x = images(dtype=dtype, device=device, h=24, w=24)
    aug = Compose([Rotate(90)], backend=backend, seed=0)
    y = aug(x, params=[fixed(Rotate, len(x), degrees=90)])
    ref = torch.rot90(x, 1, dims=(-2, -1))          # counter-clockwise as displayed
    assert (y.float() - ref.float())[..., 1:-1, 1:-1].abs().max() <= (1e-5 if dtype != torch.uint8 else 0)
    cw = aug(x, params=[fixed(Rotate, len(x), degrees=-90)])
    assert (cw.float() - torch.rot90(x, -1, dims=(-2, -1)).float())[..., 1:-1, 1:-1].abs().max() <= 1e-4


@pytest.mark.parametrize("backend,device", GRID)
def test_rotate_then_back_recovers_the_interior(backend, device):
    x = smooth_images(device=device)
    aug = Compose([Rotate(30)], backend=backend, seed=0)
    there = aug(x, params=[fixed(Rotate, len(x), degrees=25)])
    back = aug(there, params=[fixed(Rotate, len(x), degrees=-25)])
    c = slice(10, 22)                      # the disc that never leaves the frame
    assert (back - x)[..., c, c].abs().max() < 0.02


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_kornia_and_dali_agree_on_fixed_parameters(device, dtype):
    x = images(dtype=dtype, device=device, h=32, w=32)
    ops = lambda: [Flip(p=0.5), Rotate(40), Shear(x=20, y=10), Translate(0.1), RandomResizedCrop((0.5, 1.0))]  # noqa: E731
    k = Compose(ops(), backend="kornia", seed=4)
    yk = k(x)
    yd = Compose(ops(), backend="dali", seed=99)(x, params=k.last_params)
    diff = (yk.float() - yd.float())[..., 2:-2, 2:-2].abs().max()
    assert diff <= (2 if dtype == torch.uint8 else 2 / 255)


@pytest.mark.parametrize("size", [32, 224])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_kornia_and_opencv_agree_on_fixed_parameters(size, dtype):
    """The CPU path (uint8 cv2.warpAffine) gives the Kornia result within 1/255, borders included."""
    x = images(n=8, dtype=dtype, h=size, w=size, seed=5)
    ops = lambda: [Flip(p=0.5), Rotate(40), Shear(x=20, y=10), Translate(0.1), RandomResizedCrop((0.5, 1.0))]  # noqa: E731
    k = Compose(ops(), backend="kornia", seed=4)
    yk = k(x)
    yo = Compose(ops(), backend="opencv", seed=99)(x, params=k.last_params)
    assert yo.dtype == yk.dtype and yo.shape == yk.shape
    diff = (yk.float() - yo.float()).abs() * (1 if dtype == torch.uint8 else 255)
    assert diff.max() <= (1 if dtype == torch.uint8 else 0.05)
    assert diff.mean() <= 0.01


def test_kornia_and_opencv_agree_with_intensity_ops_between_warps():
    """OpenCV rounds the warp to uint8 before the intensity ops: one level at most, on some pixels."""
    x = images(n=8, h=40, w=40, seed=6)
    ops = lambda: [Rotate(30), GaussianNoise(0.05), BrightnessContrast(0.2, 0.2), Shear(x=10), RandomErasing()]  # noqa: E731
    k = Compose(ops(), backend="kornia", seed=1)
    yk = k(x)
    yo = Compose(ops(), backend="opencv", seed=2)(x, params=k.last_params)
    diff = (yk.float() - yo.float()).abs()
    assert diff.max() <= 1 and diff.mean() <= 0.25


def test_positive_angle_is_counter_clockwise_in_the_matrix():
    # A point right of centre moves up (smaller y) under +90°.
    m = rotation(torch.tensor([90.0]))[0]
    p = m @ np.array([1.0, 0.0, 1.0])
    np.testing.assert_allclose(p[:2], [0.0, -1.0], atol=1e-12)


@pytest.mark.parametrize("backend", ["kornia", "dali", "opencv"])
def test_fused_warp_resamples_once(backend):
    """Fused rotate+shear+rotate is closer to the exact result than three passes."""
    x = images(n=4, dtype=torch.float32, h=32, w=32, seed=3)
    ops = [Rotate(20), Shear(x=10), Rotate(20)]
    values = [{"degrees": 17}, {"shear_x": 9, "shear_y": 0}, {"degrees": -11}]
    fused = Compose(ops, backend=backend, seed=0)
    params = [fixed(type(o), 4, **v) for o, v in zip(ops, values)]
    one_pass = fused(x, params=params)
    y = x
    for op, p in zip(ops, params):
        y = Compose([op], backend=backend, seed=0)(y, params=[p])
    c = slice(8, 24)
    sharpness = lambda t: t[..., c, c].diff(dim=-1).abs().mean()  # noqa: E731
    assert sharpness(one_pass) > sharpness(y), "three bilinear passes blur more than one"


@pytest.mark.parametrize("size", [(8, 8), (1, 5), (5, 1), (1, 1), (33, 17), (224, 224)])
def test_normalized_inverse_equals_kornias_normalize_homography(size):
    """The Kornia backend's numpy grid matrices are Kornia's own, to the float32 the grid is built in."""
    from kornia.geometry.conversions import normalize_homography

    from streamaug.ops.backends.kornia_backend import normalized_inverse

    rng = np.random.default_rng(0)
    m = np.tile(np.eye(3), (64, 1, 1))
    m[:, :2] += rng.normal(0, 0.3, (64, 2, 3)) * [1, 1, 5]
    h, w = size
    want = normalize_homography(torch.linalg.inv(torch.from_numpy(m)), (h, w), (h, w), align_corners=False).numpy()
    got = normalized_inverse(m, h, w)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert np.array_equal(got[:, :2].astype(np.float32), want[:, :2].astype(np.float32))


def test_affine_inverse_matches_linalg_and_refuses_what_has_none():
    from streamaug.ops.geometric.affine_matrix import affine_inverse

    m = Compose([Flip(), Rotate(40), Shear(x=20, y=10), Translate(0.2), RandomResizedCrop()], seed=3)
    params = m.generate_parameters(32, 17, 33)
    fused = m.fused_matrix(list(range(5)), params, 17, 33)
    np.testing.assert_allclose(affine_inverse(fused), np.linalg.inv(fused), rtol=0, atol=1e-12)
    projective = np.tile(np.eye(3), (3, 1, 1))
    projective[2, 2, 0] = 1e-3
    with pytest.raises(ValueError, match=r"row 2: not an affine matrix"):
        affine_inverse(projective)
    singular = np.tile(np.eye(3), (2, 1, 1))
    singular[1, 0, 0] = 0.0
    with pytest.raises(ValueError, match=r"row 1: .* has no inverse"):
        affine_inverse(singular)


@pytest.mark.parametrize("backend,device", GRID)
def test_an_axis_of_one_pixel_moves_and_fills_with_zeros(backend, device):
    """A 1-pixel axis has extent too: half a pixel right halves a 1×1 image, a 1×7 row
    moved 3 px down leaves the frame, and a quarter turn of it keeps only its centre."""
    one = torch.full((1, 1, 1, 1), 200, dtype=torch.uint8, device=device)
    y, _ = run(Translate(), one, backend, params=[fixed(Translate, 1, dx=0.5, dy=0)])
    assert y.flatten().tolist() == [100]
    row = torch.tensor([30, 60, 90, 120, 150, 180, 210], dtype=torch.uint8, device=device).view(1, 1, 1, 7)
    y, _ = run(Translate(), row, backend, params=[fixed(Translate, 1, dx=0, dy=3)])
    assert y.flatten().tolist() == [0] * 7
    y, _ = run(Rotate(), row, backend, params=[fixed(Rotate, 1, degrees=90)])
    assert y.flatten().tolist() == [0, 0, 0, 120, 0, 0, 0]


def test_public_matrix_methods_still_return_torch_tensors():
    op = Rotate(30, seed=0)
    params = op.generate_parameters(4, 8, 8)
    m = op.matrices(params, 8, 8)
    assert isinstance(m, torch.Tensor) and m.dtype == torch.float64 and m.shape == (4, 3, 3)
    assert torch.allclose(torch.linalg.inv(m) @ m, torch.eye(3, dtype=torch.float64).expand(4, 3, 3))
    from streamaug.ops import fuse_affine
    assert isinstance(fuse_affine([m, m]), torch.Tensor)
    aug = Compose([Flip(), Rotate(5)], seed=0)
    assert isinstance(aug.fused_matrix([0, 1], aug.generate_parameters(2, 8, 8), 8, 8), torch.Tensor)


@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("size", [32, 57])
def test_a_resized_crop_of_a_constant_image_stays_constant_to_its_edges(backend, device, size):
    """A box at the image's edge used to sample half a pixel outside it and blend in the zero
    fill (a rim down to 0.7 of the value); torchvision's crop-and-resize has none."""
    x = torch.full((400, 3, size, size), 200, dtype=torch.uint8, device=device)
    y, _ = run(RandomResizedCrop(), x, backend)
    assert int(y.min()) == int(y.max()) == 200
    corner = [{"apply": torch.ones(1, dtype=torch.bool), "box": torch.tensor([[0.0, 0.0, 8.0, 8.0]], dtype=torch.float64)}]
    y, _ = run(RandomResizedCrop(), x[:1], backend, params=corner)
    assert int(y.min()) == 200


def test_the_crop_moves_in_by_under_half_a_pixel_and_only_at_the_edge():
    op = RandomResizedCrop()
    inner = {"apply": torch.ones(1, dtype=torch.bool), "box": torch.tensor([[4.0, 4.0, 8.0, 8.0]], dtype=torch.float64)}
    edge = {"apply": torch.ones(1, dtype=torch.bool), "box": torch.tensor([[0.0, 24.0, 8.0, 8.0]], dtype=torch.float64)}
    # the output's centre pixel, mapped back into the source
    src_inner = np.linalg.solve(op.matrix_array(inner, 32, 32)[0], [15.5, 15.5, 1.0])
    assert np.allclose(src_inner[:2], [7.5, 7.5])             # the box's centre: unmoved
    src_edge = np.linalg.solve(op.matrix_array(edge, 32, 32)[0], [15.5, 15.5, 1.0])
    assert np.allclose(src_edge[:2], [3.5 + 0.375, 27.5 - 0.375])   # (1 − 8/32)/2 in from each edge


@pytest.mark.parametrize("channels", [3, 4])
@pytest.mark.parametrize("h, w", [(31, 23), (2, 3), (7, 300), (224, 224)])
def test_opencv_uint8_warp_is_a_planar_warp_byte_for_byte(channels, h, w):
    """3 and 4 channels are warped interleaved (merge, one warp, split); the bytes must be those of
    one warp per plane."""
    cv2 = pytest.importorskip("cv2")
    from streamaug.ops.backends.opencv_backend import warp_rows

    x = torch.randint(0, 256, (5, channels, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(channels))
    m = np.zeros((5, 3, 3))
    m[:, 2, 2] = 1.0
    for i, (angle, scale) in enumerate(((10.0, 1.0), (-25.0, 0.5), (33.0, 2.5), (5.0, 1.3), (70.0, 0.8))):
        m[i, :2] = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, scale)   # with a shear:
        m[i, 0, 1] += 0.2                                                             # no row is a flip
    got = warp_rows(x, m).numpy()
    for i in range(5):
        for c in range(channels):
            plane = cv2.warpAffine(x[i, c].numpy(), m[i, :2], (w, h), flags=cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            assert np.array_equal(got[i, c], plane), (i, c)
