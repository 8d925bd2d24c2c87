"""``Compose``: one declarative pipeline, fused, on the Kornia or the DALI backend.

>>> import torch
>>> from streamaug.ops import Compose, Flip, Rotate, Shear, GaussianNoise
>>> aug = Compose([Flip(p=0.5), Rotate(30), Shear(x=15), GaussianNoise(0.05)], seed=0)
>>> x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
>>> y = aug(x)                        # one affine warp per row, then noise
>>> torch.equal(aug(x, params=aug.last_params), y)     # replay
True

Consecutive geometric ops are multiplied into one 2×3 matrix per row and the
image is resampled once (less time, less blur than one pass per op). Rows whose
fused matrix is the identity are passed through untouched and rows whose matrix
is a pure flip are flipped by indexing, so both are bit-exact. Every intensity op's output
is clipped to the valid range before the next stage, on every backend (DALI's uint8
operators saturate; the others clip the same way), so the backends agree on chains.
"""
from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np
import torch

from streamaug.core.seeding import derive_seed
from streamaug.core.transfer import to_device

from .backends import opencv_installed
from .base import GeometricOp, IntensityOp, Op, Params, check_images, checked_params
from .geometric.affine_matrix import fuse_affine

BACKENDS = ("auto", "kornia", "dali", "opencv")


class Compose:
    """Apply ``ops`` in order on ``backend`` ("auto", "kornia", "dali" or "opencv").

    Args:
        ops: geometric and intensity ops (mix ops go to the loader's ``mixup=``).
        backend: ``"auto"`` (the default: OpenCV for CPU tensors when OpenCV is installed,
            Kornia otherwise, chosen on each call by where the images are), ``"kornia"``
            (torch tensors on any device), ``"dali"`` (a DALI pipeline, on the GPU when the
            images are there, else on the CPU) or ``"opencv"`` (CPU tensors: uint8 warps by
            ``cv2.warpAffine``, then the intensity ops in torch). On a 2-core CPU, end to end,
            OpenCV ran at 2.4× Kornia's rate at 224² and at 512², in less memory
            (``docs/augmentation.md``, "Which backend"); the two agree within 1/255 (2/255 after MixUp).
        seed: seeds every op that has no seed of its own; ``None`` lets the loader seed it. In
            a loader every op is reseeded per batch (:meth:`manual_seed`); an op's own seed is
            mixed into its stream there, so its draws depend on (its seed, epoch, rank, batch),
            never on which worker ran the batch.
        dali_threads: CPU threads for the DALI pipeline.
    """

    def __init__(self, ops: Sequence, backend: str = "auto", seed: int | None = None, dali_threads: int = 2):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if isinstance(dali_threads, bool) or not isinstance(dali_threads, numbers.Integral) or dali_threads < 1:
            raise ValueError(f"dali_threads must be an int >= 1, got {dali_threads!r}")
        ops = list(ops)
        for op in ops:
            if not isinstance(op, (GeometricOp, IntensityOp)):
                raise TypeError(f"Compose takes geometric and intensity ops, got {op!r}"
                                + (" (pass mix ops as the loader's mixup=)" if getattr(op, "kind", "") == "mix" else ""))
        for op in ops:
            missing = op.missing_for("kornia" if backend == "auto" else backend)   # (opencv needs what kornia does)
            if missing:
                raise TypeError(f"{type(op).__name__} has no {missing}, which backend={backend!r} runs; write it"
                                + (", or use another backend" if missing != "_matrices" else ""))
        self.ops, self.backend, self.seed = ops, backend, seed
        self.stages = self._stages(ops)
        self.last_params: list[Params] | None = None
        self._runners: dict = {}
        self.dali_threads = int(dali_threads)
        if seed is not None:
            self._seed_ops(seed, own_too=False)
        else:                               # unseeded: each op keeps its own stream (see _part_shared_streams)
            self._part_shared_streams()

    def _part_shared_streams(self) -> None:
        """Unseeded ops of one type start on one stream (``Op``): ``Compose([Rotate(10), Rotate(10)])``
        would turn every image by twice the same angle. A later op whose generator is in the state
        of an earlier, different op's gets a stream of its own position; the others, and an op
        listed twice, are left where they are (wrapping an op does not rewind it)."""
        seen: dict[str, Op] = {}
        for i, op in enumerate(self.ops):
            state = repr(op.rng.bit_generator.state)
            if op.seed is None and seen.get(state, op) is not op:
                op.manual_seed(derive_seed(0, "compose", i))
                state = repr(op.rng.bit_generator.state)
            seen.setdefault(state, op)

    @staticmethod
    def _stages(ops) -> list[tuple[str, list[int]]]:
        """Consecutive geometric ops form one ("warp", [indices]) stage; each intensity op its own."""
        stages: list[tuple[str, list[int]]] = []
        for i, op in enumerate(ops):
            if isinstance(op, GeometricOp) and stages and stages[-1][0] == "warp":
                stages[-1][1].append(i)
            else:
                stages.append(("warp" if isinstance(op, GeometricOp) else "intensity", [i]))
        return stages

    def manual_seed(self, seed: int) -> None:
        """Reseed every op from ``seed`` (the loader does, per batch); an op with a seed of its
        own gets a stream of both, so ops seeded alike still differ from batch to batch."""
        self._seed_ops(seed, own_too=True)

    def _seed_ops(self, seed: int, own_too: bool) -> None:
        for i, op in enumerate(self.ops):
            if op.seed is None:
                op.manual_seed(derive_seed(seed, "compose", i))
            elif own_too:
                op.manual_seed(derive_seed(seed, "compose", i, "op seed", op.seed))

    def generate_parameters(self, n: int, height: int, width: int) -> list[Params]:
        return [op.generate_parameters(n, height, width) for op in self.ops]

    def fused_array(self, indices: list[int], params: list[Params], height: int, width: int) -> np.ndarray:
        """Forward (source → destination) 3×3 matrices of the ops ``indices``, applied in order:
        ``(N, 3, 3)`` float64 numpy, computed on the host (see ``affine_matrix``); what the backends use."""
        return fuse_affine([self.ops[i].matrix_array(params[i], height, width) for i in indices])

    def fused_matrix(self, indices: list[int], params: list[Params], height: int, width: int) -> torch.Tensor:
        """:meth:`fused_array` as a float64 CPU tensor (the type it always had; the backends use the numpy form)."""
        return torch.from_numpy(self.fused_array(indices, params, height, width))

    def __call__(self, images: torch.Tensor, params: list[Params] | None = None) -> torch.Tensor:
        check_images(images)
        n, _, h, w = images.shape
        if params is None:
            params = self.generate_parameters(n, h, w)
        elif len(params) != len(self.ops):
            raise ValueError(f"params must hold one dict per op ({len(self.ops)}), got {len(params)}")
        else:
            params = [checked_params(op, p, n) for op, p in zip(self.ops, params)]
        self.last_params = params
        if n == 0 or not self.ops:
            return images
        untouched = ~np.logical_or.reduce([np.asarray(p["apply"], dtype=bool) for p in params])
        if untouched.all():
            return images
        out = self._backend_runner(self.backend_for(images))(self, images, params)
        if untouched.any():                 # rows no op applied to are returned as they came, bit for bit
            idx = to_device(torch.from_numpy(np.flatnonzero(untouched)), images.device)
            out[idx] = images[idx]
        return out

    def backend_for(self, images: torch.Tensor) -> str:
        """The backend a call on ``images`` runs: ``backend`` itself unless it is ``"auto"``."""
        if self.backend != "auto":
            return self.backend
        return "opencv" if images.device.type == "cpu" and opencv_installed() else "kornia"

    def _backend_runner(self, backend: str):
        if backend not in self._runners:
            if backend == "kornia":
                from .backends.kornia_backend import run_kornia
                self._runners[backend] = run_kornia
            elif backend == "opencv":
                try:
                    from .backends.opencv_backend import OpenCVRunner
                except ImportError as e:
                    raise ImportError(f"backend='opencv' needs OpenCV ({e}): pip install 'streamaug[opencv]'") from e
                self._runners[backend] = OpenCVRunner()
            else:
                from .backends.dali_backend import DaliRunner
                self._runners[backend] = DaliRunner(num_threads=self.dali_threads)
        return self._runners[backend]

    def state_dict(self) -> dict:
        return {"ops": [op.state_dict() for op in self.ops], "op_types": [type(op).__name__ for op in self.ops]}

    def load_state_dict(self, state: dict) -> None:
        """Refuses a state of another pipeline (other op count or types), naming the difference."""
        ops = state.get("ops") if isinstance(state, dict) else None
        if not isinstance(ops, list) or len(ops) != len(self.ops):
            raise ValueError(f"this Compose has {len(self.ops)} ops; the state has "
                             f"{len(ops) if isinstance(ops, list) else 'no ops list'}")
        mine = [type(op).__name__ for op in self.ops]
        if "op_types" in state and list(state["op_types"]) != mine:
            raise ValueError(f"the state is of ops {state['op_types']}, this Compose has {mine}")
        for op, s in zip(self.ops, ops):
            op.load_state_dict(s)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_runners"] = {}             # DALI pipelines are rebuilt where they are used
        return state

    def __setstate__(self, state: dict) -> None:
        state.pop("_runner", None)         # (pickled before f940b58: one runner, and backend never "auto")
        state.setdefault("_runners", {})
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"Compose({self.ops!r}, backend={self.backend!r})"
