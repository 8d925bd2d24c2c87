"""Noise, jitter, erasing, MixUp and CutMix against their definitions."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from op_cases import grid, images, run
from streamaug.ops import BrightnessContrast, Compose, CutMix, GaussianNoise, MixUp, RandomErasing

GRID = list(grid())


@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_noise_std_zero_is_identity(backend, device, dtype):
    x = images(dtype=dtype, device=device)
    y, _ = run(GaussianNoise(0.0), x, backend)
    assert torch.equal(y, x)


@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("std", [0.02, 0.1])
def test_noise_empirical_std_and_row_independence(backend, device, std):
    x = torch.full((16, 3, 48, 48), 0.5, device=device)          # far from the clip edges
    y, _ = run(GaussianNoise(std), x, backend)
    d = (y - x).cpu()
    assert abs(d.std().item() - std) / std < 0.05
    per_row = d.flatten(1)
    corr = np.corrcoef(per_row.numpy())[np.triu_indices(16, 1)]
    assert np.abs(corr).max() < 0.1, "rows get independent noise"
    assert abs(d.mean().item()) < std / 20


@pytest.mark.dali                       # (compares DALI with the other backends)
@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_noise_is_the_same_field_on_both_backends(device, dtype):
    x = images(dtype=dtype, device=device)
    y, aug = run(GaussianNoise((0.02, 0.1)), x, "kornia", seed=4)
    z = Compose([GaussianNoise((0.02, 0.1))], backend="dali")(x, params=aug.last_params)
    diff = (y.double() - z.double()).abs() * (1 if dtype == torch.uint8 else 255)
    assert float(diff.max()) <= 1.0 + 1e-3 and float(diff.mean()) < 0.01, "only rounding may differ"


@pytest.mark.parametrize("backend,device", GRID)
def test_noise_is_clipped_to_the_valid_range(backend, device):
    x = images(dtype=torch.float32, device=device)
    y, _ = run(GaussianNoise(0.5), x, backend)
    assert float(y.min()) == 0.0 and float(y.max()) == 1.0


@pytest.mark.parametrize("backend,device", GRID)
def test_brightness_contrast_formula(backend, device):
    x = images(dtype=torch.float32, device=device)
    aug = Compose([BrightnessContrast(0.5, 0.5)], backend=backend, seed=2)
    y = aug(x)
    p = aug.last_params[0]
    b, c = (p[k].view(-1, 1, 1, 1).to(device) for k in ("brightness", "contrast"))
    ref = (b * (0.5 + c * (x - 0.5))).clamp(0, 1)
    assert (y - ref).abs().max() < 1e-5


@pytest.mark.parametrize("backend,device", GRID)
def test_erasing_fills_exactly_the_box(backend, device):
    x = images(device=device) | 1                                 # no zero pixels before erasing
    aug = Compose([RandomErasing(p=1.0)], backend=backend, seed=3)
    y = aug(x)
    for row, (top, left, h, w) in enumerate(aug.last_params[0]["box"].tolist()):
        assert (y[row, :, top:top + h, left:left + w] == 0).all()
        assert int((y[row] == 0).sum()) == 3 * h * w


@pytest.mark.parametrize("backend,device", GRID)
def test_erasing_a_box_of_no_area_erases_nothing(backend, device):
    x = images(device=device) | 1
    y = Compose([RandomErasing(scale=(0, 0), p=1.0)], backend=backend, seed=3)(x)
    assert torch.equal(y, x)                                    # (it used to erase one pixel per row)


# ---------------------------------------------------------------- MixUp / CutMix
def mix(op, n=64, num_classes=5, device="cpu", dtype=torch.float32):
    x = images(n=n, dtype=dtype, device=device, h=16, w=16)
    labels = torch.arange(n, device=device) % num_classes
    out, targets = op(x, labels, num_classes=num_classes)
    return x, labels, out, targets, op.last_params


@pytest.mark.parametrize("alpha", [0.2, 1.0])
def test_mixup_lambda_is_beta_alpha_alpha(alpha):
    op = MixUp(alpha, seed=0)
    lam = torch.cat([op.generate_parameters(1000, 4, 4)["lam"] for _ in range(4)]).double().numpy()
    assert stats.kstest(lam, stats.beta(alpha, alpha).cdf).pvalue > 0.01
    assert stats.kstest(lam, stats.uniform().cdf).pvalue < 0.01 or alpha == 1.0


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_mixup_same_lambda_and_pairing_for_pixels_and_targets(device):
    x, labels, out, targets, p = mix(MixUp(0.4, seed=1), device=device)
    lam = torch.where(p["apply"], p["lam"], torch.ones_like(p["lam"])).to(device)
    perm = p["perm"].to(device)
    assert torch.allclose(out, lam.view(-1, 1, 1, 1) * x + (1 - lam.view(-1, 1, 1, 1)) * x[perm], atol=1e-6)
    onehot = torch.nn.functional.one_hot(labels, 5).float()
    assert torch.allclose(targets, lam.view(-1, 1) * onehot + (1 - lam.view(-1, 1)) * onehot[perm], atol=1e-6)
    assert (targets >= 0).all() and torch.allclose(targets.sum(1), torch.ones(64, device=device))
    assert sorted(perm.tolist()) == list(range(64))


def test_mixup_lambda_one_returns_the_sample_and_uint8_is_kept():
    op = MixUp(0.4, seed=1)
    x = images(n=8)
    params = op.generate_parameters(8, 24, 24)
    params["lam"] = torch.ones(8)
    out, targets = op(x, torch.arange(8) % 3, num_classes=3, params=params)
    assert out.dtype == torch.uint8 and torch.equal(out, x)
    assert torch.equal(targets, torch.nn.functional.one_hot(torch.arange(8) % 3, 3).float())


def test_mixup_p_is_per_row():
    op = MixUp(0.4, p=0.25, seed=3)
    n = 2000                        # unique labels: a mixed row always has a soft target
    _, targets = op(images(n=n, h=4, w=4), torch.arange(n), num_classes=n)
    p = op.last_params
    mixed = (targets.max(1).values < 1).float().mean().item()
    assert abs(mixed - 0.25) < 0.04 and abs(p["apply"].float().mean().item() - 0.25) < 0.04


def test_cutmix_label_weight_is_the_pasted_area_after_clipping():
    x, labels, out, targets, p = mix(CutMix(1.0, seed=4), n=200)
    h = w = 16
    for i in range(200):
        y0, y1, x0, x1 = p["box"][i].tolist()
        area = (y1 - y0) * (x1 - x0) if p["apply"][i] else 0
        lam_used = 1 - area / (h * w)
        j = int(p["perm"][i])
        expected = torch.zeros(5)
        expected[labels[i]] += lam_used
        expected[labels[j]] += 1 - lam_used
        assert torch.allclose(targets[i], expected, atol=1e-6)
        if area:
            assert torch.equal(out[i, :, y0:y1, x0:x1], x[j, :, y0:y1, x0:x1])
    clipped = [(b[1] - b[0]) * (b[3] - b[2]) for b in p["box"].tolist()]
    unclipped = (1 - p["lam"].double().numpy()) * h * w
    assert np.mean(np.array(clipped) < unclipped - 1) > 0.2, "many boxes are clipped; weights follow the clip"


def test_mix_ops_reject_bad_labels():
    op = MixUp(0.4, seed=0)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\), got range \[0, 7\]"):
        op(images(n=8), torch.arange(8), num_classes=3)
    with pytest.raises(ValueError, match="num_classes is needed"):
        op(images(n=8), torch.arange(8))
    with pytest.raises(ValueError, match="labels have 4 rows but images have 8"):
        op(images(n=8), torch.arange(4), num_classes=10)


@pytest.mark.parametrize("op", [MixUp(0.4, seed=2), CutMix(1.0, seed=3), MixUp(0.4, seed=2, partners="balanced")],
                         ids=["mixup", "cutmix", "mixup-balanced"])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_mix_ops_replay_params_through_json_and_numpy(op, dtype):
    """A mix op's params, as saved to JSON or numpy, replay the call exactly, as Compose's do."""
    import json

    x, labels = images(n=12, dtype=dtype), torch.arange(12) % 4
    mixed, targets = op(x, labels, num_classes=4)
    as_json = json.loads(json.dumps({k: v.tolist() for k, v in op.last_params.items()}))
    as_numpy = {k: v.numpy() for k, v in op.last_params.items()}
    for given in (as_json, as_numpy):
        again, again_targets = op(x, labels, num_classes=4, params=given)
        assert torch.equal(again, mixed) and torch.equal(again_targets, targets)
        assert again_targets.dtype == torch.float32


def test_mix_ops_refuse_params_that_do_not_fit_the_batch():
    """Replayed params that do not fit are refused naming the op, the entry and the value, not
    met deep inside with an IndexError, or (CutMix, a box for larger images) taken silently with
    label weights outside [0, 1]."""
    x, labels = images(n=8, h=16, w=16, dtype=torch.uint8), torch.arange(8) % 2
    mixup, cutmix = MixUp(0.4, seed=0), CutMix(1.0, seed=3)
    mixup(images(n=16), torch.arange(16) % 2, num_classes=2)
    with pytest.raises(ValueError, match=r"MixUp params\['apply'\] has 16 rows, the batch 8"):
        mixup(x, labels, num_classes=2, params=mixup.last_params)
    mixup(x, labels, num_classes=2)
    good = mixup.last_params
    with pytest.raises(ValueError, match=r"MixUp params need 'perm' \(as in its last_params\)"):
        mixup(x, labels, num_classes=2, params={k: v for k, v in good.items() if k != "perm"})
    with pytest.raises(ValueError, match=r"MixUp params need 'apply'"):
        mixup(x, labels, num_classes=2, params={k: v for k, v in good.items() if k != "apply"})
    with pytest.raises(ValueError, match=r"params\['perm'\] must be 8 row indices in \[0, 8\), got torch.int64 "
                                         r"\(8,\): \[0, 1, 2, 3, 4, 5, 6, 8\]"):
        mixup(x, labels, num_classes=2, params={**good, "perm": torch.tensor([0, 1, 2, 3, 4, 5, 6, 8])})
    with pytest.raises(ValueError, match=r"params\['lam'\] must be 8 floats in \[0, 1\]"):
        mixup(x, labels, num_classes=2, params={**good, "lam": torch.full((8,), 1.5)})
    with pytest.raises(ValueError, match=r"params\['lam'\] must be 8 floats in \[0, 1\]"):
        mixup(x, labels, num_classes=2, params={**good, "lam": torch.full((8,), float("nan"))})
    cutmix(images(n=8, h=32, w=32, dtype=torch.uint8), labels, num_classes=2)
    drawn_big = cutmix.last_params
    assert int(drawn_big["box"][:, [1, 3]].max()) > 16, "some box reaches past 16 pixels (else the case is moot)"
    with pytest.raises(ValueError, match=r"CutMix params\['box'\]\[\d+\] = \[.*\] is not a box .* inside "
                                         r"these 16x16 images: were the params drawn for images of another size\?"):
        cutmix(x, labels, num_classes=2, params=drawn_big)
    cutmix(x, labels, num_classes=2)
    _, targets = cutmix(x, labels, num_classes=2, params=cutmix.last_params)
    assert float(targets.min()) >= 0 and float(targets.max()) <= 1


# ---------------------------------------------------------------- the CPU fast paths against the plain formulas
@pytest.mark.parametrize("threads", [1, 2])
def test_noise_added_chunk_by_chunk_is_the_whole_field(threads):
    """The CPU path draws and adds the field a chunk at a time; the numbers must be the field's."""
    from streamaug.ops.intensity.noise_field import add_gaussian_field_, gaussian_field

    shape = torch.Size((100, 3, 128, 128))                  # 3 chunks of whole rows
    x = torch.rand(shape)
    sigma = torch.rand(100) * 0.1
    expected = x + sigma.view(-1, 1, 1, 1) * gaussian_field(shape, 123, torch.device("cpu"))
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = add_gaussian_field_(x.clone(), sigma, 123)
    finally:
        torch.set_num_threads(saved)
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(got, x + sigma.view(-1, 1, 1, 1) * gaussian_field(shape, 124, torch.device("cpu")),
                              atol=1e-3), "another seed gives another field"


@pytest.mark.parametrize("n", [1, 8, 29])
def test_mixup_uint8_cpu_path_matches_the_float_formula(n):
    op = MixUp(0.4, seed=5)
    x = torch.randint(0, 256, (n, 3, 20, 20), dtype=torch.uint8)
    out, _ = op(x, torch.arange(n) % 3, num_classes=3)
    p = op.last_params
    lam = torch.where(p["apply"], p["lam"], torch.ones_like(p["lam"])).double().view(-1, 1, 1, 1)
    ref = (lam * x.double() + (1 - lam) * x[p["perm"]].double()).round()
    diff = (out.double() - ref).abs()
    assert out.dtype == torch.uint8 and float(diff.max()) <= 1.0
    assert float((diff > 0).double().mean()) < 1e-3, "only exact ties may round the other way"
    if n > 1:
        assert not torch.equal(out, x)


# ---------------------------------------------------------------- the OpenCV uint8 kernels against the float route
def float_route_noise(x: torch.Tensor, sigma: torch.Tensor, seed: int) -> torch.Tensor:
    """uint8 → [0, 1] float32, the field added chunk by chunk, then back with rounding: the float route."""
    from streamaug.ops.intensity.noise_field import add_gaussian_field_

    y = add_gaussian_field_(x.float() / 255.0, sigma, seed)
    return (y * 255.0).round().clamp(0, 255).to(torch.uint8)


@pytest.mark.parametrize("threads", [1, 2])
def test_uint8_noise_kernel_is_the_float_route_rounded_once(threads):
    from streamaug.ops.backends.opencv_uint8 import add_noise_uint8

    shape = torch.Size((100, 3, 128, 128))                  # 3 chunks of whole rows
    x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    sigma = torch.rand(100, generator=torch.Generator().manual_seed(1)) * 0.1
    sigma[::7] = 0.0                                        # rows the op does not apply to
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = add_noise_uint8(x, sigma, 123)
    finally:
        torch.set_num_threads(saved)
    diff = (got.int() - float_route_noise(x, sigma, 123).int()).abs()
    assert got.dtype == torch.uint8 and int(diff.max()) <= 1
    assert float((diff > 0).double().mean()) < 1e-4, "only ties (within float error) may round the other way"
    assert torch.equal(got[::7], x[::7]), "σ = 0 rows are returned as they came"
    d = (got.double() - x.double())[1:7]
    assert 0.5 < float(d.std() / (255 * sigma[1:7].mean())) < 1.5, "the noise is there, at the drawn scale"
    assert not torch.equal(got, add_noise_uint8(x, sigma, 124)), "another seed gives another field"
    y = x.clone()
    assert add_noise_uint8(y, sigma, 123, in_place=True) is y and torch.equal(y, got), "in place: the same numbers"


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 1, 2, 2), (4, 3, 1, 1), (2, 1, 1, 4), (2, 4, 5, 3)])
def test_uint8_noise_kernel_on_rows_of_a_few_values(shape):
    """OpenCV reads a 1-D array of 4 or fewer values as a scalar (and then ignores ``dst``):
    rows that small must still get their noise, in a new batch and in place."""
    from streamaug.ops.backends.opencv_uint8 import add_noise_uint8

    x = torch.full(shape, 100, dtype=torch.uint8)
    sigma = torch.full((shape[0],), 0.2)
    got = add_noise_uint8(x, sigma, 3)
    assert int((got.int() - float_route_noise(x, sigma, 3).int()).abs().max()) <= 1
    assert torch.equal(got, add_noise_uint8(x, sigma, 3)), "replays"
    y = x.clone()
    add_noise_uint8(y, sigma, 3, in_place=True)
    assert torch.equal(y, got) and not torch.equal(y, x)


def test_uint8_noise_kernel_refuses_what_it_cannot_take():
    from streamaug.ops.backends.opencv_uint8 import add_noise_uint8

    with pytest.raises(ValueError, match="contiguous uint8 CPU batch, got torch.float32"):
        add_noise_uint8(torch.rand(2, 3, 8, 8), torch.full((2,), 0.1), 0)


@pytest.mark.parametrize("p", [1.0, 0.5])
def test_opencv_adds_last_stage_noise_in_uint8_as_kornia_does_in_float(monkeypatch, p):
    """Noise as the last stage on a uint8 batch takes the uint8 kernel; the result is Kornia's
    up to one level (the warp's rounding and ties)."""
    import streamaug.ops.backends.opencv_backend as ocv
    from streamaug.ops import Rotate
    from streamaug.ops.backends import opencv_uint8

    calls = []

    def counting(*args, **kwargs):
        calls.append(kwargs)
        return opencv_uint8.add_noise_uint8(*args, **kwargs)
    monkeypatch.setattr(ocv, "add_noise_uint8", counting)
    x = images(n=16, h=40, w=40, seed=7)
    ops = lambda: [Rotate(30), GaussianNoise((0.02, 0.1), p=p)]  # noqa: E731
    k = Compose(ops(), backend="kornia", seed=3)
    yk = k(x)
    yo = Compose(ops(), backend="opencv", seed=9)(x, params=k.last_params)
    assert calls == [{"in_place": True}], "the uint8 kernel ran once, into the warp's own output"
    diff = (yk.int() - yo.int()).abs()
    assert yo.dtype == torch.uint8 and int(diff.max()) <= 1 and float(diff.double().mean()) <= 0.25
    skipped = ~k.last_params[1]["apply"]
    assert bool(skipped.any()) == (p < 1)
    rot_only = Compose([Rotate(30)], backend="opencv", seed=0)(x, params=k.last_params[:1])
    assert torch.equal(yo[skipped], rot_only[skipped]), "rows the noise skipped are the warp's, bit for bit"


@pytest.mark.parametrize("impl", ["opencv", "torch"])
def test_uint8_blend_kernels_match_the_mixup_formula(impl):
    from streamaug.ops.mix.mixup import mix_uint8_rows, mix_uint8_rows_torch

    if impl == "opencv":
        pytest.importorskip("cv2")                          # installed with the bench extra, as in CI
    blend = mix_uint8_rows if impl == "opencv" else mix_uint8_rows_torch
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, 256, (21, 3, 30, 30), dtype=torch.uint8, generator=g)
    perm = torch.randperm(21, generator=g)
    lam = torch.rand(21, generator=g)
    lam[3] = 1.0                                            # a row the op does not mix
    out = blend(x, perm, lam)
    ref = (lam.double().view(-1, 1, 1, 1) * x.double() + (1 - lam.double().view(-1, 1, 1, 1)) * x[perm].double()).round()
    diff = (out.double() - ref).abs()
    assert out.dtype == torch.uint8 and float(diff.max()) <= 1.0
    assert float((diff > 0).double().mean()) < 1e-3, "only exact ties may round the other way"
    assert torch.equal(out[3], x[3])


@pytest.mark.dali                       # (compares DALI with the other backends)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("chain", ["noise-then-contrast", "contrast-then-noise", "noise-then-rotate"])
def test_backends_agree_on_chains_because_each_intensity_op_clips(dtype, chain):
    """Strong noise pushes values out of range; the next stage must see them clipped on every
    backend (DALI's uint8 operators saturate), or a following contrast or warp moves them back
    in by different amounts (107 levels apart before)."""
    from streamaug.ops import Rotate

    make = {"noise-then-contrast": lambda: [GaussianNoise(0.3), BrightnessContrast(0.0, (0.5, 0.5))],
            "contrast-then-noise": lambda: [BrightnessContrast((1.5, 1.8), 0.2), GaussianNoise(0.05)],
            "noise-then-rotate": lambda: [GaussianNoise(0.3), Rotate(20)]}[chain]
    x = images(n=8, h=16, w=16, dtype=dtype, seed=4)
    ref = Compose(make(), backend="kornia", seed=0)
    want = ref(x).float()
    for backend in ("dali", "opencv"):
        got = Compose(make(), backend=backend, seed=0)(x, params=ref.last_params).float()
        scale = 1.0 if dtype == torch.uint8 else 255.0
        assert (got - want).abs().max() * scale <= 1.0 + 1e-3, backend
    clipped_first = x.float() / (255.0 if dtype == torch.uint8 else 1.0)
    if chain == "noise-then-contrast":            # by hand: clip after the noise, then the contrast
        p = ref.last_params[0]
        from streamaug.ops.intensity.noise_field import gaussian_field
        noisy = (clipped_first + gaussian_field(x.shape, int(p["noise_seed"]), x.device)
                 * p["std"].view(-1, 1, 1, 1)).clamp(0, 1)
        by_hand = (noisy - 0.5) * 0.5 + 0.5
        assert (want / (255.0 if dtype == torch.uint8 else 1.0) - by_hand).abs().max() <= 1 / 255 + 1e-6
