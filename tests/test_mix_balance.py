"""Balance-aware mixup: Remix's label rule on hand-computed cases, Balanced-MixUp's
class-balanced partners and λ ~ Beta(α, 1), replay, and the options' checks."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from streamaug.ops import CutMix, MixUp
from streamaug.ops.mix.mix_balance import balanced_partners, remix_label_weight


def rows(n, value_of_row=lambda i: i):
    """(n, 1, 2, 2) float images where row i is filled with value_of_row(i) / 100."""
    return torch.stack([torch.full((1, 2, 2), value_of_row(i) / 100.0) for i in range(n)])


def fixed_params(lam, perm):
    n = len(lam)
    return {"apply": torch.ones(n, dtype=torch.bool), "lam": torch.tensor(lam, dtype=torch.float32),
            "perm": torch.tensor(perm)}


# ---------------------------------------------------------------- Remix: hand-computed cases
# counts: class 0 has 100 samples, class 1 has 10, class 2 has 40 (κ = 3, τ = 0.5)
COUNTS = [100, 10, 40]


@pytest.mark.parametrize("label, partner_label, lam, expected, why", [
    (0, 1, 0.3, 0.0, "n_i/n_j = 10 >= 3 and λ = 0.3 < τ: the label is the partner's (minority) class"),
    (0, 1, 0.7, 0.7, "n_i/n_j = 10 >= 3 but λ = 0.7 >= τ: plain mixup weight"),
    (1, 0, 0.7, 1.0, "n_i/n_j = 0.1 <= 1/3 and 1 - λ = 0.3 < τ: the label is the row's (minority) class"),
    (1, 0, 0.3, 0.3, "n_i/n_j = 0.1 <= 1/3 but 1 - λ = 0.7 >= τ: plain mixup weight"),
    (0, 2, 0.3, 0.3, "n_i/n_j = 2.5 < 3: counts not far enough apart, plain weight"),
    (2, 1, 0.2, 0.0, "n_i/n_j = 4 >= 3 and λ = 0.2 < τ: class 1 wins"),
    (1, 1, 0.2, 0.2, "same class: ratio 1, plain weight"),
])
def test_remix_label_rule_hand_computed(label, partner_label, lam, expected, why):
    got = remix_label_weight(torch.tensor([lam]), torch.tensor([label]), torch.tensor([partner_label]),
                             torch.tensor(COUNTS, dtype=torch.float64), kappa=3.0, tau=0.5)
    assert got.item() == pytest.approx(expected), why


def test_remix_through_mixup_pixels_keep_lambda_targets_follow_the_rule():
    op = MixUp(1.0, label_rule="remix", class_counts=COUNTS, seed=0)
    x = rows(4)
    labels = torch.tensor([0, 1, 1, 2])
    # row 0 (class 0) with row 1 (class 1), λ=0.3 → label class 1 entirely
    # row 1 (class 1) with row 0 (class 0), λ=0.8 → label class 1 entirely (1-λ=0.2 < τ)
    # row 2 (class 1) with row 3 (class 2), λ=0.4: n_i/n_j = 0.25 <= 1/3 but 1-λ=0.6 >= τ → 0.4
    # row 3 (class 2) with row 2 (class 1), λ=0.45: n_i/n_j = 4 >= 3 and λ < τ → class 1 entirely
    params = fixed_params([0.3, 0.8, 0.4, 0.45], [1, 0, 3, 2])
    out, targets = op(x, labels, num_classes=3, params=params)
    expected_pixels = [0.3 * 0 + 0.7 * 1, 0.8 * 1 + 0.2 * 0, 0.4 * 2 + 0.6 * 3, 0.45 * 3 + 0.55 * 2]
    assert torch.allclose(out[:, 0, 0, 0], torch.tensor(expected_pixels) / 100.0, atol=1e-6)
    expected_targets = torch.tensor([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.4, 0.6], [0.0, 1.0, 0.0]])
    assert torch.allclose(targets, expected_targets, atol=1e-6)


def test_remix_with_cutmix_uses_the_pasted_area():
    op = CutMix(1.0, label_rule="remix", class_counts=COUNTS, seed=0)
    x = torch.zeros(2, 1, 10, 10)
    params = fixed_params([0.0, 0.0], [1, 0])
    params["box"] = torch.tensor([[0, 10, 0, 6], [0, 10, 0, 2]])   # row 0 pastes 60% (λ'=0.4), row 1 20% (λ'=0.8)
    _, targets = op(x, torch.tensor([0, 1]), num_classes=3, params=params)
    # row 0: class 0 (100) vs class 1 (10), λ'=0.4 < τ → all class 1; row 1: class 1 vs 0, 1-λ'=0.2 < τ → all class 1
    assert torch.allclose(targets, torch.tensor([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]]))


def test_remix_with_p_zero_keeps_each_rows_own_label():
    op = MixUp(1.0, p=0.0, label_rule="remix", class_counts=COUNTS, seed=0)
    labels = torch.tensor([0, 1, 2, 0, 1])
    out, targets = op(rows(5), labels, num_classes=3)
    assert torch.equal(targets, torch.nn.functional.one_hot(labels, 3).float())
    assert torch.equal(out, rows(5))


# ---------------------------------------------------------------- Balanced-MixUp
def test_balanced_partners_are_class_uniform_not_instance_uniform():
    labels = np.array([0] * 90 + [1] * 9 + [2] * 1)
    rng = np.random.default_rng(0)
    partner_classes = np.concatenate([labels[balanced_partners(labels, rng)] for _ in range(100)])
    share = np.bincount(partner_classes, minlength=3) / len(partner_classes)
    assert np.allclose(share, 1 / 3, atol=0.01), share          # instance-uniform would be (0.90, 0.09, 0.01)
    # within a class, rows are drawn uniformly
    picks = np.concatenate([balanced_partners(labels, rng) for _ in range(100)])
    within = np.bincount(picks[labels[picks] == 1] - 90, minlength=9)
    assert stats.chisquare(within).pvalue > 0.001


def test_balanced_mixup_weight_is_beta_alpha_one_and_pairing_is_shared():
    alpha = 0.2
    op = MixUp(alpha, partners="balanced", seed=1)
    labels = torch.tensor([0] * 60 + [1] * 4)
    lam_paper = []
    for _ in range(40):
        params = op.generate_parameters(64, 2, 2, labels)
        lam_paper.append(1.0 - params["lam"].double().numpy())
    assert stats.kstest(np.concatenate(lam_paper), stats.beta(alpha, 1.0).cdf).pvalue > 0.01
    x = rows(64)
    out, targets = op(x, labels, num_classes=2)
    p = op.last_params
    lam = p["lam"].view(-1, 1, 1, 1)
    assert torch.allclose(out, lam * x + (1 - lam) * x[p["perm"]], atol=1e-6)
    onehot = torch.nn.functional.one_hot(labels, 2).float()
    assert torch.allclose(targets, p["lam"].view(-1, 1) * onehot + (1 - p["lam"].view(-1, 1)) * onehot[p["perm"]])
    # about half the partners come from the 4-row class (1/2 class-balanced, vs 4/64 by permutation)
    assert 0.3 < (labels[p["perm"]] == 1).float().mean().item() < 0.7


def test_balanced_mixup_replays_from_params_and_resumes_from_state():
    labels = torch.tensor([0, 0, 0, 1, 2, 2, 0, 1])
    a = MixUp(0.3, partners="balanced", seed=5)
    state = a.state_dict()
    out1, t1 = a(rows(8), labels, num_classes=3)
    replay, rt = a(rows(8), labels, num_classes=3, params=a.last_params)
    assert torch.equal(out1, replay) and torch.equal(t1, rt)
    b = MixUp(0.3, partners="balanced", seed=99)
    b.load_state_dict(state)
    out2, t2 = b(rows(8), labels, num_classes=3)
    assert torch.equal(out1, out2) and torch.equal(t1, t2)


def test_default_partners_draws_are_unchanged():
    """The default (a permutation, λ ~ Beta(α, α)) draws exactly what it drew before the options existed."""
    op = MixUp(0.4, seed=7)
    rng = np.random.Generator(np.random.PCG64(0))
    rng.bit_generator.state = op.rng.bit_generator.state
    params = op.generate_parameters(16, 4, 4)
    apply = rng.random(16) < 1.0
    lam = rng.beta(0.4, 0.4, 16)
    perm = rng.permutation(16)
    assert torch.equal(params["apply"], torch.from_numpy(apply))
    assert torch.equal(params["lam"], torch.from_numpy(lam).float()) and torch.equal(params["perm"], torch.from_numpy(perm))


# ---------------------------------------------------------------- argument checks
@pytest.mark.parametrize("kwargs, message", [
    ({"partners": "nearest"}, "partners must be one of"),
    ({"label_rule": "remix"}, "label_rule='remix' needs class_counts="),
    ({"label_rule": "other"}, "label_rule must be one of"),
    ({"kappa": 0.5, "label_rule": "remix", "class_counts": [1, 2]}, "kappa must be a finite number >= 1, got 0.5"),
    ({"tau": 1.5, "label_rule": "remix", "class_counts": [1, 2]}, r"tau must be in \[0, 1\], got 1.5"),
    ({"label_rule": "remix", "class_counts": [5, -1]}, r"class_counts must be non-negative per-class counts, got \[5, -1\]"),
])
def test_bad_balance_options_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MixUp(0.2, **kwargs)


def test_balanced_partners_need_labels_and_remix_needs_a_count_per_label():
    with pytest.raises(ValueError, match="partners='balanced' draws partners by class: pass labels="):
        MixUp(0.2, partners="balanced").generate_parameters(4, 2, 2)
    op = MixUp(0.2, label_rule="remix", class_counts=[3, 4])
    with pytest.raises(ValueError, match="label 2 has no entry in class_counts"):
        op(rows(3), torch.tensor([0, 1, 2]), num_classes=3)


@pytest.mark.parametrize("op", [MixUp(1.0, label_rule="remix", class_counts=[50, 5], seed=0),
                                CutMix(1.0, label_rule="remix", class_counts=[50, 5], seed=0),
                                MixUp(1.0, partners="balanced", seed=0)], ids=["mixup-remix", "cutmix-remix", "balanced"])
def test_balance_aware_mix_ops_take_an_empty_batch(op):
    """Review s40: Remix took the largest label of an empty batch (RuntimeError on torch.max)."""
    images, targets = op(torch.zeros(0, 3, 8, 8, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64), num_classes=2)
    assert images.shape == (0, 3, 8, 8) and targets.shape == (0, 2)
