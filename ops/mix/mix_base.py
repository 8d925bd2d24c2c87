"""What MixUp and CutMix share: λ per row, a partner per row, per-row probability
``p``, and soft targets mixed with the same pairing as the pixels.

Partners and label weights have balance-aware options (see ``mix_balance``):
``partners="balanced"`` (Balanced-MixUp: class-balanced partners, ``λ_paper ~ Beta(α, 1)``)
and ``label_rule="remix"`` (Remix: the label goes to the minority class of the pair).
"""
from __future__ import annotations

import numbers

import torch

from streamaug.core.transfer import to_device

from ..base import Op, Params, check_images, checked_params
from .mix_balance import balanced_partners, check_balance_options, remix_label_weight


def one_hot(labels: torch.Tensor, num_classes: int | None) -> torch.Tensor:
    if labels.ndim == 2:
        return labels.float()
    if labels.ndim != 1 or labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f"labels must be int (N,) or soft (N, C) targets, got {labels.dtype} {tuple(labels.shape)}")
    if num_classes is None:
        raise ValueError("num_classes is needed to turn int labels into soft targets (the loader passes it)")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes}), got range "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    return torch.nn.functional.one_hot(labels.long(), num_classes).float()


def _sample(values: torch.Tensor) -> str:
    """A refused parameter's values, shortened for a message."""
    flat = values.flatten().tolist()
    return f"{flat[:8]}{' ...' if len(flat) > 8 else ''}"


class MixOp(Op):
    """Args shared by MixUp and CutMix:

    * ``alpha``: λ ~ Beta(α, α) (``partners="permutation"``); with ``partners="balanced"``
      the partner's weight is drawn ~ Beta(α, 1) as in Balanced-MixUp.
    * ``partners``: ``"permutation"`` (a random permutation of the batch) or
      ``"balanced"`` (a class drawn uniformly among those in the batch, then one of its rows).
    * ``label_rule``: ``"mix"`` (targets weighted by λ) or ``"remix"`` (Remix, with
      ``kappa``, ``tau`` and the training ``class_counts``).

    Called as ``op(images, labels, num_classes)``, it returns the mixed images and soft targets
    on the images' device. Labels are best given on the host, as the loader gives them: their
    range is checked there, while CUDA labels are read back for it (one device sync a call).
    """

    kind = "mix"

    def __init__(self, alpha: float, p: float = 1.0, num_classes: int | None = None, seed: int | None = None,
                 partners: str = "permutation", label_rule: str = "mix", kappa: float = 3.0, tau: float = 0.5,
                 class_counts=None):
        super().__init__(p, seed)
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0 < alpha < float("inf"):
            raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
        self.alpha = float(alpha)
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral)
                                        or num_classes < 1):
            raise ValueError(f"num_classes must be an int >= 1 (or None: the loader passes its own), got {num_classes!r}")
        self.num_classes = None if num_classes is None else int(num_classes)
        counts = check_balance_options(partners, label_rule, kappa, tau, class_counts)
        if label_rule == "remix" and counts is None:
            raise ValueError("label_rule='remix' needs class_counts= (the training count of each class, "
                             "e.g. StreamLoader's index.class_counts)")
        self.partners, self.label_rule = partners, label_rule
        self.kappa, self.tau, self.class_counts = float(kappa), float(tau), counts

    def generate_parameters(self, n: int, height: int, width: int, labels: torch.Tensor | None = None) -> Params:
        """As :meth:`Op.generate_parameters`; ``labels`` (int, (n,)) are needed for
        ``partners="balanced"``."""
        if self.partners == "balanced" and labels is None:
            raise ValueError("partners='balanced' draws partners by class: pass labels= (int, (N,))")
        params = {"apply": torch.from_numpy(self.rng.random(n) < self.p)}
        params.update(self._draw(n, height, width, labels))
        return params

    def _draw(self, n: int, height: int, width: int, labels: torch.Tensor | None = None) -> Params:
        if self.partners == "permutation":
            return {"lam": torch.from_numpy(self.rng.beta(self.alpha, self.alpha, n)).float(),
                    "perm": torch.from_numpy(self.rng.permutation(n))}
        if labels.ndim != 1:
            raise ValueError(f"partners='balanced' needs int labels (N,), got shape {tuple(labels.shape)}")
        own = 1.0 - self.rng.beta(self.alpha, 1.0, n)             # the row's own weight is 1 − λ_paper
        perm = balanced_partners(labels.detach().cpu().numpy(), self.rng)
        return {"lam": torch.from_numpy(own).float(), "perm": torch.from_numpy(perm)}

    def row_lambda(self, params: Params) -> torch.Tensor:
        """λ actually used for the targets (1 where the row is not mixed)."""
        return torch.where(params["apply"], params["lam"], torch.ones_like(params["lam"]))

    def label_weight(self, lam: torch.Tensor, labels: torch.Tensor, params: Params) -> torch.Tensor:
        """Each row's target weight for its own label, from its pixel weight ``lam`` (host)."""
        if self.label_rule == "mix":
            return lam
        if labels.ndim != 1:
            raise ValueError(f"label_rule='remix' needs int labels (N,), got shape {tuple(labels.shape)}")
        hard = labels.detach().cpu().long()
        if hard.numel() and int(hard.max()) >= len(self.class_counts):     # (an empty batch: review s40)
            raise ValueError(f"label {int(hard.max())} has no entry in class_counts "
                             f"(length {len(self.class_counts)})")
        return remix_label_weight(lam.cpu(), hard, hard[params["perm"]], self.class_counts, self.kappa, self.tau)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None,
                 params: Params | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        check_images(images)
        if labels.shape[0] != images.shape[0]:
            raise ValueError(f"labels have {labels.shape[0]} rows but images have {images.shape[0]}")
        if num_classes is not None and self.num_classes is not None and num_classes != self.num_classes:
            raise ValueError(f"{type(self).__name__}(num_classes={self.num_classes}) was called with num_classes="
                             f"{num_classes} (a StreamLoader passes its own num_classes): give one of them, or the same")
        targets = to_device(one_hot(labels, num_classes or self.num_classes), images.device)
        n, _, h, w = images.shape
        if params is None:
            params = self.generate_parameters(n, h, w, labels if self.partners == "balanced" else None)
        else:
            params = self.checked_replay(params, n, h, w)
        self.last_params = params
        mixed, lam = self.mix_images(images, params)
        lam_y = to_device(self.label_weight(lam, labels, params), images.device).view(-1, 1)
        perm = to_device(params["perm"], images.device)
        return mixed, lam_y * targets + (1 - lam_y) * targets[perm]

    param_names = ("apply", "lam", "perm")

    def checked_replay(self, params: Params, n: int, height: int, width: int) -> Params:
        """Given parameters (a replay, perhaps through JSON or numpy): each of ``param_names``
        present, with one entry per row, ``lam`` in [0, 1] (as float32, as drawn) and ``perm``
        rows of this batch; anything else is refused naming the op, the entry and the value."""
        params = checked_params(self, params, n)
        name = type(self).__name__
        missing = [k for k in self.param_names if k not in params]
        if missing:
            raise ValueError(f"{name} params need {', '.join(map(repr, missing))} (as in its last_params), "
                             f"got {sorted(params)}")
        lam, perm = params["lam"], params["perm"]
        if lam.shape != (n,) or not (lam.is_floating_point() and bool(((lam >= 0) & (lam <= 1)).all())):
            raise ValueError(f"{name} params['lam'] must be {n} floats in [0, 1], got {lam.dtype} "
                             f"{tuple(lam.shape)}: {_sample(lam)}")
        if perm.shape != (n,) or perm.is_floating_point() or perm.dtype == torch.bool or \
                (n and not 0 <= int(perm.min()) <= int(perm.max()) < n):
            raise ValueError(f"{name} params['perm'] must be {n} row indices in [0, {n}), got {perm.dtype} "
                             f"{tuple(perm.shape)}: {_sample(perm)}")
        return {**params, "lam": lam.float(), "perm": perm.long()}

    def mix_images(self, images: torch.Tensor, params: Params) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def __repr__(self) -> str:
        extra = ""
        if self.partners != "permutation":
            extra += f", partners={self.partners!r}"
        if self.label_rule != "mix":
            extra += f", label_rule={self.label_rule!r}, kappa={self.kappa}, tau={self.tau}"
        return f"{type(self).__name__}(alpha={self.alpha}, p={self.p}{extra})"
