"""The deterministic synthetic 'teacher' session."""
from __future__ import annotations

import time

import numpy as np
import pytest

from eirnn.data import INPUT_CHANNELS, load_mat, make_synthetic_session, save_mat
from eirnn.data.synthetic import make_teacher, simulate_teacher

CH = {c: i for i, c in enumerate(INPUT_CHANNELS)}


@pytest.fixture(scope="module")
def timed_default():
    t0 = time.perf_counter()
    s = make_synthetic_session()
    return s, time.perf_counter() - t0


@pytest.fixture(scope="module")
def default(timed_default):
    return timed_default[0]


def test_sizes_and_schema(default, timed_default):
    s = default
    assert (s.n_trials, s.n_time, s.n_neurons, s.n_inputs) == (1000, 219, 54, 14)
    assert s.is_excitatory.sum() == 41 and (~s.is_excitatory).sum() == 13
    assert np.all(s.is_excitatory[:41]) and not np.any(s.is_excitatory[41:])
    assert s.bin_size_ms == 25.0
    assert s.time_axis_ms[0] == -187.5 and s.time_axis_ms[-1] == 5262.5
    assert np.allclose(np.diff(s.time_axis_ms), 25.0)
    assert s.source == "synthetic(seed=0)"
    assert s.truth["rates"].shape == s.rates.shape
    assert timed_default[1] < 15.0  # ~2 s on 2 cores; generous for loaded CI machines


def test_conditions_balanced_and_coded_like_real_data(default):
    s = default
    counts = np.bincount(s.condition_ids())
    assert len(counts) == 32 and counts.min() >= 30 and counts.max() <= 32
    assert set(np.unique(s.trial_location)) == {1, 2, 3, 4}
    assert set(np.unique(s.trial_identity)) == {1, 2, 3}
    assert set(np.unique(s.trial_reward)) == {0, 1}
    assert set(np.unique(s.trial_probability)) == {0, 1}
    assert np.all(s.trial_salience[s.trial_identity != 3] == 0)
    assert set(np.unique(s.trial_salience[s.trial_identity == 3])) == {1, 2}


def test_counts_integer_and_rates_in_range(default):
    s = default
    counts = s.rates * s.bin_size_ms / 1000.0
    finite = np.isfinite(counts)
    assert np.array_equal(counts[finite], np.round(counts[finite]))
    assert np.all(counts[finite] >= 0)
    mean = np.nanmean(s.rates)
    assert 5.0 <= mean <= 20.0
    assert np.nanmax(s.rates) < 1000.0
    true = s.truth["rates"]
    assert np.nanmax(true) < 300.0 and np.nanmin(true) > 0
    assert abs(np.nanmean(true) - mean) < 0.5  # Poisson noise is unbiased
    per_neuron = np.nanmean(s.rates, axis=(0, 1))
    assert per_neuron.min() > 0.5 and per_neuron.max() < 60


def test_nan_padding_only_at_trial_ends(default):
    s = default
    valid = np.isfinite(s.rates).all(2)
    assert np.array_equal(np.isfinite(s.rates), np.repeat(valid[:, :, None], s.n_neurons, 2))
    assert np.array_equal(np.isfinite(s.inputs).all(2), valid)
    assert np.array_equal(np.isfinite(s.truth["rates"]), np.isfinite(s.rates))
    n_valid = valid.sum(1)
    prefix = np.arange(s.n_time)[None, :] < n_valid[:, None]
    assert np.array_equal(valid, prefix)  # valid bins are a prefix of every trial
    assert np.array_equal(valid, s.time_axis_ms[None, :] < s.trial_duration_ms[:, None])
    assert np.all(s.trial_duration_ms >= 3000) and np.all(s.trial_duration_ms <= 5400)
    frac_missing = 1 - valid.mean()
    assert 0.05 < frac_missing < 0.35
    assert not np.isnan(make_synthetic_session(n_trials=40, nan_pad=False).rates).any()


def test_task_structure(default):
    s, tr = default, default.truth
    u = np.nan_to_num(s.inputs)
    t = s.time_axis_ms[None, :]
    fix = u[:, :, CH["fixation_on"]] > 0.5
    assert np.array_equal(fix, (t >= 0) & (t < tr["t_go_ms"][:, None]))
    loc = u[:, :, CH["target_loc_1"]:CH["target_loc_4"] + 1]
    shown = loc.sum(2)
    assert shown.max() == 1.0  # one-hot
    on = shown > 0.5
    assert np.array_equal(on, (t >= tr["t_target_ms"][:, None]) & (t < tr["t_saccade_ms"][:, None]))
    assert np.array_equal(loc.argmax(2)[on], np.broadcast_to(s.trial_location[:, None] - 1, on.shape)[on])
    assert np.all(np.diff(np.stack([tr["t_target_ms"], tr["t_go_ms"], tr["t_saccade_ms"],
                                    tr["t_reward_ms"]]), axis=0) > 0)
    assert np.all(u[:, :, CH["reward_on"]].sum(1) == 8)  # 200 ms of reward
    face = u[:, :, CH["is_face"]] > 0.5
    assert np.array_equal(face.any(1), s.trial_identity == 1)
    # eye: z-scored over finite bins; after the saccade it points at the target
    for c in ("eye_x", "eye_y"):
        e = s.inputs[:, :, CH[c]]
        assert abs(np.nanmean(e)) < 1e-9 and abs(np.nanstd(e) - 1) < 1e-9
    k = np.flatnonzero(s.trial_location == 1)[0]  # 45 deg: up-right
    after = (s.time_axis_ms > tr["t_saccade_ms"][k] + 50) & np.isfinite(s.rates[k, :, 0])
    assert np.all(s.eye_raw[k, after, 0] > 4) and np.all(s.eye_raw[k, after, 1] > 4)


def test_teacher_dale_balance_stability(default):
    tr = default.truth
    W, exc = tr["W_rec"], tr["is_excitatory_all"]
    M = W.shape[0]
    assert M == 41 + 40 + 13 + 10
    assert np.all(W[:, exc] >= 0) and np.all(W[:, ~exc] <= 0)
    assert np.all(np.diag(W) == 0)
    assert np.array_equal(tr["recorded_index"], np.r_[np.arange(41), 81 + np.arange(13)])
    assert np.array_equal(exc[tr["recorded_index"]], default.is_excitatory)
    # E/I balance: every core row receives comparable total excitation and inhibition
    core = ~np.isin(tr["unit_class"], ["relay", "delayed_inh"])
    e_in, i_in = W[:, exc & core].sum(1), -W[:, ~exc & core].sum(1)
    ratio = i_in[core] / e_in[core]
    assert np.all((ratio > 0.5) & (ratio < 2.0))
    # linearised map x -> (1-a)x + aWx is contracting (gain <= 1), and simulation forgets
    a = tr["alpha"]
    lam = np.linalg.eigvals(W)
    assert np.max(np.abs(1 - a + a * lam)) < 1.0
    assert tr["map_spectral_radius"] < 1.0
    rng = np.random.default_rng(0)
    x = rng.normal(0, 3, (2, M))
    for _ in range(300):
        x = (1 - a) * x + a * (np.logaddexp(0, x) @ W.T + tr["b"])
    assert np.abs(x[0] - x[1]).max() < 1e-6


def test_truth_rates_reproduce_from_weights(default):
    s, tr = default.subset(np.arange(20)), default.truth
    full = simulate_teacher(tr, s.inputs, s.truth["context"], s.truth["trial_gain"], s.bin_size_ms)
    rec = full[:, :, tr["recorded_index"]]
    valid = np.isfinite(s.truth["rates"])
    assert np.allclose(rec[valid], s.truth["rates"][valid])


def test_rich_selective_psths(default):
    s, tr = default, default.truth
    true = tr["rates"]
    t = s.time_axis_ms
    # location tuning in the visual epoch (target on, before go)
    win = (t[None, :] >= tr["t_target_ms"][:, None] + 50) & (t[None, :] < tr["t_go_ms"][:, None])
    loc_mean = np.stack([np.nanmean(np.where(win[s.trial_location == L, :, None],
                                             true[s.trial_location == L], np.nan), (0, 1))
                         for L in (1, 2, 3, 4)])
    tuned = loc_mean.max(0) / loc_mean.min(0) > 1.5
    assert tuned.mean() > 0.3
    # onset burst: target-aligned peak exceeds the later sustained level for some neurons
    lags = np.arange(-200, 600, 25)
    idx = np.clip(np.searchsorted(t, tr["t_target_ms"][:, None] + lags[None]), 0, len(t) - 1)
    aligned = np.take_along_axis(true, idx[:, :, None], axis=1)  # [K, lags, N]
    psth = np.nanmean(aligned, 0)
    base = psth[lags < 0].mean(0)
    peak = psth[(lags >= 25) & (lags <= 150)].max(0)
    late = psth[(lags >= 350)].mean(0)
    burst = (peak - base > 5) & (peak - late > 0.4 * (peak - base))
    assert burst.sum() >= 3
    # reward, salience and go modulate some neurons
    hi, lo = s.trial_reward == 1, s.trial_reward == 0
    post = (t > 0)[None, :, None]
    r_diff = np.abs(np.nanmean(np.where(post, true[hi], np.nan), (0, 1))
                    - np.nanmean(np.where(post, true[lo], np.nan), (0, 1)))
    assert (r_diff > 1.0).sum() >= 5
    bull = s.trial_identity == 3
    sal_diff = np.abs(np.nanmean(true[bull & (s.trial_salience == 1)], (0, 1))
                      - np.nanmean(true[bull & (s.trial_salience == 2)], (0, 1)))
    assert (sal_diff > 0.5).sum() >= 3


def test_shared_trial_to_trial_variability(default):
    s = default
    cid = s.condition_ids()
    counts = np.nansum(s.rates[:, 40:120] * 0.025, axis=1)  # spikes per trial, [K, N]
    resid = counts.copy()
    for c in np.unique(cid):
        resid[cid == c] -= resid[cid == c].mean(0)
    ev = np.linalg.eigvalsh(np.cov(resid.T))[::-1]
    rng = np.random.default_rng(0)
    shuffled = np.stack([rng.permutation(resid[:, j]) for j in range(resid.shape[1])], 1)
    ev_sh = np.linalg.eigvalsh(np.cov(shuffled.T))[::-1]
    assert ev[0] / ev.sum() > 2 * ev_sh[0] / ev_sh.sum()
    assert np.std(s.truth["trial_gain"]) > 0.05


def test_deterministic_and_seed_dependent():
    kw = dict(n_trials=60, n_time=90)
    a, b = make_synthetic_session(seed=7, **kw), make_synthetic_session(seed=7, **kw)
    c = make_synthetic_session(seed=8, **kw)
    for name in ("rates", "inputs", "trial_location", "trial_duration_ms", "eye_raw"):
        assert np.array_equal(getattr(a, name), getattr(b, name), equal_nan=True)
    for key in ("W_rec", "W_in", "rates"):
        assert np.array_equal(a.truth[key], b.truth[key], equal_nan=True)
    assert not np.array_equal(a.rates, c.rates, equal_nan=True)
    assert not np.array_equal(a.truth["W_rec"], c.truth["W_rec"])
    assert not np.array_equal(a.trial_location, c.trial_location)
    # the teacher depends on the seed only, not on the number of trials
    assert np.array_equal(make_teacher(7)["W_rec"], a.truth["W_rec"])


@pytest.mark.slow
def test_default_session_roundtrip(default, tmp_path):
    for version in ("7.3", "5"):
        back = load_mat(save_mat(default, tmp_path / f"syn{version}.mat", version=version))
        for name in ("rates", "inputs", "eye_raw", "is_excitatory", "trial_location",
                     "trial_identity", "trial_reward", "trial_salience", "trial_probability",
                     "time_axis_ms", "trial_duration_ms", "neuron_ids", "brain_area"):
            x, y = getattr(default, name), getattr(back, name)
            assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=True), (version, name)
        assert back.truth is None
