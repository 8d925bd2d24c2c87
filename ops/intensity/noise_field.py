"""The standard-normal noise field ``GaussianNoise`` adds: a pure function of a seed.

Each value is ``A + B``: two independent draws from ``HALF_LEVELS``, the 256 conditional
means of N(0, ½)'s 256 equiprobable bins (rescaled to variance exactly ½, and symmetric, so
the mean is exactly 0). Drawing one is drawing a random byte and looking it up. Added to a
uint8 batch (the OpenCV backend's kernel, ``opencv_uint8``) that took 0.66 CPU ms per 224²
row against 1.31 ms with a torch ``normal_`` field (1.96× the rows/s, median of paired
repeats, one thread); in float32, 1.13× (``benchmarks/noise_field_speed.py``,
``benchmarks/results/noise_field_speed_cpu.json``). The sum has variance 1, a fourth
moment of 2.98 (a Gaussian's is 3), 32,769 distinct values (from 65,536 equally likely
pairs) up to ±4.2 and a largest CDF gap from N(0, 1) of 1/512 (tested in
``tests/test_noise_field.py``): for augmentation noise, a Gaussian in all but the far tails.

The field is drawn in chunks of about ``CHUNK_ELEMENTS`` (whole rows). Chunk ``i`` takes
its bytes from its own generator, seeded with ``derive_seed(seed, i)``: on the CPU
NumPy's SFC64 (``random_raw``), on a GPU a torch generator on that device, so a field
replays exactly on its device and differs between devices, as torch's own samplers do. On
the CPU the chunks run on a thread pool of torch's intra-op size; the result does not
depend on the number of threads.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from streamaug.core.seeding import derive_seed

CHUNK_ELEMENTS = 1 << 21
_pool: ThreadPoolExecutor | None = None
_levels: dict[torch.device, torch.Tensor] = {}


def _half_levels() -> np.ndarray:
    """The 256 values of one half-draw, float32, ascending; ``levels[255 - k] == -levels[k]``."""
    edges = torch.special.ndtri(torch.arange(128, 257, dtype=torch.float64) / 256)   # 0 … +inf
    density = torch.exp(-0.5 * edges ** 2) / math.sqrt(2 * math.pi)
    upper = (density[:-1] - density[1:]) * 256          # E[Z | bin] for the 128 bins above 0
    upper *= math.sqrt(0.5 / float((upper ** 2).mean()))
    upper = upper.float().numpy()
    return np.concatenate([-upper[::-1], upper])


HALF_LEVELS = _half_levels()


def levels(device: torch.device) -> torch.Tensor:
    """``HALF_LEVELS`` as a tensor on ``device`` (kept, one per device)."""
    if device not in _levels:
        _levels[device] = torch.from_numpy(HALF_LEVELS).to(device)
    return _levels[device]


def row_chunks(shape: torch.Size) -> list[slice]:
    """The row ranges the field is drawn in: whole rows, about ``CHUNK_ELEMENTS`` each."""
    n = shape[0] if len(shape) else 0
    per_row = max(1, torch.Size(shape[1:]).numel()) if n else 1
    step = max(1, CHUNK_ELEMENTS // per_row)
    return [slice(s, min(s + step, n)) for s in range(0, n, step)]


def chunk_bytes(seed: int, i: int, rows: int, per_row: int, device: torch.device) -> torch.Tensor:
    """Chunk ``i``'s random bytes, uint8 ``(2, rows, per_row)``: ``[0]`` picks each value's
    ``A``, ``[1]`` its ``B``."""
    if device.type != "cpu":
        return device_bytes(seed, i, rows, per_row, device)
    n = 2 * rows * per_row
    raw = np.random.SFC64(derive_seed(seed, i)).random_raw(-(-n // 8))
    return torch.from_numpy(raw.view(np.uint8)[:n].reshape(2, rows, per_row))


def device_bytes(seed: int, i: int, rows: int, per_row: int, device: torch.device) -> torch.Tensor:
    """:func:`chunk_bytes` off the CPU: a torch generator on ``device`` (any device, the CPU
    included, which is how the tests run this path without a GPU)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(derive_seed(seed, i))
    return torch.randint(0, 256, (2, rows, per_row), dtype=torch.uint8, device=device, generator=gen)


def draw_chunk(out: torch.Tensor, seed: int, i: int) -> torch.Tensor:
    """Fill ``out`` (float32, chunk ``i``'s rows) with the field's values; returns ``out``."""
    rows = out.shape[0] if out.ndim else 1
    per_row = out.numel() // max(rows, 1)
    picks = chunk_bytes(seed, i, rows, per_row, out.device)
    table = levels(out.device)
    flat = out.view(-1) if out.is_contiguous() else torch.empty(out.numel(), device=out.device, dtype=torch.float32)
    torch.index_select(table, 0, picks[0].reshape(-1).int(), out=flat)
    flat += table.index_select(0, picks[1].reshape(-1).int())
    return out if flat.data_ptr() == out.data_ptr() else out.copy_(flat.view(out.shape))


def run_chunks(fill, count: int, device: torch.device) -> None:
    """``fill(i)`` for every chunk; on the CPU over a thread pool of torch's intra-op size.
    Results never depend on the number of threads."""
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
    """The field of ``shape`` (float32 on ``device``) for ``seed``."""
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
