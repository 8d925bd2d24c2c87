"""The op contract: draw per-row parameters from an owned generator, then apply
them with a pure function; passing the parameters back in replays the call.

Three kinds:

* :class:`GeometricOp` returns a forward 3×3 matrix per row (source pixel →
  destination pixel, pixel centres at integer coordinates, ``x`` right, ``y``
  down). :class:`~streamaug.ops.Compose` multiplies consecutive ones and
  resamples once.
* :class:`IntensityOp` transforms float images in ``[0, 1]`` and describes
  itself to each backend.
* Mix ops (``MixUp``, ``CutMix``) also take labels and return soft targets.

Every row draws its own parameters and is applied with probability exactly
``p`` (one Bernoulli draw per row, recorded as ``params["apply"]``).
"""
from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from streamaug.core.seeding import derive_seed

Params = dict[str, torch.Tensor]


def check_probability(p: float) -> float:
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p!r}")
    return float(p)


def check_range(name: str, value, *, low: float | None = None, symmetric: bool = False) -> tuple[float, float]:
    """A number ``v`` means ``(-v, v)`` when ``symmetric``, else ``(v, v)``; a pair is ``(lo, hi)``."""
    if isinstance(value, bool) or (isinstance(value, (tuple, list)) and any(isinstance(v, bool) for v in value)):
        raise ValueError(f"{name} must be a number or a (low, high) pair, got {value!r}")
    if isinstance(value, numbers.Real):
        lo, hi = (-float(value), float(value)) if symmetric else (float(value), float(value))
        if symmetric and value < 0:
            raise ValueError(f"{name} must be >= 0, got {value!r}")
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, numbers.Real) for v in value):
        lo, hi = float(value[0]), float(value[1])
    else:
        raise ValueError(f"{name} must be a number or a (low, high) pair, got {value!r}")
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if lo > hi:
        raise ValueError(f"{name} must have low <= high, got {value!r}")
    if low is not None and lo < low:
        raise ValueError(f"{name} must be >= {low}, got {value!r}")
    return lo, hi


def checked_params(op, params: Params, n: int) -> Params:
    """Given parameters (a replay): every per-row entry has ``n`` rows, and ``apply`` is bool;
    numpy arrays and lists (a JSON round trip) become tensors (Python floats as float64)."""
    for name, value in params.items():
        rows = np.shape(value)
        if rows and rows[0] != n:
            raise ValueError(f"{type(op).__name__} params[{name!r}] has {rows[0]} rows, the batch {n}")
    if "apply" not in params:
        raise ValueError(f"{type(op).__name__} params need 'apply' (a bool per row)")
    tensors = {k: v if isinstance(v, torch.Tensor) else torch.from_numpy(np.asarray(v)) for k, v in params.items()}
    return {**tensors, "apply": torch.as_tensor(np.asarray(params["apply"], dtype=bool))}


def check_images(images) -> None:
    """NCHW, uint8 or float in [0, 1]; anything else is refused with the value named."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(f"images must have rank 4 (N, C, H, W), got rank {images.ndim} with shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return
    if not images.is_floating_point():
        raise TypeError(f"images must be uint8 or float in [0, 1], got dtype {images.dtype}")
    if images.numel():
        lo, hi = torch.aminmax(images)          # NaN propagates into both
        if not (lo >= 0 and hi <= 1):
            what = "NaN values" if bool(torch.isnan(lo)) else f"values in [{float(lo):.4g}, {float(hi):.4g}]"
            raise ValueError(f"float images must lie in [0, 1], got {what}")


def to_float(images: torch.Tensor) -> torch.Tensor:
    """A fresh float copy in [0, 1] (ops may then work in place; the input is never modified):
    float32, or float64 for float64 images (so a flip or identity of them stays exact)."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images.to(torch.float64 if images.dtype == torch.float64 else torch.float32, copy=True)


def from_float(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Back to ``like``'s dtype: uint8 rounds and saturates; float is clipped to [0, 1].
    ``values`` must be the backend's own buffer (it is reused)."""
    if like.dtype == torch.uint8:
        # round half up: floor(255·v + 0.5), saturated; three passes over the buffer
        return values.add_(0.5 / 255.0).mul_(255.0).clamp_(0.0, 255.0).to(torch.uint8)
    return values.clamp(0.0, 1.0).to(like.dtype)


def not_written(op, method: str) -> NotImplementedError:
    """The error for a method an op of one's own has not written (``Compose`` refuses such an op
    when it is built; this is what a direct call meets)."""
    return NotImplementedError(f"{type(op).__name__} has no {method}: an op of one's own writes it "
                               f"(docs/augmentation.md, 'Writing an op')")


class Op:
    """Base of every op: owns a ``numpy.random.Generator``; ``seed=None`` takes the
    loader's (or ``Compose``'s) derived seed."""

    kind = "op"

    def __init__(self, p: float = 1.0, seed: int | None = None):
        self.p = check_probability(p)
        self.seed = seed
        # unseeded: a fixed stream per op type until the loader (or Compose) reseeds it
        self.rng = np.random.Generator(np.random.PCG64(derive_seed(0 if seed is None else seed, type(self).__name__)))
        self.last_params: Params | None = None

    def manual_seed(self, seed: int) -> None:
        self.rng = np.random.Generator(np.random.PCG64(derive_seed(seed, type(self).__name__)))

    def generate_parameters(self, n: int, height: int, width: int) -> Params:
        """Draw ``apply`` (one Bernoulli(p) per row) and the op's own parameters, on the CPU."""
        params = {"apply": torch.from_numpy(self.rng.random(n) < self.p)}
        params.update(self._draw(n, height, width))
        return params

    def _draw(self, n: int, height: int, width: int) -> Params:
        return {}

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k not in ("rng", "last_params", "seed"))
        return f"{type(self).__name__}({args})"


class GeometricOp(Op):
    """An op that moves pixels: it draws its parameters in ``_draw`` and gives one forward 3×3
    matrix per row in ``_matrices``; every backend fuses and warps with them."""

    kind = "geometric"

    def missing_for(self, backend: str) -> str | None:
        """The method a subclass must write, and has not, for ``backend``; ``None`` if none."""
        return "_matrices" if type(self)._matrices is GeometricOp._matrices else None

    def matrix_array(self, params: Params, height: int, width: int) -> np.ndarray:
        """Forward 3×3 matrices, ``(N, 3, 3)`` float64 numpy (see ``affine_matrix``),
        the identity where ``apply`` is False."""
        m = np.asarray(self._matrices(params, height, width), dtype=np.float64)
        return np.where(np.asarray(params["apply"], dtype=bool).reshape(-1, 1, 1), m, np.eye(3))

    def matrices(self, params: Params, height: int, width: int) -> torch.Tensor:
        """:meth:`matrix_array` as a float64 CPU tensor (the type it always had; the backends use the numpy form)."""
        return torch.from_numpy(self.matrix_array(params, height, width))

    def _matrices(self, params: Params, height: int, width: int) -> np.ndarray:
        raise not_written(self, "_matrices")


class IntensityOp(Op):
    """An op that changes values: ``apply_torch`` (the Kornia and OpenCV backends) and
    ``dali_apply`` (the DALI graph) apply the parameters ``_draw`` drew."""

    kind = "intensity"
    # dali_apply returns the pipeline's type (uint8 or float32) itself; else its result is cast
    # back, saturating, as an arithmetic node (uint8 - int gives int32) would not be
    dali_keeps_dtype = False

    def missing_for(self, backend: str) -> str | None:
        """The method a subclass must write, and has not, for ``backend``; ``None`` if none."""
        name = "dali_apply" if backend == "dali" else "apply_torch"
        return name if getattr(type(self), name) is getattr(IntensityOp, name) else None

    def apply_torch(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        """``x``: float NCHW in [0, 1] on any device → same."""
        raise not_written(self, "apply_torch")

    dali_argument_names: tuple[str, ...] = ()      # per-sample scalars or small arrays, fed on the host
    dali_field_names: tuple[str, ...] = ()         # per-pixel NHWC float fields, fed on the images' device

    def dali_arguments(self, params: Params) -> dict[str, list[np.ndarray]]:
        """Per-sample arrays fed to the DALI pipeline, keyed by ``dali_argument_names``."""
        return {}

    def dali_fields(self, params: Params, shape_nhwc: torch.Size, device: torch.device,
                    uint8: bool) -> dict[str, torch.Tensor]:
        """Per-pixel float fields (``shape_nhwc``, on ``device``), keyed by ``dali_field_names``,
        on the images' value scale (0..255 for uint8)."""
        return {}

    def dali_apply(self, fn, images, arguments: dict, uint8: bool):
        """Build this op's DALI graph node from ``images`` and the fed ``arguments`` (data nodes,
        keyed like ``dali_argument_names`` and ``dali_field_names``); ``uint8`` says the pipeline's
        images are uint8 (0..255) rather than float (0..1)."""
        raise not_written(self, "dali_apply")
