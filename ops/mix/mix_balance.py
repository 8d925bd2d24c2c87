"""Mixup that respects class balance: who a row is mixed with, and whose label wins.

Two ideas from the imbalanced-learning literature, used by :class:`MixUp` and
:class:`CutMix` through their ``partners=`` and ``label_rule=`` options.

**Balanced-MixUp** (Galdran, Carneiro & González Ballester, MICCAI 2021). The
paper mixes a batch drawn instance-based (as the data comes) with a batch drawn
class-balanced: ``x̃ = (1 − λ)·x_I + λ·x_C``, ``λ ~ Beta(α, 1)`` with a small
``α`` (0.1-0.3), so the instance-based image dominates and the class-balanced
partner adds a little of every class (authors' code, ``train_lt_mxp.py``: one
``λ = np.random.beta(a=α, b=1)`` per batch). A stream has no second loader, so
here the partner of each row is drawn *within the batch*, class-balanced: a class
uniformly among those present, then a row of it uniformly (with replacement).
``λ`` is drawn per row, as every op here does. In this library's convention the
row's own weight is ``1 − λ_paper`` (see :func:`balanced_partners`).

**Remix** (Chou et al., ECCV-W 2020). Pixels are mixed with ``λ`` as usual, but the
label weight ``λ_y`` favours the minority class when the pair's class counts are
far apart: with ``n_i``, ``n_j`` the training counts of the row's and the
partner's classes,

* ``n_i / n_j ≥ κ`` and ``λ < τ``        → ``λ_y = 0`` (the label is the partner's, class j);
* ``n_i / n_j ≤ 1/κ`` and ``1 − λ < τ``  → ``λ_y = 1`` (the label is the row's, class i);
* otherwise                               → ``λ_y = λ``.

The paper suggests ``κ = 3``, ``τ = 0.5``.
"""
from __future__ import annotations

import numbers

import numpy as np
import torch

PARTNERS = ("permutation", "balanced")
LABEL_RULES = ("mix", "remix")


def balanced_partners(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each row, a partner row index: a class drawn uniformly among the classes
    in ``labels``, then one of its rows uniformly (with replacement)."""
    classes, inverse = np.unique(labels, return_inverse=True)
    rows_of = [np.flatnonzero(inverse == k) for k in range(len(classes))]
    pick_class = rng.integers(0, len(classes), len(labels))
    pick_row = rng.random(len(labels))
    sizes = np.array([len(r) for r in rows_of])[pick_class]
    return np.array([rows_of[k][j] for k, j in zip(pick_class, (pick_row * sizes).astype(np.int64))],
                    dtype=np.int64)


def remix_label_weight(lam: torch.Tensor, labels: torch.Tensor, partner_labels: torch.Tensor,
                       class_counts: torch.Tensor, kappa: float, tau: float) -> torch.Tensor:
    """Remix's ``λ_y`` per row from the pixel ``λ`` (the row's own weight) and the
    training counts of the row's and the partner's classes."""
    n_i = class_counts[labels].double()
    n_j = class_counts[partner_labels].double()
    lam = lam.double()
    ratio = n_i / n_j
    to_partner = (ratio >= kappa) & (lam < tau)
    to_self = (ratio <= 1.0 / kappa) & ((1.0 - lam) < tau)
    out = torch.where(to_partner, torch.zeros_like(lam), torch.where(to_self, torch.ones_like(lam), lam))
    return out.float()


def check_balance_options(partners: str, label_rule: str, kappa: float, tau: float, class_counts) -> torch.Tensor | None:
    """Validate the options; return the counts as a tensor (or None)."""
    if partners not in PARTNERS:
        raise ValueError(f"partners must be one of {PARTNERS}, got {partners!r}")
    if label_rule not in LABEL_RULES:
        raise ValueError(f"label_rule must be one of {LABEL_RULES}, got {label_rule!r}")
    if isinstance(kappa, bool) or not isinstance(kappa, numbers.Real) or not 1 <= kappa < float("inf"):
        raise ValueError(f"kappa must be a finite number >= 1, got {kappa!r}")
    if isinstance(tau, bool) or not isinstance(tau, numbers.Real) or not 0 <= tau <= 1:
        raise ValueError(f"tau must be in [0, 1], got {tau!r}")
    if class_counts is None:
        return None
    counts = torch.as_tensor(list(class_counts), dtype=torch.float64)
    if counts.ndim != 1 or len(counts) == 0 or not bool(torch.isfinite(counts).all()) or bool((counts < 0).any()):
        raise ValueError(f"class_counts must be non-negative per-class counts, got {list(class_counts)!r}")
    return counts.clamp_min(1.0)      # a class with no training sample counts as 1 (no division by 0)
