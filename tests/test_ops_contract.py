"""The shared op suite: every op × backend × device keeps the contract."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from op_cases import BACKENDS, MIX_OPS, OPS, REPLAY_EXACT, grid, images, run
from streamaug.ops import (BrightnessContrast, Compose, Flip, GaussianNoise, MixUp, RandomErasing, RandomResizedCrop,
                           Rotate, Shear, Translate)

ALL = sorted(OPS)


@pytest.mark.parametrize("backend,device", list(grid()))
@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_keeps_dtype_device_shape(name, backend, device, dtype):
    x = images(dtype=dtype, device=device)
    y, _ = run(OPS[name](), x, backend)
    assert y.dtype == x.dtype and y.shape == x.shape and y.device == x.device
    if dtype == torch.float32:
        assert float(y.min()) >= 0 and float(y.max()) <= 1


@pytest.mark.parametrize("backend,device", list(grid()))
@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_p0_returns_the_input(name, backend, device, dtype):
    x = images(dtype=dtype, device=device)
    y, aug = run(OPS[name](p=0.0), x, backend)
    assert torch.equal(y, x)
    assert not aug.last_params[0]["apply"].any()


@pytest.mark.parametrize("backend,device", list(grid()))
@pytest.mark.parametrize("name", ALL)
def test_same_seed_same_output_and_replay(name, backend, device):
    x = images(device=device)
    a, aug = run(OPS[name](), x, backend, seed=5)
    b, _ = run(OPS[name](), x, backend, seed=5)
    replay = aug(x, params=aug.last_params)
    assert (name, backend) in REPLAY_EXACT
    assert torch.equal(a, b) and torch.equal(replay, a)
    c, _ = run(OPS[name](), x, backend, seed=6)
    assert not torch.equal(c, a), "a different seed changes the output"


@pytest.mark.parametrize("name", ALL)
def test_rows_draw_their_own_parameters(name):
    op = OPS[name](p=1.0, seed=0)
    params = op.generate_parameters(32, 24, 24)
    varying = [v for k, v in params.items() if k != "apply" and v.ndim >= 1 and v.shape[0] == 32]
    if varying:
        assert any(len(torch.unique(v, dim=0)) > 16 for v in varying)
    else:   # flips: the only per-row draw is whether to apply
        half = OPS[name](p=0.5, seed=0).generate_parameters(32, 24, 24)["apply"]
        assert 0 < int(half.sum()) < 32


@pytest.mark.parametrize("name", ALL + sorted(MIX_OPS))
def test_apply_is_p_per_row(name):
    factory = {**OPS, **MIX_OPS}[name]
    op = factory(p=0.3, seed=1)
    applied = torch.cat([op.generate_parameters(1000, 8, 8)["apply"] for _ in range(4)])
    assert abs(applied.float().mean().item() - 0.3) < 0.03, "p is per row (0.3), not p² (0.09)"


@pytest.mark.parametrize("name", ALL + sorted(MIX_OPS))
@pytest.mark.parametrize("p", [-0.1, 1.5, "0.5"])
def test_bad_probability_named(name, p):
    factory = {**OPS, **MIX_OPS}[name]
    with pytest.raises(ValueError, match=f"p must be in \\[0, 1\\], got {p!r}"):
        factory(p=p)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_images_named(backend):
    aug = Compose([Rotate(10)], backend=backend, seed=0)
    with pytest.raises(ValueError, match=r"rank 4 .* got rank 3 with shape \(3, 8, 8\)"):
        aug(torch.zeros(3, 8, 8, dtype=torch.uint8))
    with pytest.raises(TypeError, match="uint8 or float .* got dtype torch.int32"):
        aug(torch.zeros(1, 3, 8, 8, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\], got values in \[0, 255\]"):
        aug(torch.full((1, 3, 8, 8), 255.0).index_fill_(3, torch.tensor([0]), 0.0))
    with pytest.raises(TypeError, match="must be a torch.Tensor, got ndarray"):
        import numpy as np
        aug(np.zeros((1, 3, 8, 8), np.uint8))


def test_the_opencv_backend_is_safe_to_call_from_several_threads_and_warps_half_floats():
    """Red team s43, once OpenCV became the default on the CPU: two threads calling one Compose
    shared its float32 workspace and got wrong pixels (17 of 200 calls, no error), and a custom
    op returning float16 or bfloat16 before a warp made OpenCV raise (Kornia warped them)."""
    import threading

    from streamaug.ops import IntensityOp

    aug = Compose([BrightnessContrast(p=1.0), Rotate(20)], backend="opencv", seed=0)
    xs = [images(n=32, h=64, w=64, seed=s) for s in range(2)]
    params = []
    for x in xs:
        aug(x)
        params.append(aug.last_params)
    want = [aug(x, params=p) for x, p in zip(xs, params)]
    wrong = [0, 0]

    def work(i):
        for _ in range(100):
            wrong[i] += not torch.equal(aug(xs[i], params=params[i]), want[i])
    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == [0, 0]

    class Lower(IntensityOp):
        def __init__(self, dtype, back: bool):
            super().__init__(p=1.0)
            self.dtype, self.back = dtype, back

        def _draw(self, n, height, width):
            return {}

        def apply_torch(self, x, params):
            return x.to(self.dtype).to(torch.float32) if self.back else x.to(self.dtype)

    for dtype in (torch.float16, torch.bfloat16):       # warped as the float32 of those values
        lowered, by_hand = (Compose([Lower(dtype, back), Rotate(20)], backend="opencv", seed=0)(xs[0])
                            for back in (False, True))
        assert lowered.dtype == torch.uint8 and torch.equal(lowered, by_hand), dtype


def test_opencv_backend_refuses_images_off_the_cpu():
    aug = Compose([Rotate(10)], backend="opencv", seed=0)
    with pytest.raises(ValueError, match="backend='opencv' runs on CPU tensors, got images on meta"):
        aug(torch.zeros(2, 3, 8, 8, dtype=torch.uint8, device="meta"))


def test_the_default_backend_runs_cpu_batches_on_opencv_and_the_rest_on_kornia(monkeypatch):
    """Perf red team (s42): the default was Kornia, 0.42x OpenCV's rate end to end at 224² and
    512² on the CPU (benchmarks/results/cpu-rounds-amd, cpu-jpg512), so the README's example ran
    slower than DataLoader + albumentations. ``"auto"`` takes OpenCV for CPU tensors where it
    imports, Kornia elsewhere, each bit for bit what that backend gives."""
    import pickle

    import streamaug.ops.compose as compose_module

    ops = lambda: [Flip(p=0.5), Rotate(30), Shear(x=15, y=15), GaussianNoise(0.05)]      # noqa: E731
    x = images(n=8)
    auto = Compose(ops(), seed=3)
    assert auto.backend == "auto" and auto.backend_for(x) == "opencv"
    assert auto.backend_for(torch.zeros(1, 3, 8, 8, device="meta")) == "kornia"
    y = auto(x)
    for backend in ("opencv", "kornia"):
        assert Compose(ops(), backend=backend).backend_for(x) == backend
    assert torch.equal(Compose(ops(), backend="opencv")(x, params=auto.last_params), y)
    assert not torch.equal(Compose(ops(), backend="kornia")(x, params=auto.last_params), y)   # (so the above tells)
    assert torch.equal(pickle.loads(pickle.dumps(auto))(x, params=auto.last_params), y)
    old = Compose.__new__(Compose)                 # unpickling a Compose pickled before "auto" (red team s43)
    old.__setstate__({k: v for k, v in Compose(ops(), backend="opencv").__dict__.items() if k != "_runners"}
                     | {"_runner": None})
    assert torch.equal(old(x, params=auto.last_params), y)
    monkeypatch.setattr(compose_module, "opencv_installed", lambda: False)     # no OpenCV: Kornia's numbers
    assert auto.backend_for(x) == "kornia"
    assert torch.equal(auto(x, params=auto.last_params), Compose(ops(), backend="kornia")(x, params=auto.last_params))


@pytest.mark.parametrize("make,message", [
    (lambda: GaussianNoise(-0.1), "std must be >= 0, got -0.1"),
    (lambda: GaussianNoise((0.2, 0.1)), "low <= high"),
    (lambda: Rotate("a lot"), "degrees must be a number or a"),
    (lambda: Rotate(-5), "degrees must be >= 0, got -5"),
    (lambda: MixUp(alpha=0), "alpha must be a finite number > 0, got 0"),
    (lambda: Compose([Rotate(5)], backend="cv2"), "backend must be one of .* got 'cv2'"),
    (lambda: RandomResizedCrop(224), r"got 224: RandomResizedCrop's first argument is scale=\(low, high\).*"
                                     r"torchvision's RandomResizedCrop\(size\) is resize=size"),     # (newcomer s33)
    (lambda: RandomResizedCrop((0.5, 2.0)), r"scale must lie in \(0, 1\], got \(0.5, 2.0\)$"),
])
def test_bad_arguments_named(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_compose_refuses_mix_ops_and_wrong_params():
    with pytest.raises(TypeError, match="pass mix ops as the loader's mixup="):
        Compose([MixUp()])
    aug = Compose([Rotate(5)], seed=0)
    with pytest.raises(ValueError, match="one dict per op"):
        aug(images(), params=[{}, {}])


@pytest.mark.parametrize("name", ALL)
def test_state_dict_round_trip(name):
    op = OPS[name](seed=3)
    op.generate_parameters(4, 8, 8)
    state = op.state_dict()
    a = op.generate_parameters(8, 8, 8)
    op.load_state_dict(state)
    b = op.generate_parameters(8, 8, 8)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("backend,device", list(grid()))
@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_input_is_never_modified(name, backend, device, dtype):
    x = images(dtype=dtype, device=device)
    before = x.clone()
    run(OPS[name](), x, backend)
    assert torch.equal(x, before)


@pytest.mark.parametrize("make,message", [
    (lambda: Rotate(float("nan")), "degrees must be finite"),
    (lambda: Shear(x=float("nan")), "shear x must be finite"),
    (lambda: Translate(float("inf")), "translate x must be finite"),
    (lambda: GaussianNoise(float("nan")), "std must be finite"),
    (lambda: BrightnessContrast(float("nan")), "brightness must be a finite number >= 0, got nan"),
    (lambda: RandomResizedCrop(scale=(float("nan"), 1)), "scale must be finite"),
    (lambda: RandomErasing(ratio=(0.3, float("inf"))), "ratio must be finite"),
    (lambda: MixUp(alpha=float("nan")), "alpha must be a finite number > 0, got nan"),
    (lambda: MixUp(alpha=float("inf")), "alpha must be a finite number > 0, got inf"),
    (lambda: Rotate(30, p=True), "p must be in"),
    (lambda: Rotate(True), "degrees must be a number or a"),
    (lambda: MixUp(0.2, num_classes=0), r"num_classes must be an int >= 1 \(or None: the loader passes its own\), got 0"),
    (lambda: MixUp(0.2, num_classes=2.5), "num_classes must be an int >= 1"),
    (lambda: MixUp(0.2, num_classes="10"), "num_classes must be an int >= 1"),
    (lambda: MixUp(0.2, num_classes=True), "num_classes must be an int >= 1"),
    (lambda: Compose([Rotate(5)], dali_threads=0), "dali_threads must be an int >= 1, got 0"),
    (lambda: Compose([Rotate(5)], dali_threads="2"), "dali_threads must be an int >= 1, got '2'"),
    (lambda: Compose([Rotate(5)], dali_threads=2.5), "dali_threads must be an int >= 1"),
])
def test_non_finite_and_bool_arguments_are_refused_naming_them(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_nan_pixels_are_refused():
    x = torch.rand(2, 3, 8, 8)
    x[1, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="float images must lie in \\[0, 1\\], got NaN values"):
        Compose([Rotate(10)], seed=0)(x)


def test_a_numpy_number_is_the_same_argument_as_a_python_number():
    import numpy as np

    assert BrightnessContrast(np.float32(0.25)).brightness == BrightnessContrast(0.25).brightness == (0.75, 1.25)
    assert BrightnessContrast(contrast=np.int64(0)).contrast == (1.0, 1.0)


def test_unseeded_ops_of_a_compose_draw_independent_numbers():
    aug = Compose([Flip(p=0.5), Rotate(30), Shear(x=15), GaussianNoise(0.05, p=0.5)])
    flip, rot, shear, noise = aug.generate_parameters(512, 8, 8)
    assert not torch.equal(flip["apply"], noise["apply"])
    corr = np.corrcoef(rot["degrees"].numpy() / 30, shear["shear_x"].numpy() / 15)[0, 1]
    assert abs(corr) < 0.2 and aug.seed is None


def test_a_compose_refuses_the_state_of_another_pipeline():
    two, three = Compose([Flip(), Rotate(5)], seed=0), Compose([Flip(), Rotate(5), Shear(5)], seed=0)
    with pytest.raises(ValueError, match="this Compose has 3 ops; the state has 2"):
        three.load_state_dict(two.state_dict())
    with pytest.raises(ValueError, match=r"the state is of ops \['Flip', 'Rotate'\], this Compose has \['Flip', 'Shear'\]"):
        Compose([Flip(), Shear(5)], seed=0).load_state_dict(two.state_dict())
    other = Compose([Flip(), Rotate(5)], seed=1)
    other.load_state_dict(two.state_dict())
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(other(x), two(x))


@pytest.mark.parametrize("backend", ["kornia", "opencv"])
def test_float64_images_are_processed_in_float64(backend):
    x = torch.rand(4, 3, 9, 7, dtype=torch.float64)
    flipped = Compose([Flip(p=1.0)], backend=backend, seed=0)(x)
    assert flipped.dtype == torch.float64 and torch.equal(flipped, x.flip(-1))
    mixed, _ = MixUp(0.2, p=0.0, seed=0)(x, torch.arange(4) % 2, num_classes=2)
    assert torch.equal(mixed, x)


@pytest.mark.dali                       # (compares DALI with the other backends)
@pytest.mark.parametrize("value,level", [(0.5, 128), (0.999, 255), (0.2, 51)])
def test_erasing_fills_the_same_level_on_every_backend(value, level):
    x = torch.full((2, 3, 16, 16), 7, dtype=torch.uint8)
    ref = Compose([RandomErasing(value=value, p=1.0)], backend="kornia", seed=0)
    want = ref(x)
    assert set(want.unique().tolist()) == {7, level}
    for backend in ("dali", "opencv"):
        assert torch.equal(Compose([RandomErasing(value=value, p=1.0)], backend=backend, seed=0)(
            x, params=ref.last_params), want), backend


def test_opencv_warps_float64_as_exactly_as_float32():
    """OpenCV's own float64 warp quantizes coordinates (5/255 off); float64 images are warped in float32."""
    x = torch.rand(4, 3, 64, 64, dtype=torch.float64)
    ref = Compose([Shear(x=20, y=10)], backend="kornia", seed=0)
    want = ref(x)
    got = Compose([Shear(x=20, y=10)], backend="opencv", seed=0)(x, params=ref.last_params)
    assert got.dtype == torch.float64 and (got - want)[..., 2:-2, 2:-2].abs().max() < 0.02 / 255


@pytest.mark.parametrize("backend", ["kornia", "dali", "opencv"])
def test_replayed_params_are_checked_and_taken_in_any_form(backend):
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    aug = Compose([Rotate(30)], backend=backend, seed=0)
    with pytest.raises(ValueError, match=r"Rotate params\['degrees'\] has 2 rows, the batch 4"):
        aug(x, params=[{"apply": torch.ones(4, dtype=torch.bool), "degrees": torch.zeros(2)}])
    same = aug(x, params=[{"apply": [1, 1, 1, 1], "degrees": torch.tensor(30.0)}])       # ints, a 0-d angle
    assert torch.equal(same, aug(x, params=[{"apply": torch.ones(4, dtype=torch.bool),
                                            "degrees": torch.full((4,), 30.0, dtype=torch.float64)}]))
    flip = Compose([Flip(p=1.0)], backend=backend, seed=0)
    assert torch.equal(flip(x, params=[{"apply": [True, False, True, False]}])[0], x[0].flip(-1))
    with pytest.raises(ValueError, match="not finite"):
        aug(x, params=[{"apply": [True] * 4, "degrees": [float("nan")] * 4}])


def test_a_compose_leaves_the_streams_of_the_ops_it_wraps_alone():
    a = Compose([Rotate(30)])
    a.generate_parameters(4, 8, 8)
    after_one = a.ops[0].state_dict()
    b = Compose(a.ops)                                   # wrapping must not rewind the op
    assert b.ops[0].state_dict() == after_one


@pytest.mark.parametrize("make,message", [
    (lambda: MixUp(label_rule="remix", kappa=float("nan"), class_counts=[5, 1]), "kappa must be a finite number"),
    (lambda: MixUp(label_rule="remix", tau=True, class_counts=[5, 1]), "tau must be in"),
    (lambda: MixUp(label_rule="remix", class_counts=[float("nan"), 1]), "class_counts must be"),
    (lambda: RandomErasing(value=True), "value must be a number in"),
    (lambda: Flip(horizontal=float("nan")), "horizontal must be a bool"),
])
def test_more_non_finite_and_bool_arguments_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_unseeded_ops_of_one_type_in_a_compose_draw_apart():
    """Used on its own (outside a loader, which seeds every op), a Compose of two fresh, unseeded
    ops of one type drew the same parameters for both: every image was turned by twice one angle."""
    aug = Compose([Rotate(30), Rotate(30), Flip(p=0.5), Flip(p=0.5)])
    first, second, flip_a, flip_b = aug.generate_parameters(64, 8, 8)
    assert not torch.equal(first["degrees"], second["degrees"])
    assert not torch.equal(flip_a["apply"], flip_b["apply"])
    one = Rotate(30)                                       # one op listed twice keeps its one stream
    twice = Compose([one, one])
    assert twice.ops[0].state_dict() == Rotate(30).state_dict()
    a, b = twice.generate_parameters(8, 8, 8)
    assert not torch.equal(a["degrees"], b["degrees"])


def test_a_mix_ops_class_count_is_not_overridden_silently():
    x, labels = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    assert MixUp(0.4, num_classes=6, seed=0)(x, labels)[1].shape == (4, 6)
    assert MixUp(0.4, seed=0)(x, labels, num_classes=5)[1].shape == (4, 5)
    assert MixUp(0.4, num_classes=5, seed=0)(x, labels, num_classes=5)[1].shape == (4, 5)
    with pytest.raises(ValueError, match=r"MixUp\(num_classes=10\) was called with num_classes=4"):
        MixUp(0.4, num_classes=10, seed=0)(x, labels, num_classes=4)


def test_parameters_given_as_numpy_arrays_or_lists_replay_too():
    x = torch.randint(0, 256, (6, 3, 12, 12), dtype=torch.uint8)
    aug = Compose([Flip(p=0.5), Rotate(30), GaussianNoise(0.05), RandomErasing(p=1.0)], seed=0)
    y = aug(x)
    as_numpy = [{k: v.numpy() for k, v in p.items()} for p in aug.last_params]
    assert torch.equal(aug(x, params=as_numpy), y)
    import json
    as_json = json.loads(json.dumps([{k: v.tolist() for k, v in p.items()} for p in aug.last_params]))
    assert torch.equal(aug(x, params=as_json), y)
