"""One pure function that derives every seed in the library.

Library code never touches global random state. A loader takes one ``seed``;
each consumer (shard shuffle, shuffle buffer, augmentation, balancer) derives
its own from ``(seed, purpose, epoch, rank, worker)``, so that a result
depends only on those numbers and never on process ids, time or call order.

>>> derive_seed(0, "shuffle", 1, 0, 2) == derive_seed(0, "shuffle", 1, 0, 2)
True
>>> derive_seed(0, "shuffle", 1) != derive_seed(0, "shuffle", 2)
True
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch

_MASK63 = (1 << 63) - 1


def derive_seed(seed: int, *parts: int | str) -> int:
    """Hash ``seed`` and ``parts`` into a non-negative 63-bit integer.

    Stable across processes, platforms and Python versions (unlike ``hash``).
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {seed!r}")
    text = "/".join(str(p) for p in (int(seed), *parts))
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & _MASK63


def numpy_generator(seed: int, *parts: int | str) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(derive_seed(seed, *parts)))


def torch_generator(seed: int, *parts: int | str, device: str | torch.device = "cpu") -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(derive_seed(seed, *parts))
    return gen
