"""k nearest neighbours with ``torch.cdist`` on whatever device the reservoir is on.

On the CPU the distances are computed on one intra-op thread. MKL's matrix product
(``cdist``'s path for more than 25 rows) can round differently with another thread
count (30×2000 queries×pool at 1024 dims differed by up to 0.004 between 1 and 2
threads here), and the balancer must pick the same neighbours in a one-thread
reading worker as in a main process with several (``streamaug.loader.worker_stages``).
"""
from __future__ import annotations

import torch

from streamaug.core.threads import IntraOpThreads


def nearest(queries: torch.Tensor, pool: torch.Tensor, k: int, exclude: torch.Tensor | None = None,
            chunk: int = 1024) -> torch.Tensor:
    """Indices (m, k) of the ``k`` nearest ``pool`` rows to each query row.

    ``exclude[i]`` (an index into ``pool``) is never returned for query ``i``: this
    is how a point's own entry is dropped (asking for k+1 and dropping the first
    hit is wrong when the reservoir holds exact duplicates).
    """
    with IntraOpThreads(1):
        return _nearest(queries, pool, k, exclude, chunk)


def _nearest(queries, pool, k, exclude, chunk) -> torch.Tensor:
    out = []
    for s in range(0, len(queries), chunk):
        d = torch.cdist(queries[s:s + chunk], pool)
        if exclude is not None:
            d[torch.arange(len(d), device=d.device), exclude[s:s + chunk]] = float("inf")
        out.append(d.topk(k, dim=1, largest=False).indices)
    return torch.cat(out) if out else torch.empty((0, k), dtype=torch.int64, device=pool.device)


def nearest_by_distance(dist_rows: torch.Tensor, k: int, exclude: torch.Tensor) -> torch.Tensor:
    """Like :func:`nearest` but from precomputed distance rows (m, n)."""
    d = dist_rows.clone()
    d[torch.arange(len(d), device=d.device), exclude] = float("inf")
    return d.topk(k, dim=1, largest=False).indices
