"""Issue 15: condition factors, event times and the condition- / factor-resolved metrics,
each against a hand computation on a small example."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from eirnn import metrics as M
from eirnn.baselines import TrialSet, condition_codes
from eirnn.baselines.psth import ShrunkConditionMeanPSTH, smooth_psth
from eirnn.data.conditions import condition_factors, event_onset_bins, event_times_ms, factors_from_codes
from eirnn.data.session import INPUT_CHANNELS


def _inputs(k=3, t=10):
    x = np.zeros((k, t, len(INPUT_CHANNELS)))
    ch = {c: i for i, c in enumerate(INPUT_CHANNELS)}
    x[0, 2:5, ch["fixation_on"]] = 1
    x[0, 4:, ch["target_loc_3"]] = 1
    x[0, 5:, ch["go_signal"]] = 1
    x[0, 8:9, ch["reward_on"]] = 1
    x[1, 0:, ch["go_signal"]] = 1            # on from bin 0: no observed onset
    x[1, 6:, ch["target_loc_1"]] = 1
    return x


def test_event_onsets_and_times_by_hand():
    x = _inputs()
    b = event_onset_bins(x)
    np.testing.assert_array_equal(b["fixation"], [2, np.nan, np.nan])
    np.testing.assert_array_equal(b["target"], [4, 6, np.nan])
    np.testing.assert_array_equal(b["go"], [5, np.nan, np.nan])
    np.testing.assert_array_equal(b["reward"], [8, np.nan, np.nan])
    s = SimpleNamespace(inputs=x, time_axis_ms=-37.5 + 25.0 * np.arange(10), bin_size_ms=25.0)
    ms = event_times_ms(s)
    # left edge of the onset bin: centre -37.5 + 25 t, minus 12.5
    assert ms["target"][0] == pytest.approx(-50 + 100) and ms["target"][1] == pytest.approx(-50 + 150)
    assert np.isnan(ms["go"][1])
    # a session that carries its own events is read as is
    s.events = {"target": [1.0, 2.0, 3.0]}
    np.testing.assert_array_equal(event_times_ms(s)["target"], [1, 2, 3])


def test_condition_factors_and_codes_round_trip():
    s = SimpleNamespace(trial_location=np.array([1, 4, 2]), trial_identity=np.array([3, 1, 2]),
                        trial_reward=np.array([1, 0, 1]), trial_salience=np.array([2, 0, 0]))
    f = condition_factors(s)
    assert list(f) == ["location", "identity", "salience", "reward"]
    np.testing.assert_array_equal(f["salience"], [2, 0, 0])
    back = factors_from_codes(condition_codes(s))
    for k in f:
        np.testing.assert_array_equal(back[k], f[k])


def test_align_to_events_by_hand():
    x = np.arange(2 * 6 * 1, dtype=float).reshape(2, 6, 1)   # trial 0: 0..5, trial 1: 6..11
    m = np.ones_like(x, bool)
    m[1, 3, 0] = False
    xa, ma, seg = M.align_to_events(x, m, {"a": np.array([1.0, 4.0]), "b": np.array([np.nan, 0.0])},
                                    {"a": (-1, 2), "b": (0, 2)})
    np.testing.assert_array_equal(seg, [0, 0, 0, 1, 1])
    # trial 0: event a at bin 1 -> bins 0,1,2; event b missing
    np.testing.assert_array_equal(xa[0, :3, 0], [0, 1, 2])
    np.testing.assert_array_equal(ma[0, :, 0], [1, 1, 1, 0, 0])
    # trial 1: a at 4 -> bins 3 (masked), 4, 5; b at 0 -> bins 0, 1
    np.testing.assert_array_equal(ma[1, :, 0], [0, 1, 1, 1, 1])
    np.testing.assert_array_equal(xa[1, 1:, 0], [10, 11, 6, 7])


def test_smoothing_is_normalised_and_per_segment():
    p = np.array([[1.0], [1.0], [5.0], [3.0], [3.0]])
    v = np.array([[True], [True], [False], [True], [True]])
    s = M.smooth_psths(p, v, 1.0, seg=np.array([0, 0, 0, 1, 1]))
    np.testing.assert_allclose(s[[0, 1, 3, 4], 0], [1, 1, 3, 3])     # constants stay, no leak across segments
    assert s[2, 0] == 0.0
    np.testing.assert_array_equal(M.smooth_psths(p, v, 0.0), np.where(v, p, 0.0))


def test_condition_r2_corr_and_marginal_by_hand():
    # 4 trials, 2 conditions (also the 2 levels of a factor), 3 bins, 1 neuron, no smoothing
    d = np.array([[1, 2, 3], [3, 2, 1], [2, 2, 2], [4, 4, 4]], float)[..., None]
    p = np.array([[1, 1, 1], [1, 1, 1], [3, 3, 3], [3, 3, 3]], float)[..., None]
    m = np.ones_like(d, bool)
    cond = np.array([0, 0, 1, 1])
    sc = M.aligned_condition_scores(p, d, m, cond)
    D = np.array([[2, 2, 2], [3, 3, 3]], float)      # condition means of the data
    P = np.array([[1, 1, 1], [3, 3, 3]], float)
    r2 = 1 - ((D - P) ** 2).sum() / ((D - D.mean()) ** 2).sum()
    assert sc["condition_psth_r2"][0] == pytest.approx(r2)
    assert sc["condition_psth_corr"][0] == pytest.approx(np.corrcoef(D.ravel(), P.ravel())[0, 1])
    # marginal: level mean minus the grand mean of all trials, correlated over (level, t)
    rd = D - d[:, :, 0].mean(0)
    rp = P - p[:, :, 0].mean(0)
    got = M.marginal_corr_per_neuron(p, d, m, cond)[0]
    assert got == pytest.approx(np.corrcoef(rd.ravel(), rp.ravel())[0, 1])
    # an excluded level is left out of the grand mean and of the levels
    r, v, lv = M.marginal_responses(d, m, np.array([0, 0, 1, 2]), exclude=(2,))
    np.testing.assert_array_equal(lv, [0, 1])
    np.testing.assert_allclose(r[1, :, 0], 2 - (np.array([1, 2, 3]) + [3, 2, 1] + 2) / 3)


def test_dprime_auc_and_selectivity_r_by_hand():
    assert M.dprime([1, 2, 3], [4, 5, 6]) == pytest.approx(-3.0)
    # extra per-trial variance is added as its mean: pooled var = (1 + 1 + 2 + 2) / 2 = 3
    assert M.dprime([1, 2, 3], [4, 5, 6], np.full(3, 2.0), np.full(3, 2.0)) == pytest.approx(-3 / np.sqrt(3))
    assert np.isnan(M.dprime([1], [2, 3]))
    # a two-level factor is signed (positive level first); levels 0 are excluded
    r = np.array([[1.0], [2.0], [3.0], [4.0], [5.0], [6.0], [100.0]])
    lev = np.array([1, 1, 1, 2, 2, 2, 0])
    assert M.selectivity_dprime(r, lev, positive=1, exclude=(0,))[0] == pytest.approx(-3.0)
    assert M.selectivity_dprime(r, lev, positive=2, exclude=(0,))[0] == pytest.approx(3.0)
    # multi-level: mean |d'| one-vs-rest
    lev3 = np.array([1, 1, 2, 2, 3, 3, 3])
    x = r[:, 0]
    want = np.mean([abs(M.dprime(x[lev3 == l], x[lev3 != l])) for l in (1, 2, 3)])
    assert M.selectivity_dprime(r, lev3)[0] == pytest.approx(want)
    # AUC: a = [1, 2, 3] vs b = [2, 4]: P(a > b) = 1/6, ties 1/6 -> AUC 0.25 -> -0.5
    r2 = np.array([[1.0], [2.0], [3.0], [2.0], [4.0]])
    assert M.selectivity_auc(r2, np.array([1, 1, 1, 0, 0]), positive=1)[0] == pytest.approx(-0.5)
    a, b = np.array([0.1, 0.5, -0.2, 0.9, np.nan]), np.array([0.0, 0.4, -0.1, 1.2, 3.0])
    rr, p, n = M.selectivity_r(a, b)
    assert n == 4 and rr == pytest.approx(np.corrcoef(a[:4], b[:4])[0, 1]) and 0 < p < 1


def test_poisson_variance_of_a_predictor_and_draws():
    # a predictor with constant rates per level: d' only from the Poisson variance r / dur
    r = np.array([[10.0], [10.0], [20.0], [20.0]])
    dur = np.full((4, 1), 0.5)
    sel = M.selectivity_dprime(r, np.array([1, 1, 0, 0]), positive=1, poisson_dur_s=dur)[0]
    assert sel == pytest.approx((10 - 20) / np.sqrt((20 + 40) / 2))
    draws = M.poisson_rate_draws(np.full((200, 1), 10.0), np.full((200, 1), 0.5), 50, seed=1)
    assert draws.shape == (50, 200, 1) and draws.mean() == pytest.approx(10.0, rel=0.05)
    assert np.allclose(draws * 0.5, np.round(draws * 0.5))   # whole spike counts


def test_factor_ceiling_is_one_without_noise_and_small_for_pure_noise():
    rng = np.random.default_rng(0)
    k, w, n = 64, 8, 6
    cond = np.arange(k) % 8
    loc = cond % 4 + 1
    rew = (cond // 4) % 2
    tuning = rng.normal(size=(8, w, n)) * 5 + 20
    d = tuning[cond]                                      # every trial of a condition identical
    m = np.ones(d.shape, bool)
    win = d.mean(1) + rng.normal(scale=1e-3, size=(k, n))  # tiny noise so variances are > 0
    c = M.factor_noise_ceiling(d, m, cond, {"location": loc, "reward": rew}, win, n_splits=4,
                               positive={"reward": 1})
    assert c["condition_psth_r2"]["mean"] == pytest.approx(1.0)
    assert c["marginal_corr_location"]["mean"] == pytest.approx(1.0)
    assert c["selectivity_r_location"]["mean"] > 0.99
    noise = rng.poisson(5.0, size=(k, w, n)).astype(float)
    c = M.factor_noise_ceiling(noise, m, cond, {"location": loc}, noise.mean(1), n_splits=4)
    assert c["condition_psth_r2"]["mean"] < 0.3


def test_shrunk_condition_mean_by_hand():
    rng = np.random.default_rng(0)
    rates = rng.poisson(3.0, size=(12, 5, 2)).astype(float)
    cond = np.array([0] * 8 + [1] * 4)
    t = TrialSet(np.zeros((12, 5, 1)), rates, np.ones(rates.shape, bool), cond, 25.0)
    b = ShrunkConditionMeanPSTH(sigmas=(1.0,), kappas=(4.0,)).fit(t)
    grand = smooth_psth(rates.mean(0), 1.0)
    want1 = 4 / 8 * smooth_psth(rates[8:].mean(0), 1.0) + 4 / 8 * grand
    np.testing.assert_allclose(b.predict(t.subset(np.array([9])))[0], want1)
    np.testing.assert_allclose(b.predict(TrialSet(np.zeros((1, 5, 1)), rates[:1], np.ones((1, 5, 2), bool),
                                                   np.array([7]), 25.0))[0], grand)   # unseen condition
    # the grid search picks the pure condition mean when conditions differ a lot and trials are clean
    big = np.repeat(np.array([[1.0], [50.0]])[:, None, :] * np.ones((1, 5, 2)), 10, axis=0)
    tb = TrialSet(np.zeros((20, 5, 1)), big, np.ones(big.shape, bool), np.repeat([0, 1], 10), 25.0)
    sb = ShrunkConditionMeanPSTH(sigmas=(0.0, 2.0), kappas=(0.0, 10.0)).fit(tb)
    assert sb.kappa_ == 0.0


def test_condition_view_perfect_predictor():
    from eirnn.condition_scores import ConditionView, condition_config

    rng = np.random.default_rng(3)
    k, t, n = 48, 40, 5
    x = np.zeros((k, t, len(INPUT_CHANNELS)))
    loc = np.arange(k) % 4 + 1
    ident = (np.arange(k) // 4) % 3 + 1
    rew = (np.arange(k) // 12) % 2
    sal = np.where(ident == 3, (np.arange(k) // 24) % 2 + 1, 0)
    tgt = rng.integers(8, 14, size=k)
    for i in range(k):
        x[i, 2:, 0] = 1
        x[i, tgt[i]:, loc[i]] = 1
        x[i, tgt[i] + 8:, 5] = 1
    s = SimpleNamespace(trial_location=loc, trial_identity=ident, trial_reward=rew, trial_salience=sal)
    gain = np.array([0.0, 2.0, 5.0, 10.0, 20.0])           # neurons differ in location tuning
    lam = 10 + gain * loc[:, None, None] * np.ones((k, t, n)) + rng.uniform(0, 5, size=(1, t, n))
    data = rng.poisson(lam * 0.025) / 0.025
    trials = TrialSet(x, data, np.ones(data.shape, bool), condition_codes(s), 25.0)
    cfg = {"windows_ms": {"target": [-100, 200], "go": [-100, 200]}, "smooth_sigma_ms": 25.0}
    view = ConditionView(trials, cfg)
    out, per = view.scores(data)
    assert out["condition_psth_r2"] == pytest.approx(1.0) and out["marginal_corr_location"] == pytest.approx(1.0)
    out_lam, _ = view.scores(lam, lam)
    assert out_lam["selectivity_r_location"] > 0.5 and np.isfinite(out_lam["selectivity_auc_r_reward"])
    with pytest.raises(ValueError):
        condition_config({"windows_ms": {"target": [100, 0]}})
    with pytest.raises(ValueError):
        condition_config({"nope": 1})


def test_condition_figures_grid_and_scatter():
    from eirnn.report.condition_figures import condition_psth_grid, selectivity_scatter

    rng = np.random.default_rng(0)
    k, w, n = 16, 10, 3
    xa = rng.uniform(5, 20, size=(k, w, n))
    ma = np.ones(xa.shape, bool)
    seg = np.repeat([0, 1], 5)
    groups = np.arange(k) % 4 + 1
    fig = condition_psth_grid(xa, xa + 1, ma, seg, {"target": [-50, 75], "go": [-50, 75]}, 25.0, groups,
                              {g: f"loc {g}" for g in range(1, 5)}, np.array([True, False, True]), n_neurons=2)
    assert len(fig.axes) == 2 * 4 and fig.axes[0].get_title() == "loc 1"
    labels = [t.get_text() for t in fig.axes[-1].get_xticklabels()]
    assert "target" in labels and "go" in labels      # event markers named on the ms axis
    d = {"location": np.array([0.1, 0.5, 0.9, 0.3]), "reward": np.array([0.0, 0.2, -0.1, 0.4])}
    m = {"location": np.array([0.2, 0.4, 1.0, 0.2]), "reward": np.array([0.1, 0.1, 0.0, 0.3])}
    sc = selectivity_scatter(d, m, np.array([True, True, False, False]))
    r = np.corrcoef(d["location"], m["location"])[0, 1]
    assert sc.axes[0].get_title().startswith(f"location: r = {r:.2f}, p = ")
