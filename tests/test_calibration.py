"""Per-neuron affine calibration (eirnn.calibration) against closed forms and simulations."""
from __future__ import annotations

import numpy as np
import pytest

from eirnn import metrics as M
from eirnn.calibration import AffineCalibration, fit_affine_calibration

DT = 0.025


def _poisson_trials(seed=0, k=300, t=40, n=3):
    rng = np.random.default_rng(seed)
    mu = 8.0 + 6.0 * np.sin(np.arange(t)[:, None] / 5.0 + np.arange(n))  # sp/s, > 0
    lam = np.broadcast_to(mu, (k, t, n)).copy() * rng.uniform(0.7, 1.3, (k, 1, 1))  # trial gains
    return lam, rng.poisson(lam * DT) / DT


def test_recovers_a_known_affine_miscalibration_and_improves_held_out_bits():
    lam, data = _poisson_trials()
    mask = np.ones(data.shape, bool)
    gain, offset = np.array([0.5, 2.0, 1.0]), np.array([3.0, -4.0, 0.0])
    pred = (lam - offset) / gain  # so that gain * pred + offset = lam
    cal = fit_affine_calibration(pred[:200], data[:200], mask[:200], 25.0)
    np.testing.assert_allclose(cal.gain, gain, rtol=0.15)
    np.testing.assert_allclose(cal.offset, offset, atol=1.0)
    before = M.bits_per_spike(pred[200:], data[200:], mask[200:], 25.0)
    after = M.bits_per_spike(cal(pred[200:]), data[200:], mask[200:], 25.0)
    true = M.bits_per_spike(lam[200:], data[200:], mask[200:], 25.0)
    assert after > before and after == pytest.approx(true, abs=0.01)
    # correlations are invariant to it
    assert M.psth_corr(cal(pred[200:]), data[200:]) == pytest.approx(M.psth_corr(pred[200:], data[200:]), abs=1e-9)


def test_training_mean_psth_is_its_own_optimum():
    """Score equations at (a, c) = (1, 0) for p_t = the training mean: sum_bt (k/p - 1) p = 0 and
    sum_bt (k/p - 1) = 0, so the fit returns the identity."""
    _, data = _poisson_trials(seed=1)
    mask = np.ones(data.shape, bool)
    mask[:, -5:, 0] = False  # masked bins are ignored
    counts = np.round(data * DT)
    psth = np.where(mask, counts, 0).sum(0) / np.maximum(mask.sum(0), 1) / DT
    psth = np.where(mask.sum(0) > 0, psth, 1.0)
    pred = np.broadcast_to(psth, data.shape)
    cal = fit_affine_calibration(pred, data, mask, 25.0)
    np.testing.assert_allclose(cal.gain, 1.0, atol=1e-4)
    np.testing.assert_allclose(cal.offset, 0.0, atol=1e-3)


def test_floor_nonnegative_gain_and_shape_errors():
    cal = AffineCalibration(gain=np.array([1.0, 0.0]), offset=np.array([-5.0, 2.0]))
    out = cal(np.full((2, 3, 2), 2.0))
    assert np.all(out[..., 0] == cal.floor) and np.all(out[..., 1] == 2.0)
    # an anti-correlated predictor gets gain 0 (a constant), never a negative gain
    lam, data = _poisson_trials(seed=2, n=1)
    fit = fit_affine_calibration(40.0 - lam, data, np.ones(data.shape, bool), 25.0)
    assert fit.gain[0] == 0.0 and fit.offset[0] == pytest.approx(np.round(data * DT).mean() / DT, rel=1e-3)
    with pytest.raises(ValueError):
        fit_affine_calibration(lam[:, :, :1], data[:, :5], np.ones(data.shape, bool), 25.0)
    with pytest.raises(ValueError):
        cal(np.ones((1, 1, 3)))
