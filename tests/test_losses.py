"""Losses: closed forms, independent numpy references, masking, gradients."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from eirnn.losses import (
    activity_regularization,
    euclidean_trial_cost,
    hybrid_neuron_loss,
    masked_psth,
    neuron_loss,
    neuron_loss_terms,
    poisson_neuron_loss,
    poisson_trial_cost,
    population_trajectory,
    sinkhorn_log,
    smooth_trajectory,
    trial_loss,
    weight_l2,
    zscore_across_trials,
)

F64 = torch.float64


def _data(B=6, T=15, N=4, seed=0, p_mask=0.25):
    g = torch.Generator().manual_seed(seed)
    model = torch.rand(B, T, N, generator=g, dtype=F64) * 30 + 1
    target = torch.poisson(torch.rand(B, T, N, generator=g, dtype=F64) * 2, generator=g) / 0.025
    mask = torch.rand(B, T, N, generator=g) > p_mask
    return model, target, mask


def _garbage(x, mask, value):
    return torch.where(mask, x, torch.full_like(x, value))


# --------------------------------------------------------------------------- masked_psth


def test_masked_psth_hand():
    x = torch.tensor([[[1.0], [2.0]], [[3.0], [100.0]]])  # [B=2, T=2, N=1]
    mask = torch.tensor([[[True], [True]], [[True], [False]]])
    psth, valid = masked_psth(x, mask)
    torch.testing.assert_close(psth, torch.tensor([[2.0], [2.0]]))
    assert valid.all()
    psth, valid = masked_psth(x, torch.zeros_like(mask))
    assert not valid.any() and torch.all(psth == 0)


# --------------------------------------------------------------------------- neuron_loss


def _neuron_terms_numpy(model, target, mask, ls=0.1, lv=0.05):
    """Loop-based reference of L_neuron (independent of the torch code)."""
    m, d, k = model.numpy(), target.numpy(), mask.numpy()
    _, T, N = m.shape
    M = np.full((T, N), np.nan)
    D = np.full((T, N), np.nan)
    for t in range(T):
        for n in range(N):
            sel = k[:, t, n]
            if sel.any():
                M[t, n] = m[sel, t, n].mean()
                D[t, n] = d[sel, t, n].mean()
    corr, mv, dv = [], [], []
    for n in range(N):
        v = ~np.isnan(D[:, n])
        if not v.any():
            continue
        mc, dc = M[v, n] - M[v, n].mean(), D[v, n] - D[v, n].mean()
        r = (mc @ dc) / (max(np.linalg.norm(mc), 1e-6) * max(np.linalg.norm(dc), 1e-6))
        corr.append(1 - r)
        mv.append(M[v, n].var())
        dv.append(D[v, n].var())
    valid = ~np.isnan(D)
    scale = (M[valid].mean() - D[valid].mean()) ** 2 / max(D[valid].var(), 1e-6)
    var = (np.mean(mv) - np.mean(dv)) ** 2 / (np.mean(dv) ** 2 + 1e-6)
    return dict(corr=np.mean(corr), scale=scale, var=var, total=np.mean(corr) + ls * scale + lv * var)


def test_neuron_loss_closed_form():
    # One trial, one neuron: model PSTH = 2 * data + 1 -> r = 1.
    d = torch.tensor([1.0, 2.0, 3.0], dtype=F64).view(1, 3, 1)
    m = 2 * d + 1
    terms = neuron_loss_terms(m, d)
    var_d, var_m = 2 / 3, 8 / 3
    assert terms["corr"].item() == pytest.approx(0.0, abs=1e-12)
    assert terms["scale"].item() == pytest.approx((5 - 2) ** 2 / var_d)
    assert terms["var"].item() == pytest.approx((var_m - var_d) ** 2 / (var_d**2 + 1e-6))
    expected = 0.1 * terms["scale"].item() + 0.05 * terms["var"].item()
    assert neuron_loss(m, d).item() == pytest.approx(expected)


def test_neuron_loss_matches_reference_and_pearson():
    model, target, mask = _data()
    mask[:, :3, 1] = False  # a neuron with fewer valid bins
    mask[:, :, 3] = False  # a neuron with no valid bin at all: excluded
    ref = _neuron_terms_numpy(model, target, mask)
    got = neuron_loss_terms(model, target, mask)
    for key in ref:
        assert got[key].item() == pytest.approx(ref[key], rel=1e-10)
    # L_corr = mean_n (1 - Pearson) for non-degenerate neurons
    pm, valid = masked_psth(model, mask)
    pd, _ = masked_psth(target, mask)
    rs = [stats.pearsonr(pm[valid[:, n], n], pd[valid[:, n], n])[0] for n in range(3)]
    assert got["corr"].item() == pytest.approx(np.mean(1 - np.array(rs)), rel=1e-10)


def test_neuron_loss_perfect_fit():
    _, target, mask = _data(seed=1)
    terms = neuron_loss_terms(target.clone(), target, mask)
    for key in ("corr", "scale", "var", "total"):
        assert terms[key].item() == pytest.approx(0.0, abs=1e-10)


def test_neuron_loss_flat_model_gives_corr_zero_and_finite_grad():
    _, target, mask = _data(seed=2)
    flat = torch.full_like(target, 5.0, requires_grad=True)
    terms = neuron_loss_terms(flat, target, mask)
    assert terms["corr"].item() == pytest.approx(1.0)
    terms["total"].backward()
    assert torch.isfinite(flat.grad).all()


@pytest.mark.parametrize(
    "loss_fn",
    [
        neuron_loss,
        poisson_neuron_loss,
        hybrid_neuron_loss,
        lambda m, t, k: trial_loss(m, t, k),
        lambda m, t, k: trial_loss(m, t, k, distance="poisson"),
        lambda m, t, k: trial_loss(m, t, k, smooth_sigma_bins=0.0),
        lambda m, t, k: activity_regularization(m, k),
    ],
    ids=["neuron", "poisson", "hybrid", "trial_euc", "trial_poisson", "trial_nosmooth", "activity"],
)
def test_masked_garbage_changes_nothing(loss_fn):
    model, target, mask = _data(seed=3)
    mask[0, 5:, :] = False  # a shorter trial
    results = []
    for value in (0.0, float("nan"), 1e6):
        m = _garbage(model, mask, value).requires_grad_()
        t = _garbage(target, mask, value if value != 1e6 else -7.0)
        loss = loss_fn(m, t, mask)
        loss.backward()
        assert torch.isfinite(loss)
        assert torch.isfinite(m.grad).all()
        assert torch.all(m.grad[~mask] == 0)
        results.append((loss.detach(), m.grad.clone()))
    for loss, grad in results[1:]:
        torch.testing.assert_close(loss, results[0][0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grad, results[0][1], rtol=1e-9, atol=1e-12)


def test_mask_none_equals_all_true():
    model, target, _ = _data(seed=4)
    full = torch.ones(model.shape, dtype=torch.bool)
    for fn in (neuron_loss, poisson_neuron_loss, trial_loss):
        torch.testing.assert_close(fn(model, target), fn(model, target, full))


# --------------------------------------------------------------------------- Poisson losses


def test_poisson_loss_matches_scipy_logpmf():
    model, target, mask = _data(seed=5)
    dt = 0.025
    lam, k = (model * dt).numpy(), np.round((target * dt).numpy())
    full = -stats.poisson.logpmf(k, lam)[mask.numpy()].mean()
    got_full = poisson_neuron_loss(model, target, mask, eps=0.0, include_constant=True)
    assert got_full.item() == pytest.approx(full, rel=1e-10)
    const = math.fsum(np.vectorize(math.lgamma)(k + 1)[mask.numpy()]) / mask.sum().item()
    got = poisson_neuron_loss(model, target, mask, eps=0.0)
    assert got.item() == pytest.approx(full - const, rel=1e-10)


def test_poisson_loss_minimised_at_target():
    _, target, mask = _data(seed=6)
    m = (target + 1.0).clone().requires_grad_()
    t = target + 1.0  # strictly positive rates
    poisson_neuron_loss(m, t, mask, eps=0.0).backward()
    assert m.grad.abs().max().item() < 1e-12


def test_hybrid_is_convex_combination():
    model, target, mask = _data(seed=7)
    p = poisson_neuron_loss(model, target, mask)
    n = neuron_loss(model, target, mask)
    for w in (0.0, 0.3, 1.0):
        got = hybrid_neuron_loss(model, target, mask, poisson_weight=w)
        assert got.item() == pytest.approx(w * p.item() + (1 - w) * n.item(), rel=1e-12)
    with pytest.raises(ValueError):
        hybrid_neuron_loss(model, target, mask, poisson_weight=1.5)


# --------------------------------------------------------------------------- trial loss pieces


def test_population_trajectory_and_zscore():
    model, _, mask = _data(seed=8)
    mask[2, 4, :] = False
    p, valid = population_trajectory(model, mask)
    x, k = model.numpy(), mask.numpy()
    for b in range(model.shape[0]):
        for t in range(model.shape[1]):
            if k[b, t].any():
                assert p[b, t].item() == pytest.approx(x[b, t, k[b, t]].mean())
    assert not valid[2, 4]
    z = zscore_across_trials(p, valid).numpy()
    pn, vn = p.numpy(), valid.numpy()
    for t in range(model.shape[1]):
        vals = pn[vn[:, t], t]
        np.testing.assert_allclose(z[vn[:, t], t], (vals - vals.mean()) / vals.std(), rtol=1e-10)
        assert np.all(z[~vn[:, t], t] == 0)


def test_smoothing_normalised_convolution():
    T, sigma = 12, 1.5
    p = torch.full((2, T), 4.0, dtype=F64)
    valid = torch.ones(2, T, dtype=torch.bool)
    valid[0, 3:6] = False
    s = smooth_trajectory(p, valid, sigma)
    # a constant stays constant at valid bins, edges and gaps included
    torch.testing.assert_close(s[valid], p[valid])
    assert torch.all(s[~valid] == 0)
    # against an explicit reference on random values
    x = torch.rand(2, T, dtype=F64)
    s = smooth_trajectory(x, valid, sigma).numpy()
    r = math.ceil(4 * sigma)
    for b in range(2):
        for t in range(T):
            if not valid[b, t]:
                continue
            idx = [u for u in range(t - r, t + r + 1) if 0 <= u < T and valid[b, u]]
            w = np.exp(-0.5 * ((np.array(idx) - t) / sigma) ** 2)
            assert s[b, t] == pytest.approx((w * x[b, idx].numpy()).sum() / w.sum())
    torch.testing.assert_close(smooth_trajectory(x, valid, 0.0), x)


def test_euclidean_cost_matches_direct():
    g = torch.Generator().manual_seed(9)
    zm, zd = torch.randn(5, 11, generator=g, dtype=F64), torch.randn(7, 11, generator=g, dtype=F64)
    vm, vd = torch.rand(5, 11, generator=g) > 0.2, torch.rand(7, 11, generator=g) > 0.2
    w = (vm[:, None, :] & vd[None, :, :]).to(F64)
    direct = torch.sqrt((w * (zm[:, None, :] - zd[None, :, :]) ** 2).sum(-1) + 1e-8)
    torch.testing.assert_close(euclidean_trial_cost(zm, vm, zd, vd), direct, rtol=1e-10, atol=1e-12)


def test_poisson_cost_matches_direct():
    g = torch.Generator().manual_seed(10)
    m, d = torch.rand(5, 9, generator=g, dtype=F64) + 0.1, torch.rand(6, 9, generator=g, dtype=F64)
    d[0, 0] = 0.0  # zero count -> clamped at eps
    vm, vd = torch.rand(5, 9, generator=g) > 0.2, torch.rand(6, 9, generator=g) > 0.2
    w = (vm[:, None, :] & vd[None, :, :]).to(F64)
    mm, dd = m[:, None, :].clamp_min(1e-8), d[None, :, :].clamp_min(1e-8)
    kl = dd * torch.log(dd / mm) - dd + mm
    direct = (w * kl).sum(-1) / w.sum(-1).clamp_min(1)
    torch.testing.assert_close(poisson_trial_cost(m, vm, d, vd), direct, rtol=1e-9, atol=1e-12)


def test_trial_loss_is_plan_weighted_cost_and_matches_pot():
    ot = pytest.importorskip("ot")
    model, target, mask = _data(seed=11)
    loss, plan = trial_loss(model, target, mask, epsilon=0.5, n_iters=20, return_plan=True)
    pm, valid = population_trajectory(model, mask)
    pd, _ = population_trajectory(target, mask)
    zm = zscore_across_trials(smooth_trajectory(pm, valid, 1.0), valid)
    zd = zscore_across_trials(smooth_trajectory(pd, valid, 1.0), valid)
    cost = euclidean_trial_cost(zm, valid, zd, valid)
    B = model.shape[0]
    ref_plan = ot.sinkhorn(
        np.full(B, 1 / B), np.full(B, 1 / B), cost.numpy(), 0.5,
        method="sinkhorn_log", numItermax=20, stopThr=0.0, warn=False,
    )
    np.testing.assert_allclose(plan.numpy(), ref_plan, atol=1e-12)
    assert loss.item() == pytest.approx(float((ref_plan * cost.numpy()).sum()), rel=1e-10)
    # = the lab's form: (P with rows summing to 1 * C).sum() / n
    assert loss.item() == pytest.approx(((B * plan) * cost).sum().item() / B, rel=1e-12)


def test_trial_loss_perfect_fit_and_permutation_invariance():
    model, target, _ = _data(B=8, T=20, seed=12)
    perfect = trial_loss(target.clone(), target, epsilon=0.01, n_iters=200)
    wrong = trial_loss(model, target, epsilon=0.01, n_iters=200)
    assert perfect.item() < 1e-3 < wrong.item()
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    shuffled = trial_loss(target[perm], target, epsilon=0.01, n_iters=200)
    assert shuffled.item() == pytest.approx(perfect.item(), rel=1e-8, abs=1e-10)
    shuffled = trial_loss(model[perm], target, epsilon=0.5, n_iters=20)
    assert shuffled.item() == pytest.approx(trial_loss(model, target, epsilon=0.5).item(), rel=1e-8)


def test_trial_loss_empty_trial_gets_no_mass():
    model, target, mask = _data(seed=13)
    mask[2] = False
    _, plan = trial_loss(model, target, mask, return_plan=True)
    assert plan[2].sum().item() < 1e-20 and plan[:, 2].sum().item() < 1e-20
    assert plan.sum().item() == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize("distance", ["euclidean", "poisson"])
def test_trial_loss_gradients_finite_degenerate(distance):
    _, target, mask = _data(seed=14)
    # identical model trials -> zero across-trial std at every bin
    flat = torch.full_like(target, 3.0).requires_grad_()
    loss = trial_loss(flat, target, mask, distance=distance, epsilon=0.05)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(flat.grad).all()
    # float32 path
    m32 = target.float().clone().add_(1.0).requires_grad_()
    trial_loss(m32, target.float(), mask, distance=distance).backward()
    assert torch.isfinite(m32.grad).all()


def test_trial_loss_detach_plan_gradient():
    model, target, mask = _data(seed=15)
    m1 = model.clone().requires_grad_()
    loss, plan = trial_loss(m1, target, mask, detach_plan=True, return_plan=True)
    loss.backward()
    pm, valid = population_trajectory(model, mask)
    pd, _ = population_trajectory(target, mask)
    m2 = model.clone().requires_grad_()
    pm, _ = population_trajectory(m2, mask)
    zm = zscore_across_trials(smooth_trajectory(pm, valid, 1.0), valid)
    zd = zscore_across_trials(smooth_trajectory(pd, valid, 1.0), valid)
    (plan.detach() * euclidean_trial_cost(zm, valid, zd, valid)).sum().backward()
    torch.testing.assert_close(m1.grad, m2.grad)
    # the default (through-Sinkhorn) gradient differs but is finite
    m3 = model.clone().requires_grad_()
    trial_loss(m3, target, mask).backward()
    assert torch.isfinite(m3.grad).all()


# --------------------------------------------------------------------------- regularisation


def test_weight_l2():
    w1 = torch.tensor([[1.0, -2.0], [3.0, 0.0]])
    w2 = torch.tensor([2.0])
    assert weight_l2([w1, w2], lam=0.5).item() == pytest.approx(0.5 * ((1 + 4 + 9) / 4 + 4))
    assert weight_l2([]).item() == 0.0
    w = w1.clone().requires_grad_()
    weight_l2(iter([w]), lam=1.0).backward()
    torch.testing.assert_close(w.grad, 2 * w1 / 4)


def test_activity_regularization_hand():
    rates = torch.tensor([[[5.0, 120.0], [15.0, 1e4]]])  # [1, 2, 2]
    mask = torch.tensor([[[True, True], [True, False]]])
    # valid rates: 5, 120, 15 -> mean 140/3; peaks: n0 15 (no excess), n1 120 (excess 20)
    got = activity_regularization(rates, mask, 10.0, 100.0, 0.01, 0.001)
    expected = 0.01 * (140 / 3 - 10) ** 2 + 0.001 * (0 + 20**2) / 2
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # mask=None: the 1e4 counts
    got = activity_regularization(rates)
    expected = 0.01 * ((5 + 120 + 15 + 1e4) / 4 - 10) ** 2 + 0.001 * (0 + (1e4 - 100) ** 2) / 2
    assert got.item() == pytest.approx(expected, rel=1e-6)


# --------------------------------------------------------------------------- shape errors


@pytest.mark.parametrize(
    "fn",
    [neuron_loss, poisson_neuron_loss, hybrid_neuron_loss, trial_loss],
    ids=["neuron", "poisson", "hybrid", "trial"],
)
def test_shape_errors(fn):
    a = torch.rand(2, 3, 4)
    with pytest.raises(ValueError):
        fn(a, torch.rand(2, 3, 5))
    with pytest.raises(ValueError):
        fn(a[0], a[0])
    with pytest.raises(ValueError):
        fn(a, a, torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError):
        activity_regularization(a[0])
    with pytest.raises(ValueError):
        masked_psth(a, torch.ones(1, 3, 4, dtype=torch.bool))


def test_trial_loss_bad_distance():
    a = torch.rand(2, 3, 4)
    with pytest.raises(ValueError):
        trial_loss(a, a, distance="cosine")
    with pytest.raises(ValueError):
        trial_loss(a, a, smooth_sigma_bins=-1.0)


def test_sinkhorn_reexported():
    assert callable(sinkhorn_log)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_without_host_sync():
    model, target, mask = _data(seed=16)
    fns = {
        "neuron": neuron_loss,
        "poisson": poisson_neuron_loss,
        "trial": trial_loss,
        "trial_poisson": lambda m, t, k: trial_loss(m, t, k, distance="poisson"),
        "activity": lambda m, t, k: activity_regularization(m, k),
    }
    for name, fn in fns.items():
        cpu = fn(model, target, mask)
        m = model.cuda().requires_grad_()
        t, k = target.cuda(), mask.cuda()
        torch.cuda.set_sync_debug_mode("error")
        try:
            loss = fn(m, t, k)
            loss.backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert loss.item() == pytest.approx(cpu.item(), rel=1e-9), name
        assert torch.isfinite(m.grad).all(), name


def test_neuron_loss_target_smoothing_matches_scipy_normalised_convolution():
    """L_neuron with target smoothing = the correlation term against the data PSTH
    smoothed by a (normalised, zero-padded, truncate 4 sigma) Gaussian, as scipy computes it."""
    import numpy as np
    import torch
    from scipy.ndimage import gaussian_filter1d

    from eirnn.losses import neuron_loss_terms

    g = torch.Generator().manual_seed(3)
    model = torch.rand(7, 40, 5, generator=g, dtype=torch.float64) * 20
    data = torch.poisson(torch.rand(7, 40, 5, generator=g, dtype=torch.float64) * 10, generator=g)
    sigma = 2.0
    got = neuron_loss_terms(model, data, None, 0.0, 0.0, target_smooth_sigma_bins=sigma)["corr"]
    d = data.mean(0).numpy()
    ones = np.ones(d.shape[0])
    ds = gaussian_filter1d(d, sigma, axis=0, mode="constant", truncate=4.0) / \
        gaussian_filter1d(ones, sigma, mode="constant", truncate=4.0)[:, None]
    m = model.mean(0).numpy()
    r = [np.corrcoef(m[:, n], ds[:, n])[0, 1] for n in range(5)]
    assert float(got) == pytest.approx(1.0 - np.mean(r), abs=1e-9)
    # sigma 0 is the lab's loss, and smoothing changes it
    plain = neuron_loss_terms(model, data, None, 0.0, 0.0)["corr"]
    assert float(neuron_loss_terms(model, data, None, 0.0, 0.0, target_smooth_sigma_bins=0.0)["corr"]) == float(plain)
    assert abs(float(got) - float(plain)) > 1e-3


def test_objective_rejects_negative_or_unresolved_smoothing():
    from eirnn.training.objective import FitObjective

    with pytest.raises(ValueError, match="target_smooth_sigma_bins"):
        FitObjective(neuron={"target_smooth_sigma_bins": -1.0})
    with pytest.raises(ValueError, match="auto"):
        FitObjective(neuron={"target_smooth_sigma_bins": "auto"})


# --------------------------------------------------------------------------- variance noise correction


def test_var_noise_correction_hand_computed_with_mask():
    """The corrected variance target = var_t(D_n) - (1 - 1/T_n) mean_t s2_tn / n_tn, computed
    here with numpy loops on a masked batch and read back through the var term
    (model PSTH variance 0: var = d_v^2 / (d_v^2 + 1e-6))."""
    model, target, mask = _data(B=5, T=9, N=3, seed=4, p_mask=0.3)
    mask[:, 0, 2] = False          # a bin with no valid trial
    mask[1:, 1, 2] = False         # a bin with a single valid trial: adds no noise term
    flat = torch.full_like(model, 7.0)
    y, mk = target.numpy(), mask.numpy()
    dv = []
    for n in range(3):
        ts = [t for t in range(9) if mk[:, t, n].any()]
        psth = np.array([y[mk[:, t, n], t, n].mean() for t in ts])
        noise = 0.0
        for t in ts:
            k = mk[:, t, n].sum()
            if k >= 2:
                noise += y[mk[:, t, n], t, n].var(ddof=1) / k
        noise /= len(ts)
        dv.append(max(psth.var() - (1 - 1 / len(ts)) * noise, 0.0))
    d_v = np.mean(dv)
    got = neuron_loss_terms(flat, target, mask, 0.0, 1.0, var_noise_correction=True)["var"]
    assert float(got) == pytest.approx(d_v**2 / (d_v**2 + 1e-6), rel=1e-9)
    # and without the correction: the plain population variance (the lab's term)
    d_plain = np.mean([np.array([y[mk[:, t, n], t, n].mean() for t in range(9) if mk[:, t, n].any()]).var()
                       for n in range(3)])
    plain = neuron_loss_terms(flat, target, mask, 0.0, 1.0)["var"]
    assert float(plain) == pytest.approx(d_plain**2 / (d_plain**2 + 1e-6), rel=1e-9)
    assert d_plain > d_v


def test_var_noise_correction_is_unbiased_for_poisson_trials():
    """Batches of 32 Poisson trials of known rates: the corrected data variance averages to the
    true PSTH variance, the plain one to true + the sampling noise (lambda / (dt n) per bin);
    a model that outputs the true rates gets a var term ~20x smaller with the correction."""
    from eirnn.losses.neuron import _psth_noise_variance

    g = torch.Generator().manual_seed(0)
    T, N, B, dt = 80, 10, 32, 0.025
    t = torch.linspace(0, 1, T, dtype=F64)[:, None]
    true = 12 + 4 * torch.sin(5 * t + torch.arange(N, dtype=F64)[None, :])
    true_var = float(((true - true.mean(0)) ** 2).mean())
    noise_var = (1 - 1 / T) * float(true.mean()) / (dt * B)
    model = true.expand(B, T, N)
    est_plain, est_corr, term_plain, term_corr = [], [], [], []
    for _ in range(100):
        y = torch.poisson((true * dt).expand(B, T, N).contiguous(), generator=g) / dt
        mask = torch.ones(B, T, N, dtype=torch.bool)
        d, valid = masked_psth(y, mask)
        v = ((d - d.mean(0)) ** 2).mean(0)
        est_plain.append(float(v.mean()))
        est_corr.append(float((v - _psth_noise_variance(y, mask, valid, valid.sum(0).to(F64))).mean()))
        term_corr.append(float(neuron_loss_terms(model, y, None, 0.0, 1.0, var_noise_correction=True)["var"]))
        term_plain.append(float(neuron_loss_terms(model, y, None, 0.0, 1.0)["var"]))
    assert np.mean(est_plain) == pytest.approx(true_var + noise_var, rel=0.03)
    assert np.mean(est_corr) == pytest.approx(true_var, rel=0.03)
    assert np.mean(term_corr) < 0.1 * np.mean(term_plain)


def test_var_noise_correction_changes_only_the_var_term_and_flows_no_gradient_to_the_data():
    model, target, mask = _data(seed=5)
    a = neuron_loss_terms(model, target, mask, 0.1, 0.05)
    b = neuron_loss_terms(model, target, mask, 0.1, 0.05, var_noise_correction=True)
    assert float(a["corr"]) == float(b["corr"]) and float(a["scale"]) == float(b["scale"])
    assert float(a["var"]) != float(b["var"])
    m = model.clone().requires_grad_(True)
    tgt = target.clone().requires_grad_(True)
    neuron_loss(m, tgt, mask, var_noise_correction=True).backward()
    assert torch.isfinite(m.grad).all() and m.grad.abs().sum() > 0
    h = hybrid_neuron_loss(model, target, mask, var_noise_correction=True)
    assert float(h) == pytest.approx(0.5 * float(poisson_neuron_loss(model, target, mask))
                                     + 0.5 * float(b["total"]), rel=1e-12)


def test_var_noise_correction_rejects_target_smoothing():
    from eirnn.training.objective import FitObjective

    model, target, mask = _data()
    with pytest.raises(ValueError, match="var_noise_correction"):
        neuron_loss_terms(model, target, mask, var_noise_correction=True, target_smooth_sigma_bins=2.0)
    with pytest.raises(ValueError, match="var_noise_correction"):
        FitObjective(neuron={"var_noise_correction": True, "target_smooth_sigma_bins": 2.0})
    on = FitObjective(neuron={"kind": "hybrid", "var_noise_correction": True})
    off = FitObjective(neuron={"kind": "hybrid"})
    assert float(on.neuron_term(model, target, mask)) != float(off.neuron_term(model, target, mask))
