"""Baselines on synthetic data where the answer is known."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from eirnn import metrics as M
from eirnn.baselines import (BASELINES, ConditionMeanPSTH, PoissonGLM, SmoothedMeanPSTH, TrainMeanPSTH, TrialSet,
                             condition_codes, lagged_features, make_baseline, masked_mean_psth, raised_cosine_basis,
                             smooth_psth)
from eirnn.data import make_synthetic_session

DT = 0.025


def _set(rates, mask=None, conditions=None, inputs=None):
    k, t, n = rates.shape
    return TrialSet(np.zeros((k, t, 2)) if inputs is None else inputs, rates,
                    np.ones(rates.shape, bool) if mask is None else mask,
                    np.zeros(k, int) if conditions is None else conditions, 25.0)


def test_train_mean_is_the_masked_mean_with_fallback():
    rng = np.random.default_rng(0)
    rates = rng.gamma(2.0, 5.0, (6, 4, 3))
    mask = rng.random(rates.shape) > 0.3
    mask[:, 2, 1] = False  # no valid trial at (t=2, n=1)
    b = TrainMeanPSTH().fit(_set(np.where(mask, rates, np.nan), mask))
    pred = b.predict(_set(np.zeros((2, 4, 3))))
    assert pred.shape == (2, 4, 3) and np.array_equal(pred[0], pred[1])
    for t in range(4):
        for n in range(3):
            k = mask[:, t, n]
            want = rates[k, t, n].mean() if k.any() else rates[:, :, n][mask[:, :, n]].mean()
            assert pred[0, t, n] == pytest.approx(want)


def test_condition_mean_per_condition_and_grand_mean_fallback():
    rng = np.random.default_rng(1)
    cond = np.array([7, 7, 7, 9, 9, 11])
    rates = rng.gamma(2.0, 5.0, (6, 5, 2))
    b = ConditionMeanPSTH().fit(_set(rates, conditions=cond))
    test = _set(np.zeros((3, 5, 2)), conditions=np.array([9, 7, 1234]))
    pred = b.predict(test)
    np.testing.assert_allclose(pred[0], rates[3:5].mean(0))
    np.testing.assert_allclose(pred[1], rates[:3].mean(0))
    np.testing.assert_allclose(pred[2], rates.mean(0))  # condition absent from training
    assert b.n_fallback_ == 1


def test_condition_codes_are_stable_across_subsets():
    s = make_synthetic_session(seed=2, n_trials=64, n_time=20, n_exc=3, n_inh=2, n_hidden_exc=3, n_hidden_inh=2)
    codes = condition_codes(s)
    idx = np.array([5, 1, 40])
    assert np.array_equal(condition_codes(s.subset(idx)), codes[idx])
    assert np.array_equal(condition_codes(s, idx), codes[idx])
    # same code <=> same (location, identity, reward, salience)
    ids = s.condition_ids()
    assert len(np.unique(codes)) == len(np.unique(ids))
    for c in np.unique(codes):
        assert len(np.unique(ids[codes == c])) == 1


def test_smooth_psth_preserves_constants_and_sums():
    const = np.full((30, 2), 4.0)
    np.testing.assert_allclose(smooth_psth(const, 3.0), 4.0)  # edges not pulled to 0
    x = np.zeros((41, 1))
    x[20] = 1.0
    y = smooth_psth(x, 2.0)
    assert y.sum() == pytest.approx(1.0, abs=1e-6) and y[20, 0] == y.max()
    assert np.array_equal(smooth_psth(x, 0.0), x)


def test_smoothed_mean_chooses_smoothing_for_noisy_smooth_data_and_none_for_clean_steps():
    rng = np.random.default_rng(3)
    t = np.arange(80)
    mu = 10 + 8 * np.sin(2 * np.pi * t / 40)[:, None] * np.ones((1, 3))
    noisy = rng.poisson(np.broadcast_to(mu * DT, (60, 80, 3))) / DT
    cond = np.arange(60) % 4
    b = SmoothedMeanPSTH().fit(_set(noisy, conditions=cond))
    assert b.sigma_bins_ >= 1.0
    # the smoothed mean predicts fresh trials better than the raw mean
    fresh = rng.poisson(np.broadcast_to(mu * DT, (60, 80, 3))) / DT
    raw = TrainMeanPSTH().fit(_set(noisy)).predict(_set(fresh))
    assert M.psth_corr(b.predict(_set(fresh)), fresh) > M.psth_corr(raw, fresh)
    # noise-free steps: any smoothing only hurts -> sigma 0
    steps = np.broadcast_to(np.where(t % 20 < 10, 5.0, 30.0)[:, None] * np.ones((1, 3)), (20, 80, 3)).copy()
    steps += np.arange(20)[:, None, None] * 1e-3  # trials not exactly identical
    assert SmoothedMeanPSTH().fit(_set(steps, conditions=np.arange(20) % 4)).sigma_bins_ == 0.0


def test_raised_cosine_basis_tiles_the_lags():
    B = raised_cosine_basis(5, 21)
    assert B.shape == (21, 5) and np.all(B >= 0) and np.all(B <= 1)
    # neighbouring bumps cross at half height: the columns sum to exactly 1 at every lag
    np.testing.assert_allclose(B.sum(1), 1.0, atol=1e-12)
    assert np.argmax(B[:, 0]) == 0 and np.argmax(B[:, -1]) == 20
    assert np.all(np.diff(np.argmax(B, 0)) > 0)  # centres move to longer lags
    assert np.array_equal(raised_cosine_basis(1, 4), np.ones((4, 1)))
    with pytest.raises(ValueError):
        raised_cosine_basis(0, 3)


def test_lagged_features_is_a_causal_convolution():
    rng = np.random.default_rng(4)
    u = rng.normal(size=(3, 15, 2))
    basis = rng.normal(size=(4, 3))
    f = lagged_features(u, basis)
    assert f.shape == (3, 15, 6)
    for b in range(3):
        for c in range(2):
            for j in range(3):
                want = np.convolve(u[b, :, c], basis[:, j])[:15]  # full conv, causal part
                np.testing.assert_allclose(f[b, :, c * 3 + j], want, atol=1e-12)


def _glm_data(n_trials, rng, w_true, basis):
    """Trials with 2 step inputs at random onsets; counts from a known lagged-input GLM."""
    T = 40
    u = np.zeros((n_trials, T, 2))
    on = rng.integers(3, 25, (n_trials, 2))
    for k in range(n_trials):
        u[k, on[k, 0]:, 0] = 1.0
        u[k, on[k, 1]:on[k, 1] + 6, 1] = 1.0
    eta = lagged_features(u, basis) @ w_true[:-1] + w_true[-1]
    lam = np.exp(eta)  # counts per bin
    counts = rng.poisson(lam)
    cond = on[:, 0] % 3
    return TrialSet(u, counts / DT, np.ones(counts.shape, bool), cond, 25.0), lam / DT


def test_poisson_glm_recovers_a_known_encoding_model():
    rng = np.random.default_rng(5)
    basis = raised_cosine_basis(4, 9)
    w_true = rng.normal(0, 0.5, (2 * 4 + 1, 3))
    w_true[-1] = np.log([0.3, 0.5, 0.8])
    train, _ = _glm_data(300, rng, w_true, basis)
    test, lam_test = _glm_data(200, rng, w_true, basis)
    glm = PoissonGLM(n_basis=4, max_lag_ms=200.0, inner_folds=2, l2_grid=(100.0, 1.0, 0.01), max_iter=100,
                     dtype="float64").fit(train)
    pred = glm.predict(test)
    assert pred.shape == test.rates.shape and np.all(pred > 0)
    # predicted single-trial rates track the true ones closely
    r = np.corrcoef(np.log(pred).ravel(), np.log(lam_test).ravel())[0, 1]
    assert r > 0.97
    # the GLM's bits/spike approaches the truth's and beats the training mean PSTH
    bps_glm = M.bits_per_spike(pred, test.rates)
    bps_true = M.bits_per_spike(lam_test, test.rates)
    bps_mean = M.bits_per_spike(TrainMeanPSTH().fit(train).predict(test), test.rates)
    assert bps_glm > bps_mean + 0.05 and bps_glm > bps_true - 0.03
    assert set(np.unique(glm.l2_.numpy())) <= {100.0, 1.0, 0.01}
    assert "raised cosines" in glm.describe()


def test_glm_handles_constant_and_all_zero_inputs():
    rng = np.random.default_rng(6)
    u = np.zeros((20, 12, 3))  # e.g. an export without eye data: channels all zero
    u[:, 4:, 0] = 1.0
    rates = rng.poisson(1.0, (20, 12, 2)) / DT
    glm = PoissonGLM(n_basis=2, max_lag_ms=50.0, inner_folds=0, max_iter=30).fit(
        TrialSet(u, rates, np.ones(rates.shape, bool), np.zeros(20, int), 25.0))
    pred = glm.predict(TrialSet(u[:3], rates[:3], np.ones((3, 12, 2), bool), np.zeros(3, int), 25.0))
    assert np.all(np.isfinite(pred)) and pred.shape == (3, 12, 2)
    assert torch.isfinite(glm.w_).all()


def test_registry_and_unknown_name():
    assert set(BASELINES) == {"train_mean", "train_mean_smoothed", "condition_mean", "condition_mean_shrunk", "glm"}
    assert isinstance(make_baseline("glm", n_basis=3), PoissonGLM)
    with pytest.raises(ValueError, match="unknown baseline"):
        make_baseline("nope")


def test_trialset_validates_shapes_and_cleans_masked_values():
    rates = np.full((2, 3, 1), np.nan)
    ts = TrialSet(np.zeros((2, 3, 1)), rates, np.zeros((2, 3, 1), bool), [1, 2], 25.0)
    assert np.all(ts.rates == 0.0) and ts.counts.sum() == 0
    with pytest.raises(ValueError):
        TrialSet(np.zeros((2, 3, 1)), rates, np.zeros((2, 2, 1), bool), [1, 2], 25.0)
    with pytest.raises(ValueError):
        TrialSet(np.zeros((2, 3, 1)), rates, np.zeros((2, 3, 1), bool), [1], 25.0)
    assert np.allclose(masked_mean_psth(np.ones((2, 3, 1)), np.ones((2, 3, 1), bool)), 1.0)
