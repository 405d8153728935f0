"""Metrics against scipy references, closed forms and Poisson simulations."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from eirnn import metrics as M

DT = 0.025


def _poisson_data(B=60, T=30, N=5, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(T)
    lam = 0.5 + 1.5 * (1 + np.sin(2 * np.pi * t[:, None] / T + rng.uniform(0, 6, N)[None, :]))
    lam = np.broadcast_to(lam, (B, T, N)).copy()  # expected counts per bin
    counts = rng.poisson(lam)
    return lam / DT, counts / DT, rng  # rates and data in sp/s


def _mask(shape, seed=1, p=0.2):
    return np.random.default_rng(seed).random(shape) > p


# --------------------------------------------------------------------------- PSTH correlation


def test_psth_correlation_matches_pearsonr_with_mask():
    true, data, _ = _poisson_data(B=10)
    model = true * 1.3 + np.random.default_rng(5).normal(0, 5, true.shape)
    mask = _mask(data.shape)
    mask[:, :4, 2] = False  # neuron 2 loses its first bins entirely
    got = M.psth_correlation(model, np.where(mask, data, np.nan), mask)
    for n in range(data.shape[2]):
        k = mask[:, :, n]
        valid = k.any(0)
        pm = np.array([model[k[:, t], t, n].mean() for t in np.flatnonzero(valid)])
        pd = np.array([data[k[:, t], t, n].mean() for t in np.flatnonzero(valid)])
        assert got[n] == pytest.approx(stats.pearsonr(pm, pd)[0], rel=1e-10)
    assert M.psth_corr(model, data, mask) == pytest.approx(np.mean(got))


def test_psth_correlation_perfect_and_affine():
    true, data, _ = _poisson_data(B=8)
    np.testing.assert_allclose(M.psth_correlation(data, data), 1.0)
    np.testing.assert_allclose(M.psth_correlation(3 * data + 2, data), 1.0)


def test_psth_correlation_constant_is_nan_and_torch_input():
    _, data, _ = _poisson_data(B=8)
    model = data.copy()
    model[:, :, 1] = 7.0
    r = M.psth_correlation(torch.tensor(model), torch.tensor(data))
    assert np.isnan(r[1]) and np.all(r[[0, 2, 3, 4]] == pytest.approx(1.0))
    assert M.psth_corr(model, data) == pytest.approx(1.0)
    assert isinstance(M.psth_corr(model, data), float)
    assert np.isnan(M.psth_corr(np.ones((2, 3, 1)), np.ones((2, 3, 1))))


def test_psth_corr_by_type():
    r = np.array([0.2, np.nan, 0.6, 0.1])
    out = M.psth_corr_by_type(r, np.array([True, True, True, False]))
    assert out["all"] == pytest.approx(0.3) and out["E"] == pytest.approx(0.4)
    assert out["I"] == pytest.approx(0.1)
    assert np.isnan(M.psth_corr_by_type(r, np.ones(4, bool))["I"])
    with pytest.raises(ValueError):
        M.psth_corr_by_type(r, np.ones(3, bool))


# --------------------------------------------------------------------------- bits per spike


def test_bits_per_spike_matches_scipy():
    true, data, rng = _poisson_data(B=12)
    model = true * rng.uniform(0.5, 1.5, true.shape)
    mask = _mask(data.shape, seed=3)
    k = np.round(data * DT)
    ll = stats.poisson.logpmf(k, model * DT)
    null = np.array([k[:, :, n][mask[:, :, n]].mean() for n in range(k.shape[2])])
    ll0 = stats.poisson.logpmf(k, np.broadcast_to(null, k.shape))
    spikes = (k * mask).sum()
    expected = ((ll - ll0) * mask).sum() / (spikes * math.log(2))
    got = M.bits_per_spike(model, np.where(mask, data, np.nan), mask)
    assert got == pytest.approx(expected, rel=1e-10)
    per = M.bits_per_spike_per_neuron(model, data, mask)
    exp_per = ((ll - ll0) * mask).sum((0, 1)) / ((k * mask).sum((0, 1)) * math.log(2))
    np.testing.assert_allclose(per, exp_per, rtol=1e-10)


def test_bits_per_spike_true_rates_positive_mean_model_zero():
    true, data, _ = _poisson_data(B=40)
    assert M.bits_per_spike(true, data) > 0.05
    mean_model = np.broadcast_to(data.mean(axis=(0, 1), keepdims=True), data.shape)
    assert M.bits_per_spike(mean_model, data) == pytest.approx(0.0, abs=1e-10)
    assert M.bits_per_spike(torch.tensor(true), torch.tensor(data)) == pytest.approx(
        M.bits_per_spike(true, data)
    )


def test_bits_per_spike_silent_neuron_is_nan_per_neuron():
    true, data, _ = _poisson_data(B=5, N=2)
    data[:, :, 1] = 0.0
    per = M.bits_per_spike_per_neuron(true, data)
    assert np.isfinite(per[0]) and np.isnan(per[1])
    assert np.isnan(M.bits_per_spike(true, np.zeros_like(data)))


# --------------------------------------------------------------------------- Fano factor


def test_fano_hand():
    counts = np.array([[[1.0], [0.0]], [[3.0], [0.0]], [[2.0], [0.0]]])  # [3, 2, 1]
    # bin 0: mean 2, var(ddof=1) 1 -> 0.5; bin 1: mean 0 -> excluded
    np.testing.assert_allclose(M.fano_factor(counts / DT), [0.5])
    mask = np.ones_like(counts, bool)
    mask[2, 0, 0] = False  # remaining 1, 3: mean 2, var 2 -> 1
    np.testing.assert_allclose(M.fano_factor(counts / DT, mask), [1.0])
    assert np.isnan(M.fano_factor(np.zeros((4, 3, 1)))[0])


def test_fano_poisson_data_is_one():
    _, data, _ = _poisson_data(B=200, T=40, N=4)
    ff = M.fano_factor(data)
    np.testing.assert_allclose(ff, 1.0, atol=0.05)
    np.testing.assert_allclose(M.fano_factor(data, window_bins=(10, 20)), 1.0, atol=0.1)
    np.testing.assert_allclose(
        M.fano_factor(data, window_bins=slice(10, 20)), M.fano_factor(data[:, 10:20])
    )


def test_model_fano_analytic():
    true, _, rng = _poisson_data(B=50, T=10, N=3)
    np.testing.assert_allclose(M.model_fano_factor(true), 1.0)  # no rate variability
    gain = rng.gamma(4.0, 0.25, size=(50, 1, 1))  # trial-wise gain, mean 1
    rates = true * gain
    lam = rates * DT
    expected = ((lam.var(0, ddof=1) + lam.mean(0)) / lam.mean(0)).mean(0)
    np.testing.assert_allclose(M.model_fano_factor(rates), expected, rtol=1e-12)
    np.testing.assert_allclose(M.fano_factor(rates), (lam.var(0, ddof=1) / lam.mean(0)).mean(0))


def test_model_fano_matches_simulated_counts():
    true, _, rng = _poisson_data(B=400, T=20, N=2)
    rates = true * rng.gamma(5.0, 0.2, size=(400, 1, 1))
    counts = rng.poisson(rates * DT)
    np.testing.assert_allclose(M.fano_factor(counts / DT), M.model_fano_factor(rates), rtol=0.08)


# --------------------------------------------------------------------------- condition PSTHs


def _conditions_data(seed=0):
    rng = np.random.default_rng(seed)
    B, T, N, C = 24, 10, 3, 3
    cond = np.repeat(np.arange(C), B // C)
    base = rng.uniform(1, 3, (C, T, N))
    data = rng.poisson(base[cond]) / DT
    return base[cond] / DT, data, cond


def test_condition_psth_r2_and_corr_reference():
    true, data, cond = _conditions_data()
    rng = np.random.default_rng(9)
    model = true + rng.normal(0, 10, true.shape)
    mask = _mask(data.shape, seed=4, p=0.1)
    r2 = M.condition_psth_r2_per_neuron(model, np.where(mask, data, np.nan), cond, mask)
    cr = M.condition_psth_corr_per_neuron(model, data, cond, mask)
    for n in range(data.shape[2]):
        pm, pd = [], []
        for c in np.unique(cond):
            for t in range(data.shape[1]):
                k = (cond == c) & mask[:, t, n]
                if k.any():
                    pm.append(model[k, t, n].mean())
                    pd.append(data[k, t, n].mean())
        pm, pd = np.array(pm), np.array(pd)
        assert r2[n] == pytest.approx(1 - ((pd - pm) ** 2).sum() / ((pd - pd.mean()) ** 2).sum())
        assert cr[n] == pytest.approx(stats.pearsonr(pm, pd)[0])
    assert M.condition_psth_r2(model, data, cond, mask) == pytest.approx(np.mean(r2))
    assert M.condition_psth_corr(model, data, cond, mask) == pytest.approx(np.mean(cr))


def test_condition_psth_r2_closed_forms():
    _, data, cond = _conditions_data(seed=1)
    np.testing.assert_allclose(M.condition_psth_r2_per_neuron(data, data, cond), 1.0)
    np.testing.assert_allclose(M.condition_psth_corr_per_neuron(2 * data, data, cond), 1.0)
    mean_model = np.broadcast_to(data.mean(axis=(0, 1), keepdims=True), data.shape)
    np.testing.assert_allclose(M.condition_psth_r2_per_neuron(mean_model, data, cond), 0.0, atol=1e-12)
    with pytest.raises(ValueError):
        M.condition_psth_r2(data, data, cond[:-1])


# --------------------------------------------------------------------------- noise ceiling


def test_split_half_ceiling_noise_free_is_one():
    true, _, _ = _poisson_data(B=10, N=3)
    out = M.split_half_ceiling(true, n_splits=5)
    np.testing.assert_allclose(out["per_neuron"], 1.0)
    assert out["mean"] == pytest.approx(1.0)


def test_split_half_ceiling_poisson():
    true, data, _ = _poisson_data(B=40, N=4)
    cond = np.arange(40) % 4
    out = M.split_half_ceiling(torch.tensor(data), conditions=cond, n_splits=10, seed=3)
    per, raw = out["per_neuron"], out["split_half_r"]
    assert per.shape == (4,) and np.all((raw < per) & (per < 1.0)) and np.all(raw > 0.3)
    np.testing.assert_allclose(per, (2 * raw / (1 + raw)), atol=0.05)  # small split-to-split spread
    # close to the correlation of the full-data PSTH with the true rates
    assert out["mean"] == pytest.approx(M.psth_corr(true, data), abs=0.1)
    again = M.split_half_ceiling(data, conditions=cond, n_splits=10, seed=3)
    np.testing.assert_allclose(again["per_neuron"], per)


def test_split_half_ceiling_mask_and_errors():
    _, data, _ = _poisson_data(B=9, N=2)
    mask = _mask(data.shape, seed=2)
    out = M.split_half_ceiling(np.where(mask, data, np.nan), mask=mask, n_splits=4)
    assert np.all(np.isfinite(out["per_neuron"]))
    with pytest.raises(ValueError):
        M.split_half_ceiling(data[:1])
    with pytest.raises(ValueError):
        M.split_half_ceiling(data, conditions=np.zeros(3))


# --------------------------------------------------------------------------- shape errors


@pytest.mark.parametrize(
    "fn", [M.psth_correlation, M.psth_corr, M.bits_per_spike, M.bits_per_spike_per_neuron]
)
def test_shape_errors(fn):
    a = np.ones((2, 3, 4))
    with pytest.raises(ValueError):
        fn(a, np.ones((2, 3, 5)))
    with pytest.raises(ValueError):
        fn(a[0], a[0])
    with pytest.raises(ValueError):
        fn(a, a, np.ones((2, 3), bool))
    with pytest.raises(ValueError):
        M.fano_factor(a[0])
