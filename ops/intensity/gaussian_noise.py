"""Additive Gaussian noise, independent per row and pixel, on the [0, 1] scale."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from streamaug.loader.seeding import derive_seed

from ..base import IntensityOp, Params, check_range


CHUNK_ELEMENTS = 1 << 21
_pool: ThreadPoolExecutor | None = None


def gaussian_field(shape: torch.Size, seed: int, device: torch.device) -> torch.Tensor:
    """Standard normal noise of ``shape``, a pure function of ``seed``.

    Drawn in chunks of about ``CHUNK_ELEMENTS`` (whole rows), chunk ``i`` from its own
    generator seeded with ``derive_seed(seed, i)``; on the CPU the chunks run on
    a thread pool (torch's ``normal_`` uses one core), and the result does not
    depend on the number of threads.
    """
    out = torch.empty(shape, device=device, dtype=torch.float32)
    per_row = max(1, out[0].numel()) if len(out) else 1
    chunks = list(torch.split(out, max(1, CHUNK_ELEMENTS // per_row)))

    def fill(i: int) -> None:
        gen = torch.Generator(device=device)
        gen.manual_seed(derive_seed(seed, i))
        chunks[i].normal_(0.0, 1.0, generator=gen)

    threads = torch.get_num_threads()
    if device.type != "cpu" or threads < 2 or len(chunks) < 2:
        for i in range(len(chunks)):
            fill(i)
        return out
    global _pool
    if _pool is None or _pool._max_workers != threads:  # noqa: SLF001
        _pool = ThreadPoolExecutor(threads, thread_name_prefix="streamaug-noise")
    list(_pool.map(fill, range(len(chunks))))
    return out


class GaussianNoise(IntensityOp):
    """Add ``N(0, σ²)`` per pixel, ``σ ~ U(std)`` per row (``std`` on the [0, 1]
    scale, a number means that exact σ), then clip to the valid range.

    The noise field is drawn on the images' device from ``params["noise_seed"]``,
    so a call replays exactly on the Kornia backend. DALI draws its own field
    (``fn.noise.gaussian``) from the pipeline's seed: same σ per row, same
    distribution, a different field.
    """

    def __init__(self, std=0.05, p: float = 1.0, seed: int | None = None):
        super().__init__(p, seed)
        self.std = check_range("std", std)
        if self.std[0] < 0:
            raise ValueError(f"std must be >= 0, got {std!r}")

    def _draw(self, n: int, height: int, width: int) -> Params:
        return {"std": torch.from_numpy(self.rng.uniform(*self.std, n)).float(),
                "noise_seed": torch.tensor(int(self.rng.integers(0, 2**62)), dtype=torch.int64)}

    def row_std(self, params: Params) -> torch.Tensor:
        return torch.where(params["apply"], params["std"], torch.zeros_like(params["std"]))

    def apply_torch(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        sigma = self.row_std(params).to(x.device)
        if not bool((sigma > 0).any()):
            return x
        noise = gaussian_field(x.shape, int(params["noise_seed"]), x.device)
        return x.addcmul_(noise, sigma.view(-1, 1, 1, 1).to(x.dtype)) if x.is_floating_point() else x

    dali_argument_names = ("stddev",)

    def dali_arguments(self, params: Params) -> dict[str, list[np.ndarray]]:
        return {"stddev": [np.float32(s) for s in self.row_std(params).tolist()]}

    def dali_apply(self, fn, images, arguments: dict, uint8: bool):
        scale = 255.0 if uint8 else 1.0
        return fn.noise.gaussian(images, stddev=arguments["stddev"] * scale)
