"""DALI backend: the same stages as one NVIDIA DALI pipeline fed by ``external_source``.

Runs on the GPU (``device_id`` = the images' CUDA device) or, for CPU tensors,
as a CPU-only pipeline with ``device_id=None``. The fused warp is
``fn.warp_affine`` with ``inverse_map=True`` (its default): our forward matrix
``M`` (integer pixel centres) is inverted and moved to DALI's convention of
pixel centres at ``+0.5``: ``T(0.5) · M⁻¹ · T(−0.5)``.

Nothing in the graph draws randomness: every random quantity is an op parameter
drawn by the op (on the host) and fed per call, and per-pixel fields (Gaussian
noise) are drawn with torch on the images' device from a parameter seed. A call
is therefore a pure function of its parameters: it replays exactly and resumes
exactly, whatever pipelines were built before.
"""
from __future__ import annotations

import numpy as np
import torch

from ..geometric.affine_matrix import affine_inverse
from .dali_pipelines import PIPELINES, capacity_for, dali_device_id, dali_to_torch


HALF = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]], dtype=np.float64)
# The asynchronous, pipelined executor: the only one whose run() takes a CUDA stream. (The
# legacy one, exec_async=False and exec_pipelined=False, returns host-synchronous outputs.)
EXECUTOR = {"exec_async": True, "exec_pipelined": True}
MINUS_HALF = np.array([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1]], dtype=np.float64)


def dali_matrices(m: np.ndarray) -> list[np.ndarray]:
    """Forward (N,3,3) integer-centre matrices → DALI inverse 2×3 half-pixel matrices."""
    inv = HALF @ affine_inverse(m) @ MINUS_HALF
    return list(inv[:, :2].astype(np.float32))


class DaliRunner:
    """Runs a ``Compose`` as one DALI pipeline per (stages, dtype, device, batch capacity)."""

    def __init__(self, num_threads: int = 2):
        self.num_threads = num_threads
        self._token = object()             # this runner's pipelines in the shared cache

    def _build(self, compose, uint8: bool, device_id: int | None, capacity: int):
        from nvidia.dali import fn, pipeline_def, types
        from nvidia.dali import math as dali_math

        gpu = device_id is not None

        @pipeline_def(batch_size=capacity, num_threads=self.num_threads, device_id=device_id,
                      prefetch_queue_depth=1, seed=0, **EXECUTOR)
        def build():
            x = fn.external_source(name="images", layout="HWC", device="gpu" if gpu else "cpu",
                                   dtype=types.UINT8 if uint8 else types.FLOAT)
            for s, (kind, indices) in enumerate(compose.stages):
                if kind == "warp":
                    m = fn.external_source(name=f"m{s}", dtype=types.FLOAT)
                    x = fn.warp_affine(x, matrix=m, fill_value=0, interp_type=types.INTERP_LINEAR)
                else:
                    op = compose.ops[indices[0]]
                    args = {a: fn.external_source(name=f"a{s}_{a}", dtype=types.FLOAT)
                            for a in op.dali_argument_names}
                    args.update({f: fn.external_source(name=f"a{s}_{f}", dtype=types.FLOAT, layout="HWC",
                                                       device="gpu" if gpu else "cpu")
                                 for f in op.dali_field_names})
                    x = op.dali_apply(fn, x, args, uint8)
                    if not op.dali_keeps_dtype:
                        x = fn.cast(x, dtype=types.UINT8 if uint8 else types.FLOAT)
                    if not uint8 and s != len(compose.stages) - 1:
                        x = dali_math.clamp(x, 0.0, 1.0)     # uint8 saturates; float is clipped alike
            return x

        return build()

    def __call__(self, compose, images: torch.Tensor, params) -> torch.Tensor:
        n, c, h, w = images.shape
        uint8 = images.dtype == torch.uint8
        device_id = dali_device_id(images.device)
        capacity = capacity_for(n)
        key = (self._token, tuple((k, tuple(i)) for k, i in compose.stages), uint8, device_id, capacity)
        pipe = PIPELINES.get(key, lambda: self._build(compose, uint8, device_id, capacity))
        src = images if uint8 else images.float()
        hwc = src.permute(0, 2, 3, 1).contiguous()
        try:
            pipe.feed_input("images", hwc if device_id is not None else hwc.numpy())
            for s, (kind, indices) in enumerate(compose.stages):
                if kind == "warp":
                    pipe.feed_input(f"m{s}", dali_matrices(compose.fused_array(indices, params, h, w)))
                    continue
                op = compose.ops[indices[0]]
                for name, values in op.dali_arguments(params[indices[0]]).items():
                    pipe.feed_input(f"a{s}_{name}", [np.asarray(v, np.float32) for v in values])
                for name, field in op.dali_fields(params[indices[0]], hwc.shape, images.device, uint8).items():
                    pipe.feed_input(f"a{s}_{name}", field if device_id is not None else field.numpy())
            # on the images' stream: DALI's work is ordered after what was queued before it, and the
            # host does not wait for either (without a stream, run() is host-synchronous)
            (out,) = pipe.run(torch.cuda.current_stream(images.device) if device_id is not None else None)
        except Exception:
            PIPELINES.discard(key)           # DALI leaves a pipeline unusable after an error
            raise
        result = dali_to_torch(out, src.dtype, images.device).permute(0, 3, 1, 2).contiguous()
        return result if uint8 else result.clamp_(0, 1).to(images.dtype)
