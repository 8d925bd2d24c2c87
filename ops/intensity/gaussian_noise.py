"""Additive Gaussian noise, independent per row and pixel, on the [0, 1] scale."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch

from streamaug.core.seeding import derive_seed
from streamaug.core.transfer import to_device

from ..base import IntensityOp, Params, check_range


CHUNK_ELEMENTS = 1 << 21
_pool: ThreadPoolExecutor | None = None


def row_chunks(shape: torch.Size) -> list[slice]:
    """The row ranges the field is drawn in: whole rows, about ``CHUNK_ELEMENTS`` each."""
    n = shape[0] if len(shape) else 0
    per_row = max(1, torch.Size(shape[1:]).numel()) if n else 1
    step = max(1, CHUNK_ELEMENTS // per_row)
    return [slice(s, min(s + step, n)) for s in range(0, n, step)]


def draw_chunk(out: torch.Tensor, seed: int, i: int) -> torch.Tensor:
    gen = torch.Generator(device=out.device)
    gen.manual_seed(derive_seed(seed, i))
    return out.normal_(0.0, 1.0, generator=gen)


def run_chunks(fill, count: int, device: torch.device) -> None:
    """``fill(i)`` for every chunk; on the CPU over a thread pool of torch's intra-op size
    (torch's ``normal_`` uses one core). Results never depend on the number of threads."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads < 2 or count < 2:
        for i in range(count):
            fill(i)
        return
    global _pool
    if _pool is None or _pool._max_workers != threads:  # noqa: SLF001
        _pool = ThreadPoolExecutor(threads, thread_name_prefix="streamaug-noise")
    list(_pool.map(fill, range(count)))


def gaussian_field(shape: torch.Size, seed: int, device: torch.device) -> torch.Tensor:
    """Standard normal noise of ``shape``, a pure function of ``seed``.

    Drawn in chunks of about ``CHUNK_ELEMENTS`` (whole rows), chunk ``i`` from its own
    generator seeded with ``derive_seed(seed, i)``; on the CPU the chunks run on
    a thread pool, and the result does not depend on the number of threads.
    """
    out = torch.empty(shape, device=device, dtype=torch.float32)
    chunks = row_chunks(out.shape)
    run_chunks(lambda i: draw_chunk(out[chunks[i]], seed, i), len(chunks), out.device)
    return out


def add_gaussian_field_(x: torch.Tensor, sigma: torch.Tensor, seed: int) -> torch.Tensor:
    """``x += sigma[row] * gaussian_field(x.shape, seed)`` in place, without the whole field
    in memory: each chunk is drawn into a chunk-sized buffer and added while it is in cache
    (the same numbers as ``gaussian_field``). ``x``: float32 on the CPU; ``sigma``: (N,)."""
    chunks = row_chunks(x.shape)
    sigma = sigma.to(x.dtype).view(-1, *([1] * (x.ndim - 1)))

    def fill(i: int) -> None:
        rows = chunks[i]
        noise = draw_chunk(torch.empty(x[rows].shape, dtype=torch.float32), seed, i)
        x[rows].addcmul_(noise, sigma[rows])
    run_chunks(fill, len(chunks), x.device)
    return x


class GaussianNoise(IntensityOp):
    """Add ``N(0, σ²)`` per pixel, ``σ ~ U(std)`` per row (``std`` on the [0, 1]
    scale, a number means that exact σ), then clip to the valid range.

    The noise field is drawn on the images' device from ``params["noise_seed"]``
    (``gaussian_field``), on both backends: the DALI pipeline is fed the same field
    and adds it. A call therefore replays exactly on either backend.
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
        sigma = self.row_std(params)
        if not bool((sigma > 0).any()):
            return x
        if x.device.type == "cpu" and x.dtype == torch.float32 and x.is_contiguous():
            return add_gaussian_field_(x, sigma, int(params["noise_seed"]))
        noise = gaussian_field(x.shape, int(params["noise_seed"]), x.device)
        return x.addcmul_(noise, to_device(sigma, x.device).view(-1, 1, 1, 1).to(x.dtype))

    dali_field_names = ("noise",)

    def dali_fields(self, params: Params, shape_nhwc: torch.Size, device: torch.device,
                    uint8: bool) -> dict[str, torch.Tensor]:
        n, h, w, c = shape_nhwc
        sigma = self.row_std(params) * (255.0 if uint8 else 1.0)
        field = gaussian_field(torch.Size((n, c, h, w)), int(params["noise_seed"]), device)
        field.mul_(to_device(sigma, device).view(-1, 1, 1, 1))
        return {"noise": field.permute(0, 2, 3, 1).contiguous()}

    def dali_apply(self, fn, images, arguments: dict, uint8: bool):
        from nvidia.dali import types

        noisy = images + arguments["noise"]
        return fn.cast(noisy, dtype=types.UINT8) if uint8 else noisy     # the cast saturates
