"""Evaluation metrics added for issue 3: noise ceiling, within-condition Fano factor,
fraction within a factor, E/I means -- against closed forms, numpy/scipy and simulations."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from eirnn import metrics as M

DT = 0.025


def _mu(T=50, N=4, seed=0):
    """Expected rates [T, N] (sp/s) with modulation depth growing with the neuron index."""
    rng = np.random.default_rng(seed)
    t = np.arange(T)
    depth = np.linspace(0.15, 1.0, N)
    return 20.0 * (1.0 + depth[None, :] * np.sin(2 * np.pi * t[:, None] / T * 2 + rng.uniform(0, 6, N)[None, :]))


def test_ceiling_is_sqrt_of_spearman_brown_reliability():
    mu = _mu()
    rng = np.random.default_rng(1)
    data = rng.poisson(np.broadcast_to(mu * DT, (40,) + mu.shape)) / DT
    cond = rng.integers(0, 3, 40)
    c = M.psth_noise_ceiling(data, conditions=cond, n_splits=10, seed=0)
    for key in ("psth_corr", "condition_psth_corr", "condition_psth_r2"):
        r = c[key]["split_half_r"]
        rho = np.clip(2 * r / (1 + r), 0, 1)
        np.testing.assert_allclose(c[key]["reliability"], rho)
    np.testing.assert_allclose(c["psth_corr"]["per_neuron"], np.sqrt(c["psth_corr"]["reliability"]))
    np.testing.assert_allclose(c["condition_psth_r2"]["per_neuron"], c["condition_psth_r2"]["reliability"])
    assert c["psth_corr"]["mean"] == pytest.approx(np.mean(c["psth_corr"]["per_neuron"]))


def test_ceiling_matches_the_expected_score_of_the_true_rates():
    """E corr(mu, D) over repeated experiments ~ the ceiling estimated from one data set each."""
    mu = _mu(T=60, N=4)
    rng = np.random.default_rng(2)
    B = 30
    true_r, ceil, true_r2, ceil_r2 = [], [], [], []
    cond = np.repeat(np.arange(3), B // 3)
    mu_c = mu[None] * (1.0 + 0.5 * np.arange(3))[:, None, None]  # condition-dependent gain
    for _ in range(60):
        lam = mu_c[cond]
        data = rng.poisson(lam * DT) / DT
        true_r.append(M.psth_correlation(lam, data))
        true_r2.append(M.condition_psth_r2_per_neuron(lam, data, cond))
        c = M.psth_noise_ceiling(data, conditions=cond, n_splits=8, seed=int(rng.integers(1 << 30)))
        ceil.append(c["psth_corr"]["per_neuron"])
        ceil_r2.append(c["condition_psth_r2"]["per_neuron"])
    # well-measured neurons: on target; the weakest (reliability ~0.2): conservative, since the
    # square root of a noisy reliability estimate is biased low (documented in the docstring)
    np.testing.assert_allclose(np.mean(ceil, 0)[1:], np.mean(true_r, 0)[1:], atol=0.03)
    assert np.mean(true_r, 0)[0] - 0.12 < np.mean(ceil, 0)[0] < np.mean(true_r, 0)[0] + 0.02
    np.testing.assert_allclose(np.mean(ceil_r2, 0), np.mean(true_r2, 0), atol=0.05)
    # the uncorrected replicate correlation would be far too low for the weak neurons
    raw = np.mean([M.split_half_ceiling(rng.poisson(mu_c[cond] * DT) / DT, conditions=cond, n_splits=4)["split_half_r"]
                   for _ in range(10)], 0)
    assert raw[0] < np.mean(true_r, 0)[0] - 0.1


def test_ceiling_noise_free_is_one_and_pure_noise_is_near_zero():
    mu = _mu(T=40, N=3)
    clean = np.broadcast_to(mu, (12,) + mu.shape)
    c = M.psth_noise_ceiling(clean, n_splits=3)
    np.testing.assert_allclose(c["psth_corr"]["per_neuron"], 1.0)
    assert np.isnan(c["condition_psth_corr"]["mean"])  # no conditions given
    rng = np.random.default_rng(3)
    flat = rng.poisson(np.full((200, 40, 3), 0.5)) / DT
    c = M.psth_noise_ceiling(flat, n_splits=20)
    assert np.all(c["psth_corr"]["per_neuron"] < 0.45)
    with pytest.raises(ValueError):
        M.psth_noise_ceiling(flat[:1])


def test_ceiling_respects_mask():
    mu = _mu(T=30, N=2)
    rng = np.random.default_rng(4)
    data = rng.poisson(np.broadcast_to(mu * DT, (30,) + mu.shape)) / DT
    mask = np.ones(data.shape, bool)
    mask[:, 20:, :] = False
    garbage = data.copy()
    garbage[:, 20:, :] = np.nan
    a = M.psth_noise_ceiling(garbage, mask, n_splits=5, seed=1)
    b = M.psth_noise_ceiling(data[:, :20], None, n_splits=5, seed=1)
    np.testing.assert_allclose(a["psth_corr"]["per_neuron"], b["psth_corr"]["per_neuron"])


def test_condition_fano_factor_against_numpy():
    rng = np.random.default_rng(5)
    counts = rng.poisson(3.0, (9, 4, 2)).astype(float)
    cond = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2])
    ff = M.condition_fano_factor(counts / DT, cond, bin_size_ms=25.0)
    ffm = M.condition_fano_factor(counts / DT, cond, bin_size_ms=25.0, poisson_model=True)
    for n in range(2):
        vals, vals_m = [], []
        for c in np.unique(cond):
            x = counts[cond == c, :, n]
            for t in range(4):
                if x[:, t].mean() > 0:
                    vals.append(np.var(x[:, t], ddof=1) / x[:, t].mean())
                    vals_m.append(1.0 + np.var(x[:, t], ddof=1) / x[:, t].mean())
        assert ff[n] == pytest.approx(np.mean(vals))
        assert ffm[n] == pytest.approx(np.mean(vals_m))


def test_condition_fano_factor_count_windows_against_numpy():
    """count_bins=k: counts summed over non-overlapping k-bin windows (a partial last window
    dropped; a window with a masked bin invalid), then the same within-condition formula."""
    rng = np.random.default_rng(7)
    counts = rng.poisson(1.5, (8, 7, 2)).astype(float)
    mask = np.ones(counts.shape, bool)
    mask[0, 1, 0] = False  # invalidates window 0 of trial 0, neuron 0
    cond = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    ff = M.condition_fano_factor(counts / DT, cond, mask, bin_size_ms=25.0, count_bins=3)
    for n in range(2):
        vals = []
        for c in (0, 1):
            for w in range(2):  # bins 0-2 and 3-5; bin 6 dropped
                rows = [b for b in np.flatnonzero(cond == c) if mask[b, 3 * w:3 * w + 3, n].all()]
                x = counts[rows, 3 * w:3 * w + 3, n].sum(axis=1)
                if len(x) >= 2 and x.mean() > 0:
                    vals.append(np.var(x, ddof=1) / x.mean())
        assert ff[n] == pytest.approx(np.mean(vals))
    wc, wv = M.count_windows(counts, mask, 3)
    assert wc.shape == (8, 2, 2) and not wv[0, 0, 0] and wv[0, 0, 1]
    assert wc[2, 1, 1] == counts[2, 3:6, 1].sum()
    with pytest.raises(ValueError):
        M.count_windows(counts, mask, 0)
    # a Poisson rate model: the window count is Poisson with the summed rate -> F = 1 exactly
    lam = np.full((6, 8, 1), 4.0)
    np.testing.assert_allclose(M.condition_fano_factor(lam, np.zeros(6), count_bins=4, poisson_model=True), 1.0)


def test_condition_fano_factor_poisson_is_one_and_ignores_condition_means():
    rng = np.random.default_rng(6)
    cond = np.repeat(np.arange(4), 150)
    lam = np.array([1.0, 3.0, 6.0, 10.0])[cond][:, None, None] * np.ones((1, 20, 3))
    data = rng.poisson(lam) / DT
    ff = M.condition_fano_factor(data, cond)
    np.testing.assert_allclose(ff, 1.0, atol=0.05)
    # across all trials the condition differences would inflate it far above 1
    assert np.all(M.fano_factor(data) > 2.0)
    # a deterministic rate model emitting Poisson spikes has Fano factor exactly 1
    np.testing.assert_allclose(M.condition_fano_factor(lam / DT, cond, poisson_model=True), 1.0)
    # too few trials per condition -> NaN
    assert np.all(np.isnan(M.condition_fano_factor(data[:4], np.arange(4))))


def test_fraction_within_factor():
    model = np.array([1.0, 2.0, 0.5, 4.1, np.nan, 1.0])
    data = np.array([1.0, 1.0, 1.0, 2.0, 1.0, 0.0])
    # neuron 4 (NaN) and 5 (data 0) are not counted; 0, 1, 2 within 2x, 3 is 2.05x
    assert M.fraction_within_factor(model, data) == pytest.approx(3 / 4)
    assert M.fraction_within_factor(model, data, factor=3.0) == pytest.approx(1.0)
    assert math.isnan(M.fraction_within_factor([np.nan], [1.0]))
    with pytest.raises(ValueError):
        M.fraction_within_factor([1.0, 2.0], [1.0])


def test_mean_by_type_and_psth_corr_by_type_agree():
    v = np.array([0.1, 0.5, np.nan, 0.9])
    e = np.array([True, False, True, False])
    assert M.mean_by_type(v, e) == M.psth_corr_by_type(v, e)
    assert M.mean_by_type(v, e)["I"] == pytest.approx(0.7)
    assert M.mean_by_type(v, e)["E"] == pytest.approx(0.1)


def test_condition_psth_corr_matches_scipy_on_stacked_condition_means():
    rng = np.random.default_rng(7)
    data = rng.poisson(2.0, (12, 5, 2)) / DT
    model = rng.gamma(2.0, 30.0, data.shape)
    cond = np.repeat([3, 8, 5], 4)
    got = M.condition_psth_corr_per_neuron(model, data, cond)
    for n in range(2):
        pm = np.concatenate([model[cond == c, :, n].mean(0) for c in np.unique(cond)])
        pd = np.concatenate([data[cond == c, :, n].mean(0) for c in np.unique(cond)])
        assert got[n] == pytest.approx(stats.pearsonr(pm, pd)[0])


def test_ceiling_extrapolated_from_more_trials():
    """Generalised Spearman-Brown: measured on 4x the trials, extrapolated to the scored
    count, the ceiling is on target for every neuron and less noisy."""
    mu = _mu(T=60, N=4)
    rng = np.random.default_rng(8)
    n_val, n_all = 30, 120
    true_r, small, big = [], [], []
    for _ in range(40):
        data = rng.poisson(np.broadcast_to(mu * DT, (n_all,) + mu.shape)) / DT
        val = data[:n_val]
        true_r.append(M.psth_correlation(np.broadcast_to(mu, val.shape), val))
        small.append(M.psth_noise_ceiling(val, n_splits=6, seed=1)["psth_corr"]["per_neuron"])
        big.append(M.psth_noise_ceiling(data, n_splits=6, seed=1, n_target=n_val)["psth_corr"]["per_neuron"])
    np.testing.assert_allclose(np.mean(big, 0), np.mean(true_r, 0), atol=0.03)
    assert np.std(big, 0)[0] < np.std(small, 0)[0]
    # n_target = all trials reproduces the default
    a = M.psth_noise_ceiling(data, n_splits=3, seed=2, n_target=n_all)["psth_corr"]["per_neuron"]
    np.testing.assert_allclose(a, M.psth_noise_ceiling(data, n_splits=3, seed=2)["psth_corr"]["per_neuron"])
    # closed form of the extrapolation
    c = M.psth_noise_ceiling(data, n_splits=3, seed=2, n_target=n_val)["psth_corr"]
    r, k = c["split_half_r"], 2.0 * n_val / n_all
    np.testing.assert_allclose(c["reliability"], np.clip(k * r / (1 + (k - 1) * r), 0, 1))
