"""The noise field against N(0, 1): its exact distribution (the sum of two half-draws), its
samples on each device, and replay; what it costs is in ``benchmarks/noise_field_speed.py``."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import kstest, norm

from streamaug.ops.intensity.noise_field import HALF_LEVELS, chunk_bytes, gaussian_field, row_chunks

DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device")])]


def test_half_levels_are_symmetric_ascending_with_variance_one_half():
    assert HALF_LEVELS.dtype == np.float32 and HALF_LEVELS.shape == (256,)
    assert np.all(np.diff(HALF_LEVELS) > 0)
    assert np.array_equal(HALF_LEVELS[::-1], -HALF_LEVELS), "symmetric: the field's mean is exactly 0"
    assert float(np.mean(HALF_LEVELS.astype(np.float64) ** 2)) == pytest.approx(0.5, abs=1e-6)
    # each level lies in its own equiprobable bin of N(0, 1/2)
    edges = norm.ppf(np.arange(257) / 256, scale=math.sqrt(0.5))
    assert np.all((edges[:-1] < HALF_LEVELS) & (HALF_LEVELS < edges[1:]))


def test_the_sum_of_two_half_draws_is_a_standard_normal_up_to_its_atoms():
    """All 65,536 equally likely values of A + B, against N(0, 1)."""
    values = np.sort((HALF_LEVELS[:, None].astype(np.float64) + HALF_LEVELS[None, :]).ravel())
    cdf = np.arange(1, values.size + 1) / values.size
    gap = max(np.abs(cdf - norm.cdf(values)).max(), np.abs(cdf - 1 / values.size - norm.cdf(values)).max())
    assert gap <= 1 / 512 + 1e-9, "the largest CDF gap is one atom of a half-draw"
    assert np.mean(values) == pytest.approx(0.0, abs=1e-7)
    assert np.mean(values ** 2) == pytest.approx(1.0, abs=1e-5)
    assert np.mean(values ** 4) == pytest.approx(3.0, abs=0.03), "tails as heavy as a Gaussian's, nearly"
    assert 4.0 < values.max() < 4.5
    tail = np.mean(np.abs(values) > 3)
    assert tail == pytest.approx(2 * norm.sf(3), rel=0.1)


@pytest.mark.parametrize("device", DEVICES)
def test_samples_pass_a_normality_test_and_replay(device):
    dev = torch.device(device)
    field = gaussian_field(torch.Size((64, 3, 64, 64)), 11, dev)
    assert field.dtype == torch.float32 and field.device.type == dev.type
    flat = field.flatten().cpu().double().numpy()
    assert abs(flat.mean()) < 0.01 and abs(flat.std() - 1) < 0.01
    assert kstest(flat[:200_000], "norm").pvalue > 1e-3
    assert torch.equal(field, gaussian_field(field.shape, 11, dev)), "a seed replays its field"
    assert not torch.equal(field, gaussian_field(field.shape, 12, dev))


def test_rows_pixels_and_chunks_are_uncorrelated():
    shape = torch.Size((96, 3, 128, 128))     # several chunks
    assert len(row_chunks(shape)) > 2
    rows = gaussian_field(shape, 5, torch.device("cpu")).reshape(96, -1).double()
    corr = torch.corrcoef(rows)
    off = corr[~torch.eye(96, dtype=torch.bool)]
    assert off.abs().max() < 0.02, "rows (within and across chunks) are independent"
    lagged = torch.corrcoef(torch.stack([rows[:, :-1].flatten(), rows[:, 1:].flatten()]))[0, 1]
    assert abs(float(lagged)) < 0.01, "neighbouring pixels are independent"


def test_chunk_bytes_are_uniform_and_both_draws_differ():
    picks = chunk_bytes(3, 0, 4, 65536, torch.device("cpu"))
    assert picks.shape == (2, 4, 65536) and picks.dtype == torch.uint8
    counts = torch.bincount(picks.flatten().int(), minlength=256).double()
    expected = picks.numel() / 256
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 400, f"bytes are uniform (chi² {chi2:.0f} on 255 degrees of freedom)"
    assert float((picks[0] == picks[1]).double().mean()) == pytest.approx(1 / 256, rel=0.2), "A and B independent"
    a, b = (picks[0] >> 4).flatten().long(), (picks[1] >> 4).flatten().long()   # the pairs' high nibbles
    joint = torch.bincount(a * 16 + b, minlength=256).double()
    expected = a.numel() / 256
    chi2 = float(((joint - expected) ** 2 / expected).sum())
    assert chi2 < 400, f"A's and B's bytes are drawn independently (chi² {chi2:.0f} on 255 degrees of freedom)"
    assert not torch.equal(picks, chunk_bytes(3, 1, 4, 65536, torch.device("cpu"))), "chunks draw their own bytes"


def test_the_device_path_runs_here_as_a_gpu_runs_it(monkeypatch):
    """Off the CPU the bytes come from a torch generator on the device; that path, run on the
    CPU, gives a field with the same properties, replayed from its seed."""
    from streamaug.ops.intensity import noise_field

    cpu = torch.device("cpu")
    picks = noise_field.device_bytes(7, 0, 3, 4096, cpu)
    assert picks.shape == (2, 3, 4096) and picks.dtype == torch.uint8 and int(picks.max()) > 250
    assert torch.equal(picks, noise_field.device_bytes(7, 0, 3, 4096, cpu))
    monkeypatch.setattr(noise_field, "chunk_bytes", noise_field.device_bytes)
    field = noise_field.gaussian_field(torch.Size((32, 3, 64, 64)), 9, cpu)
    assert abs(float(field.mean())) < 0.01 and abs(float(field.std()) - 1) < 0.01
    values = set(np.unique(field.numpy()).tolist())
    sums = set((HALF_LEVELS[:, None] + HALF_LEVELS[None, :]).ravel().tolist())
    assert values <= sums, "every value is a sum of two half-levels"
    assert torch.equal(field, noise_field.gaussian_field(field.shape, 9, cpu))
