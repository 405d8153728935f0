"""Evaluation metrics (numpy, float64; not differentiable).

Every function accepts numpy arrays or torch tensors (moved to CPU and
detached) and returns python floats or numpy arrays.

Shapes: ``model_rates``, ``target_rates``, ``rates``: ``[B, T, N]`` in sp/s;
``mask``: bool ``[B, T, N]`` (``True`` = valid, ``None`` = all valid);
``conditions``: ``[B]`` labels of any dtype. Values at masked entries are
ignored (they may be NaN). "PSTH" = masked mean over trials; a ``(t, n)``
with no valid trial is dropped. Per-neuron results are ``[N]`` arrays with
NaN where a metric is undefined; summary floats are NaN-means over neurons.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = [
    "psth_correlation",
    "psth_corr",
    "psth_corr_by_type",
    "bits_per_spike",
    "bits_per_spike_per_neuron",
    "fano_factor",
    "model_fano_factor",
    "condition_psth_r2",
    "condition_psth_r2_per_neuron",
    "condition_psth_corr",
    "condition_psth_corr_per_neuron",
    "split_half_ceiling",
    "psth_noise_ceiling",
    "condition_fano_factor",
    "count_windows",
    "fraction_within_factor",
    "mean_by_type",
    "align_to_events",
    "smooth_psths",
    "group_psths",
    "stacked_r2_per_neuron",
    "stacked_corr_per_neuron",
    "aligned_condition_scores",
    "marginal_responses",
    "marginal_corr_per_neuron",
    "window_rates",
    "dprime",
    "selectivity_dprime",
    "selectivity_auc",
    "poisson_rate_draws",
    "selectivity_r",
    "factor_noise_ceiling",
]

_LAM_FLOOR = 1e-9

WindowLike = Union[None, slice, Tuple[int, int]]


# --------------------------------------------------------------------------- helpers


def _np(x: Any, dtype: Any = np.float64) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype) if dtype is not None else np.asarray(x)


def _prep(
    rates: Any, other: Any = None, mask: Any = None
) -> Tuple[np.ndarray, Optional[np.ndarray], np.ndarray]:
    """Convert and validate ``[B, T, N]`` inputs; NaN-free copies (0 where masked)."""
    x = _np(rates)
    if x.ndim != 3:
        raise ValueError(f"rates must be [B, T, N], got shape {x.shape}")
    y = None
    if other is not None:
        y = _np(other)
        if y.shape != x.shape:
            raise ValueError(f"model {x.shape} and target {y.shape} shapes differ")
    if mask is None:
        m = np.ones(x.shape, dtype=bool)
    else:
        m = _np(mask, dtype=bool)
        if m.shape != x.shape:
            raise ValueError(f"mask {m.shape} must match rates {x.shape}")
    x = np.where(m, x, 0.0)
    if y is not None:
        y = np.where(m, y, 0.0)
    return x, y, m


def _psth(x: np.ndarray, m: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``psth[t,n] = sum_b m x / sum_b m`` over axis 0, and ``valid = sum_b m > 0``."""
    count = m.sum(axis=0)
    return np.where(m, x, 0.0).sum(axis=0) / np.maximum(count, 1), count > 0


def _masked_pearson(x: np.ndarray, y: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Pearson r along axis 0 over rows where ``valid``; columns -> ``[N]``.

    NaN where fewer than 2 valid rows or either series is (numerically) constant.
    """
    n = valid.sum(axis=0)
    nn = np.maximum(n, 1)
    xm = np.where(valid, x, 0.0).sum(axis=0) / nn
    ym = np.where(valid, y, 0.0).sum(axis=0) / nn
    xc = np.where(valid, x - xm, 0.0)
    yc = np.where(valid, y - ym, 0.0)
    sxx, syy = (xc**2).sum(axis=0), (yc**2).sum(axis=0)
    # "constant" relative to the magnitude of the series (guards mean round-off)
    tiny_x = 1e-24 * np.maximum((np.where(valid, x, 0.0) ** 2).sum(axis=0), 1e-300)
    tiny_y = 1e-24 * np.maximum((np.where(valid, y, 0.0) ** 2).sum(axis=0), 1e-300)
    ok = (n >= 2) & (sxx > tiny_x) & (syy > tiny_y)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (xc * yc).sum(axis=0) / np.sqrt(sxx * syy)
    return np.where(ok, np.clip(r, -1.0, 1.0), np.nan)


def _nanmean(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0 or np.all(np.isnan(x)):
        return float("nan")
    return float(np.nanmean(x))


def _window(x: np.ndarray, m: np.ndarray, window_bins: WindowLike):
    if window_bins is None:
        return x, m
    sl = window_bins if isinstance(window_bins, slice) else slice(*window_bins)
    return x[:, sl], m[:, sl]


def _condition_psths(
    x: np.ndarray, m: np.ndarray, conditions: Any
) -> Tuple[np.ndarray, np.ndarray]:
    """Per-condition PSTHs ``[C, T, N]`` and validity ``[C, T, N]`` (sorted labels)."""
    cond = _np(conditions, dtype=None).reshape(-1)
    if cond.shape[0] != x.shape[0]:
        raise ValueError(f"conditions has {cond.shape[0]} entries for {x.shape[0]} trials")
    labels = np.unique(cond)
    out = [_psth(x[cond == c], m[cond == c]) for c in labels]
    return np.stack([p for p, _ in out]), np.stack([v for _, v in out])


# --------------------------------------------------------------------------- PSTH correlation


def psth_correlation(model_rates: Any, target_rates: Any, mask: Any = None) -> np.ndarray:
    """Per-neuron Pearson correlation over time of trial-averaged PSTHs.

    ``r_n = corr_t(Mbar[t, n], Dbar[t, n])`` over ``t`` with at least one
    valid trial, where ``Mbar``/``Dbar`` are masked means over all given
    trials. NaN when either PSTH is constant or fewer than 2 bins are valid.

    Returns:
        ``[N]`` float array.
    """
    x, y, m = _prep(model_rates, target_rates, mask)
    px, valid = _psth(x, m)
    py, _ = _psth(y, m)
    return _masked_pearson(px, py, valid)


def psth_corr(model_rates: Any, target_rates: Any, mask: Any = None) -> float:
    """``nanmean_n psth_correlation(...)[n]`` (the validation metric)."""
    return _nanmean(psth_correlation(model_rates, target_rates, mask))


def psth_corr_by_type(per_neuron: Any, is_excitatory: Any) -> Dict[str, float]:
    """NaN-means of a per-neuron metric ``[N]`` over all, E and I neurons.

    Args:
        per_neuron: ``[N]`` values; is_excitatory: bool ``[N]``.

    Returns:
        ``{"all": float, "E": float, "I": float}`` (NaN for an empty group).
    """
    r = _np(per_neuron).reshape(-1)
    e = _np(is_excitatory, dtype=bool).reshape(-1)
    if e.shape != r.shape:
        raise ValueError(f"is_excitatory {e.shape} must match per_neuron {r.shape}")
    return {"all": _nanmean(r), "E": _nanmean(r[e]), "I": _nanmean(r[~e])}


# --------------------------------------------------------------------------- bits per spike


def _bps_parts(model_rates, target_rates, mask, bin_size_ms):
    """Per-neuron ``LL_n - LL0_n`` and spike counts ``S_n`` (see :func:`bits_per_spike`).

    The ``lgamma(k + 1)`` terms of ``LL`` and ``LL0`` are identical and cancel in the
    difference, so they are not evaluated.
    """
    x, y, m = _prep(model_rates, target_rates, mask)
    dt = bin_size_ms / 1000.0
    k = np.where(m, np.round(y * dt), 0.0)
    lam = np.maximum(x * dt, _LAM_FLOOR)
    n_bins = m.sum(axis=(0, 1))
    lam0 = np.maximum(k.sum(axis=(0, 1)) / np.maximum(n_bins, 1), _LAM_FLOOR)  # [N]
    # (k log lam - lam - lgamma(k+1)) - (k log lam0 - lam0 - lgamma(k+1)), summed over valid bins
    gain = np.where(m, k * (np.log(lam) - np.log(lam0)) - lam + lam0, 0.0).sum(axis=(0, 1))
    return gain, k.sum(axis=(0, 1))


def bits_per_spike_per_neuron(
    model_rates: Any, target_rates: Any, mask: Any = None, bin_size_ms: float = 25.0
) -> np.ndarray:
    """Per-neuron ``(LL_n - LL0_n) / (S_n ln 2)``; NaN where ``S_n = 0``.

    Same terms as :func:`bits_per_spike`, summed over neuron ``n`` only.

    Returns:
        ``[N]`` float array.
    """
    gain, spikes = _bps_parts(model_rates, target_rates, mask, bin_size_ms)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = gain / (spikes * math.log(2.0))
    return np.where(spikes > 0, out, np.nan)


def bits_per_spike(
    model_rates: Any, target_rates: Any, mask: Any = None, bin_size_ms: float = 25.0
) -> float:
    """Poisson log-likelihood gain over a per-neuron constant-rate model (NLB).

    With ``dt = bin_size_ms / 1000``, counts ``k = round(target * dt)``,
    ``lam = max(model * dt, 1e-9)`` and, per neuron, the null rate
    ``lam0_n = max(mean of k over the valid bins of n, 1e-9)``::

        LL   = sum_valid k log lam  - lam  - lgamma(k + 1)
        LL0  = sum_valid k log lam0 - lam0 - lgamma(k + 1)
        bits/spike = (LL - LL0) / (sum_valid k * ln 2)

    ``model`` is the predictor's rate (sp/s) for each trial; :mod:`eirnn.evaluate` passes
    every predictor's *expected* rate given the trial's inputs (for a model with state
    noise, the mean over noise draws), so predictors are scored alike.

    Returns:
        float (NaN if there are no spikes).
    """
    gain, spikes = _bps_parts(model_rates, target_rates, mask, bin_size_ms)
    total = spikes.sum()
    if total <= 0:
        return float("nan")
    return float(gain.sum() / (total * math.log(2.0)))


# --------------------------------------------------------------------------- Fano factor


def _fano_from_moments(mean: np.ndarray, var: np.ndarray, n_trials: np.ndarray) -> np.ndarray:
    use = (n_trials >= 2) & (mean > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(use, var / np.where(use, mean, 1.0), 0.0)
        n_use = use.sum(axis=0)
        out = ratio.sum(axis=0) / n_use
    return np.where(n_use > 0, out, np.nan)


def _trial_moments(c: np.ndarray, m: np.ndarray):
    """Masked mean and unbiased (ddof=1) variance over trials, plus trial count."""
    n = m.sum(axis=0)
    mean = np.where(m, c, 0.0).sum(axis=0) / np.maximum(n, 1)
    var = np.where(m, (c - mean) ** 2, 0.0).sum(axis=0) / np.maximum(n - 1, 1)
    return mean, var, n


def fano_factor(
    rates: Any, mask: Any = None, bin_size_ms: float = 25.0, window_bins: WindowLike = None
) -> np.ndarray:
    """Per-neuron Fano factor of counts across trials.

    Counts ``c = rates * dt`` (``dt = bin_size_ms / 1000``; exact spike counts
    when ``rates`` are binned spikes divided by ``dt``). For each ``(t, n)``
    with ``>= 2`` valid trials and ``mean_b c > 0``::

        F[t, n] = var_b(c) / mean_b(c)     (var with ddof = 1)

    and ``F_n = mean_t F[t, n]`` over those bins (NaN if none). For Poisson
    counts ``E[var_b / mean_b | sum > 0] = 1`` exactly. Applied to a rate
    model this measures only the trial-to-trial variance of the *rates*
    (no spiking noise); use :func:`model_fano_factor` to compare with data.

    Args:
        window_bins: ``None``, a ``slice`` or ``(start, stop)`` on the time axis.

    Returns:
        ``[N]`` float array.
    """
    x, _, m = _prep(rates, None, mask)
    x, m = _window(x, m, window_bins)
    mean, var, n = _trial_moments(x * (bin_size_ms / 1000.0), m)
    return _fano_from_moments(mean, var, n)


def model_fano_factor(
    model_rates: Any, mask: Any = None, bin_size_ms: float = 25.0, window_bins: WindowLike = None
) -> np.ndarray:
    """Expected Fano factor of Poisson spike counts emitted by a rate model.

    With ``lam = rate * dt`` and counts ``c | lam ~ Poisson(lam)``, the law of
    total variance gives, per ``(t, n)``::

        F[t, n] = (var_b(lam) + mean_b(lam)) / mean_b(lam)    (var ddof = 1)

    (``mean_b(lam) + var_b(lam, ddof=1)`` is the expectation of the ddof=1
    count variance that :func:`fano_factor` computes on data, so the two are
    comparable). Averaged over bins with ``>= 2`` valid trials and
    ``mean_b(lam) > 0``, as in :func:`fano_factor`.

    Returns:
        ``[N]`` float array.
    """
    x, _, m = _prep(model_rates, None, mask)
    x, m = _window(x, m, window_bins)
    mean, var, n = _trial_moments(x * (bin_size_ms / 1000.0), m)
    return _fano_from_moments(mean, var + mean, n)


# --------------------------------------------------------------------------- condition PSTHs


def condition_psth_r2_per_neuron(
    model_rates: Any, target_rates: Any, conditions: Any, mask: Any = None
) -> np.ndarray:
    """Per-neuron R^2 of condition-averaged PSTHs (NLB ``psth R2``).

    With ``M[c, t, n]``, ``D[c, t, n]`` the masked trial means within each
    condition, and ``V_n`` the valid ``(c, t)`` pairs of neuron ``n``::

        R2_n = 1 - sum_V (D - M)^2 / sum_V (D - mean_V D)^2

    NaN where ``V_n`` is empty or the data PSTH is constant.

    Returns:
        ``[N]`` float array.
    """
    x, y, m = _prep(model_rates, target_rates, mask)
    pm, valid = _condition_psths(x, m, conditions)
    pd, _ = _condition_psths(y, m, conditions)
    return stacked_r2_per_neuron(pm, pd, valid)


def condition_psth_r2(
    model_rates: Any, target_rates: Any, conditions: Any, mask: Any = None
) -> float:
    """NaN-mean over neurons of :func:`condition_psth_r2_per_neuron`."""
    return _nanmean(condition_psth_r2_per_neuron(model_rates, target_rates, conditions, mask))


def condition_psth_corr_per_neuron(
    model_rates: Any, target_rates: Any, conditions: Any, mask: Any = None
) -> np.ndarray:
    """Per-neuron Pearson r between stacked condition-averaged PSTHs.

    ``r_n = corr(M[:, :, n].ravel(), D[:, :, n].ravel())`` over the valid
    ``(c, t)`` pairs (see :func:`condition_psth_r2_per_neuron`); NaN when
    either is constant.

    Returns:
        ``[N]`` float array.
    """
    x, y, m = _prep(model_rates, target_rates, mask)
    pm, valid = _condition_psths(x, m, conditions)
    pd, _ = _condition_psths(y, m, conditions)
    return stacked_corr_per_neuron(pm, pd, valid)


def condition_psth_corr(
    model_rates: Any, target_rates: Any, conditions: Any, mask: Any = None
) -> float:
    """NaN-mean over neurons of :func:`condition_psth_corr_per_neuron`."""
    return _nanmean(condition_psth_corr_per_neuron(model_rates, target_rates, conditions, mask))


# --------------------------------------------------------------------------- noise ceiling


def split_half_ceiling(
    target_rates: Any,
    mask: Any = None,
    conditions: Any = None,
    n_splits: int = 20,
    seed: int = 0,
) -> Dict[str, Any]:
    """Split-half noise ceiling of :func:`psth_correlation` from data alone.

    For each of ``n_splits`` random splits (trials shuffled within each
    condition when ``conditions`` is given, so both halves hold every
    condition in equal numbers; an odd trial goes to a random half), compute
    ``r = psth_correlation(half_A, half_B)`` per neuron and the
    Spearman-Brown prediction for the full trial count::

        r_full = 2 r / (1 + r)            (NaN when r <= -1)

    Returns:
        ``{"per_neuron": [N] nanmean over splits of r_full,
        "mean": float nanmean over neurons,
        "split_half_r": [N] nanmean over splits of the uncorrected r}``.
    """
    y, _, m = _prep(target_rates, None, mask)
    n_trials = y.shape[0]
    if n_trials < 2:
        raise ValueError("split_half_ceiling needs at least 2 trials")
    if conditions is None:
        groups = [np.arange(n_trials)]
    else:
        cond = _np(conditions, dtype=None).reshape(-1)
        if cond.shape[0] != n_trials:
            raise ValueError(f"conditions has {cond.shape[0]} entries for {n_trials} trials")
        groups = [np.flatnonzero(cond == c) for c in np.unique(cond)]
    rng = np.random.default_rng(seed)
    rs, rfs = [], []
    for _ in range(n_splits):
        half_a = np.zeros(n_trials, dtype=bool)
        for idx in groups:
            perm = rng.permutation(idx)
            cut = len(idx) // 2 + (int(rng.integers(2)) if len(idx) % 2 else 0)
            half_a[perm[:cut]] = True
        pa, va = _psth(y[half_a], m[half_a])
        pb, vb = _psth(y[~half_a], m[~half_a])
        r = _masked_pearson(pa, pb, va & vb)
        with np.errstate(invalid="ignore", divide="ignore"):
            r_full = np.where(r > -1.0, 2.0 * r / (1.0 + r), np.nan)
        rs.append(r)
        rfs.append(r_full)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        per_neuron = np.nanmean(np.stack(rfs), axis=0)
        raw = np.nanmean(np.stack(rs), axis=0)
    return {"per_neuron": per_neuron, "mean": _nanmean(per_neuron), "split_half_r": raw}


# --------------------------------------------------------------------------- additions (evaluation)


def _spearman_brown(r: np.ndarray, k: float = 2.0) -> np.ndarray:
    """``rho = k r / (1 + (k - 1) r)`` clipped to ``[0, 1]`` (NaN stays NaN): the
    reliability of an average over ``k`` times the trials that gave correlation ``r``."""
    with np.errstate(invalid="ignore", divide="ignore"):
        den = 1.0 + (k - 1.0) * r
        rho = np.where((r > 0) & (den > 0), k * r / np.where(den > 0, den, 1.0), 0.0)
    return np.where(np.isnan(r), np.nan, np.clip(rho, 0.0, 1.0))


def psth_noise_ceiling(
    target_rates: Any,
    mask: Any = None,
    conditions: Any = None,
    n_splits: int = 50,
    seed: int = 0,
    n_target: Optional[int] = None,
) -> Dict[str, Dict[str, Any]]:
    """Noise ceilings of :func:`psth_correlation`, :func:`condition_psth_corr_per_neuron`
    and :func:`condition_psth_r2_per_neuron` for a prediction scored against these trials.

    Derivation (per neuron; ``n`` = trials scored). The data PSTH is
    ``D[t] = mu[t] + e[t]``: ``mu`` the expected PSTH of these trials (given their
    conditions and event times), ``e`` the noise of an ``n``-trial average, with signal
    variance ``S = var_t mu`` and noise variance ``N_n = E var_t e`` (``N_n ~ 1/n``). A
    prediction can at best be ``mu`` (up to an affine map for a correlation), and
    ``corr(mu, D) ~ sqrt(S / (S + N_n)) = sqrt(rho_n)`` with ``rho_n`` the *reliability*
    of an ``n``-trial PSTH. Two disjoint halves A, B (``n/2`` trials each) give
    ``r_AB ~ S / (S + 2 N_n) = rho_{n/2}``, and Spearman-Brown recovers
    ``rho_n = 2 r_AB / (1 + r_AB)`` (check: ``2S/(S+2N) / (1 + S/(S+2N)) = S/(S+N)``).
    More generally (``n_target``): the PSTH of ``n_target`` trials has noise variance
    ``N_n * n / n_target``, and with ``k = n_target / (n / 2)`` the Spearman-Brown formula
    gives its reliability ``rho = k r_AB / (1 + (k - 1) r_AB)`` (``k = 2`` above). So the
    noise can be measured on more trials than are scored (e.g. all trials of a data set
    for a validation PSTH of ``n_target`` of them), which makes the estimate less noisy.
    Hence::

        ceiling(psth_corr)            = sqrt(rho_n)          (grand PSTH over all trials)
        ceiling(condition_psth_corr)  = sqrt(rho_n)          (stacked condition PSTHs)
        ceiling(condition_psth_r2)    = rho_n                (E SS_res = N, E SS_tot = S + N)

    ``rho_n`` itself (not its square root) is what a second, independent ``n``-trial
    recording would score: the noise enters twice there, once here. The ceiling ignores
    the predictor's own estimation error, so it is reached only by the true ``mu``.

    Procedure: ``n_splits`` random half splits (within each condition when
    ``conditions`` is given, so both halves hold each condition equally, an odd trial
    going to a random half); ``r_AB`` per neuron is averaged over splits, then
    ``rho = clip(2 r / (1 + r), 0, 1)`` (no measurable signal -> ceiling 0). The
    condition-resolved ceilings need ``conditions`` (else they are NaN) and use the
    ``(condition, t)`` pairs valid in both halves.

    Precision: the per-neuron estimate is noisy when ``rho`` is small, and the square root
    of a noisy estimate is biased low, so the mean ceiling is slightly conservative
    (simulated Poisson data at the real session's rates, 100 trials: 0.487 estimated vs
    0.502 true); a predictor can exceed it for single neurons by chance.

    Args:
        target_rates: ``[B, T, N]`` data; mask ``[B, T, N]``; conditions ``[B]``.
        n_target: trials in the scored PSTH (default ``B``); with conditions, each
            condition is assumed to keep its share of trials.

    Returns:
        ``{"psth_corr" | "condition_psth_corr" | "condition_psth_r2":
        {"per_neuron": [N], "mean": float, "reliability": [N] rho_n, "split_half_r": [N]}}``.
    """
    y, _, m = _prep(target_rates, None, mask)
    n_trials, _, n_neurons = y.shape
    if n_trials < 2:
        raise ValueError("psth_noise_ceiling needs at least 2 trials")
    cond = None
    if conditions is not None:
        cond = _np(conditions, dtype=None).reshape(-1)
        if cond.shape[0] != n_trials:
            raise ValueError(f"conditions has {cond.shape[0]} entries for {n_trials} trials")
        groups = [np.flatnonzero(cond == c) for c in np.unique(cond)]
    else:
        groups = [np.arange(n_trials)]
    k = 2.0 if n_target is None else 2.0 * float(n_target) / n_trials
    if k <= 0:
        raise ValueError(f"n_target must be positive, got {n_target}")
    rng = np.random.default_rng(seed)
    r_grand, r_cond = [], []
    for _ in range(int(n_splits)):
        half_a = np.zeros(n_trials, dtype=bool)
        for idx in groups:
            perm = rng.permutation(idx)
            cut = len(idx) // 2 + (int(rng.integers(2)) if len(idx) % 2 else 0)
            half_a[perm[:cut]] = True
        pa, va = _psth(y[half_a], m[half_a])
        pb, vb = _psth(y[~half_a], m[~half_a])
        r_grand.append(_masked_pearson(pa, pb, va & vb))
        if cond is not None:
            ca, cva = _condition_psths(y[half_a], m[half_a], cond[half_a])
            cb, cvb = _condition_psths(y[~half_a], m[~half_a], cond[~half_a])
            # align the condition axes (a condition may be missing from one half)
            la, lb = np.unique(cond[half_a]), np.unique(cond[~half_a])
            common = np.intersect1d(la, lb)
            ia, ib = np.searchsorted(la, common), np.searchsorted(lb, common)
            a, b = ca[ia], cb[ib]
            v = cva[ia] & cvb[ib]
            c, t, n = a.shape
            r_cond.append(_masked_pearson(a.reshape(c * t, n), b.reshape(c * t, n), v.reshape(c * t, n)))

    def pack(rs: list, sqrt: bool) -> Dict[str, Any]:
        if not rs:
            nan = np.full(n_neurons, np.nan)
            return {"per_neuron": nan, "mean": float("nan"), "reliability": nan, "split_half_r": nan}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            r = np.nanmean(np.stack(rs), axis=0)
        rho = _spearman_brown(r, k)
        ceil = np.sqrt(rho) if sqrt else rho
        return {"per_neuron": ceil, "mean": _nanmean(ceil), "reliability": rho, "split_half_r": r}

    return {
        "psth_corr": pack(r_grand, True),
        "condition_psth_corr": pack(r_cond, True),
        "condition_psth_r2": pack(r_cond, False),
    }


def count_windows(counts: np.ndarray, mask: np.ndarray, count_bins: int) -> Tuple[np.ndarray, np.ndarray]:
    """Sum ``[B, T, N]`` counts over consecutive non-overlapping windows of ``count_bins`` bins.

    Window ``w`` covers bins ``w * count_bins .. (w + 1) * count_bins - 1`` (a last partial
    window is dropped); it is valid for ``(b, n)`` only when all of its bins are. Returns
    ``(window_counts [B, W, N], window_valid [B, W, N])``; ``count_bins = 1`` returns the inputs.
    """
    k = int(count_bins)
    if k < 1:
        raise ValueError(f"count_bins must be >= 1, got {count_bins}")
    if k == 1:
        return counts, mask
    b, t, n = counts.shape
    w = t // k
    c = np.where(mask, counts, 0.0)[:, : w * k].reshape(b, w, k, n).sum(axis=2)
    v = mask[:, : w * k].reshape(b, w, k, n).all(axis=2)
    return c, v


def condition_fano_factor(
    rates: Any,
    conditions: Any,
    mask: Any = None,
    bin_size_ms: float = 25.0,
    poisson_model: bool = False,
    count_bins: int = 1,
) -> np.ndarray:
    """Per-neuron Fano factor of spike counts across the trials of each condition.

    Counts ``c = rates * dt`` summed over windows of ``count_bins`` bins
    (:func:`count_windows`; 1 = single bins). For each condition ``k`` and window ``(w, n)``
    with ``>= 2`` valid trials of ``k`` and a positive mean count::

        data:            F[k, w, n] = var_b(c) / mean_b(c)                 (ddof = 1)
        poisson_model:   F[k, w, n] = (var_b(c) + mean_b(c)) / mean_b(c)   (rates are
                         Poisson intensities: law of total variance, as in
                         :func:`model_fano_factor`; a window's count is Poisson with the
                         summed intensity)

    ``F_n`` = mean of ``F[k, w, n]`` over those ``(k, w)``. Within-condition (not across
    all trials) so that condition differences in the mean are not counted as
    variability. NaN where no ``(k, w)`` qualifies.

    Returns:
        ``[N]`` float array.
    """
    x, _, m = _prep(rates, None, mask)
    cond = _np(conditions, dtype=None).reshape(-1)
    if cond.shape[0] != x.shape[0]:
        raise ValueError(f"conditions has {cond.shape[0]} entries for {x.shape[0]} trials")
    c, m = count_windows(x * (bin_size_ms / 1000.0), m, count_bins)
    total = np.zeros(x.shape[2])
    count = np.zeros(x.shape[2])
    for k in np.unique(cond):
        sel = cond == k
        mean, var, n = _trial_moments(c[sel], m[sel])
        use = (n >= 2) & (mean > 0)
        num = var + mean if poisson_model else var
        with np.errstate(invalid="ignore", divide="ignore"):
            total += np.where(use, num / np.where(use, mean, 1.0), 0.0).sum(axis=0)
        count += use.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def fraction_within_factor(model: Any, data: Any, factor: float = 2.0) -> float:
    """Fraction of neurons with ``data / factor <= model <= data * factor``.

    Counted over neurons where both values are finite and positive (NaN if none).
    """
    a, b = _np(model).reshape(-1), _np(data).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"model {a.shape} and data {b.shape} must have the same shape")
    ok = np.isfinite(a) & np.isfinite(b) & (a > 0) & (b > 0)
    if not ok.any():
        return float("nan")
    ratio = np.abs(np.log(a[ok] / b[ok]))
    return float(np.mean(ratio <= math.log(float(factor)) + 1e-12))


def mean_by_type(per_neuron: Any, is_excitatory: Any) -> Dict[str, float]:
    """Alias of :func:`psth_corr_by_type` for any per-neuron metric: NaN-means over all / E / I."""
    return psth_corr_by_type(per_neuron, is_excitatory)



# --------------------------------------------------------------------------- condition- and factor-resolved (issue 15)
#
# Shapes: ``xa``/``ma`` are event-aligned rates / validity ``[K, W, N]`` (:func:`align_to_events`),
# ``seg`` ``[W]`` int the segment (event) of each aligned bin; smoothing never crosses a segment
# border. The rationale for windows, smoothing and the selectivity window is in
# experiments/evaluation.md ("Condition- and factor-resolved metrics").


def align_to_events(x: Any, m: Any, onsets: Dict[str, Any], windows: Dict[str, Tuple[int, int]]
                    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut event-aligned windows out of ``[K, T, N]`` rates and concatenate them.

    For event ``e`` with onset bin ``o_k`` (float, NaN = none) and window ``(a, b)`` in bins,
    aligned bin ``j = 0 .. b-a-1`` of trial ``k`` is bin ``o_k + a + j``; it is valid when
    ``o_k`` is finite, ``0 <= o_k + a + j < T`` and the source bin is valid.

    Returns:
        ``(xa [K, W, N], ma [K, W, N] bool, seg [W] int)`` with ``W = sum_e (b_e - a_e)``
        and ``seg`` the index of the event (in ``windows`` order) of each aligned bin.
    """
    x, _, mm = _prep(x, None, m)
    k, t, _ = x.shape
    xs, ms, segs = [], [], []
    for i, (ev, (a, b)) in enumerate(windows.items()):
        o = _np(onsets[ev]).reshape(-1)
        if o.shape[0] != k:
            raise ValueError(f"onsets[{ev!r}] has {o.shape[0]} entries for {k} trials")
        off = np.arange(int(a), int(b))
        fin = np.isfinite(o)
        idx = np.where(fin, o, 0.0).astype(np.int64)[:, None] + off[None, :]      # [K, W]
        ok = fin[:, None] & (idx >= 0) & (idx < t)
        idc = np.clip(idx, 0, t - 1)[:, :, None]
        xs.append(np.where(ok[:, :, None], np.take_along_axis(x, idc, axis=1), 0.0))
        ms.append(ok[:, :, None] & np.take_along_axis(mm, idc, axis=1))
        segs.append(np.full(off.size, i, dtype=np.int64))
    return np.concatenate(xs, axis=1), np.concatenate(ms, axis=1), np.concatenate(segs)


def smooth_psths(p: np.ndarray, valid: np.ndarray, sigma_bins: float, seg: Optional[np.ndarray] = None
                 ) -> np.ndarray:
    """Gaussian smoothing along the time axis (-2) of ``[..., W, N]`` PSTHs, per segment.

    Normalised convolution over the valid bins: ``s = G*(p v) / G*(v)`` (``G`` a Gaussian of
    width ``sigma_bins``, truncated at 4 sigma, zero outside the segment), so missing bins
    and segment edges do not pull the PSTH towards 0. Invalid bins stay 0 (and invalid).
    ``sigma_bins <= 0`` returns ``p`` unchanged (0 where invalid).
    """
    p = np.where(valid, p, 0.0)
    if sigma_bins <= 0:
        return p
    from scipy.ndimage import gaussian_filter1d

    seg = np.zeros(p.shape[-2], dtype=np.int64) if seg is None else np.asarray(seg)
    out = np.zeros_like(p)
    v = valid.astype(np.float64)
    for s in np.unique(seg):
        sl = seg == s
        num = gaussian_filter1d(p[..., sl, :], sigma_bins, axis=-2, mode="constant", truncate=4.0)
        den = gaussian_filter1d(v[..., sl, :], sigma_bins, axis=-2, mode="constant", truncate=4.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[..., sl, :] = np.where(valid[..., sl, :] & (den > 0), num / np.where(den > 0, den, 1.0), 0.0)
    return out


def group_psths(xa: np.ndarray, ma: np.ndarray, labels: Any, sigma_bins: float = 0.0,
                seg: Optional[np.ndarray] = None, levels: Any = None
                ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Smoothed masked-mean PSTH of each label: ``P[l] = smooth(mean_{k: label_k = l} xa[k])``.

    Returns ``(P [L, W, N], valid [L, W, N], levels [L])`` (``levels`` default: the sorted
    unique labels; a level with no trial is all-invalid).
    """
    lab = _np(labels, dtype=None).reshape(-1)
    if lab.shape[0] != xa.shape[0]:
        raise ValueError(f"labels has {lab.shape[0]} entries for {xa.shape[0]} trials")
    lv = np.unique(lab) if levels is None else np.asarray(levels)
    ps, vs = [], []
    for l in lv:
        p, v = _psth(xa[lab == l], ma[lab == l]) if np.any(lab == l) else (np.zeros(xa.shape[1:]), np.zeros(xa.shape[1:], bool))
        ps.append(p)
        vs.append(v)
    p, v = np.stack(ps), np.stack(vs)
    return smooth_psths(p, v, sigma_bins, seg), v, lv


def stacked_r2_per_neuron(pm: np.ndarray, pd: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``R2_n = 1 - sum_V (D - M)^2 / sum_V (D - mean_V D)^2`` over the valid ``(group, t)``
    of ``[G, W, N]`` PSTHs; NaN where nothing is valid or ``D`` is constant."""
    n_valid = valid.sum(axis=(0, 1))
    d_mean = np.where(valid, pd, 0.0).sum(axis=(0, 1)) / np.maximum(n_valid, 1)
    ss_res = np.where(valid, (pd - pm) ** 2, 0.0).sum(axis=(0, 1))
    ss_tot = np.where(valid, (pd - d_mean) ** 2, 0.0).sum(axis=(0, 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r2 = 1.0 - ss_res / ss_tot
    return np.where((n_valid > 0) & (ss_tot > 0), r2, np.nan)


def stacked_corr_per_neuron(pm: np.ndarray, pd: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per-neuron Pearson r of ``[G, W, N]`` PSTHs stacked over ``(group, t)`` (valid pairs)."""
    g, w, n = pm.shape
    return _masked_pearson(pm.reshape(g * w, n), pd.reshape(g * w, n), valid.reshape(g * w, n))


def aligned_condition_scores(pred_a: np.ndarray, data_a: np.ndarray, ma: np.ndarray, conditions: Any,
                             sigma_bins: float = 0.0, seg: Optional[np.ndarray] = None) -> Dict[str, np.ndarray]:
    """``condition_psth_r2`` / ``condition_psth_corr`` per neuron on smoothed, event-aligned
    condition PSTHs (:func:`group_psths` of predictor and data with the same trials and mask;
    :func:`stacked_r2_per_neuron`, :func:`stacked_corr_per_neuron`)."""
    pm, valid, _ = group_psths(pred_a, ma, conditions, sigma_bins, seg)
    pd, _, _ = group_psths(data_a, ma, conditions, sigma_bins, seg)
    return {"condition_psth_r2": stacked_r2_per_neuron(pm, pd, valid),
            "condition_psth_corr": stacked_corr_per_neuron(pm, pd, valid)}


def marginal_responses(xa: np.ndarray, ma: np.ndarray, levels: Any, sigma_bins: float = 0.0,
                       seg: Optional[np.ndarray] = None, exclude: Sequence[Any] = ()
                       ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Marginal response of one factor: ``R[l] = P_l - P_all`` (smoothed level PSTHs minus the
    smoothed PSTH of all included trials; trials at an ``exclude`` level are left out).

    Returns ``(R [L, W, N], valid [L, W, N], levels [L])``.
    """
    lab = _np(levels, dtype=None).reshape(-1)
    keep = ~np.isin(lab, np.asarray(list(exclude))) if len(exclude) else np.ones(lab.shape, bool)
    p, v, lv = group_psths(xa[keep], ma[keep], lab[keep], sigma_bins, seg)
    g, gv, _ = group_psths(xa[keep], ma[keep], np.zeros(int(keep.sum())), sigma_bins, seg)
    return p - g, v & gv, lv


def marginal_corr_per_neuron(pred_a: np.ndarray, data_a: np.ndarray, ma: np.ndarray, levels: Any,
                             sigma_bins: float = 0.0, seg: Optional[np.ndarray] = None,
                             exclude: Sequence[Any] = ()) -> np.ndarray:
    """``marginal_corr``: per neuron, Pearson r over ``(level, t)`` between the predictor's and
    the data's marginal responses (:func:`marginal_responses`, same trials and mask)."""
    rm, valid, _ = marginal_responses(pred_a, ma, levels, sigma_bins, seg, exclude)
    rd, _, _ = marginal_responses(data_a, ma, levels, sigma_bins, seg, exclude)
    return stacked_corr_per_neuron(rm, rd, valid)


def window_rates(x: Any, m: Any, onsets: Any, start: int, stop: int, bin_size_ms: float = 25.0
                 ) -> Tuple[np.ndarray, np.ndarray]:
    """Trial-mean rate in bins ``onset + start .. onset + stop - 1``.

    Returns ``(r [K, N], dur_s [K, N])``: the mean rate over the window's valid bins (NaN if
    none) and the valid duration in seconds (0 if none).
    """
    xa, ma, _ = align_to_events(x, m, {"e": onsets}, {"e": (start, stop)})
    n = ma.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(n > 0, np.where(ma, xa, 0.0).sum(axis=1) / np.maximum(n, 1), np.nan)
    return r, n * (bin_size_ms / 1000.0)


def dprime(a: np.ndarray, b: np.ndarray, extra_a: Optional[np.ndarray] = None,
           extra_b: Optional[np.ndarray] = None) -> float:
    """``d' = (mean a - mean b) / sqrt((var a + var b) / 2)`` (ddof 1; NaN entries dropped).

    ``extra_*``: per-trial variance added to each group's variance as its mean (the Poisson
    count variance of a rate predictor, :func:`selectivity_dprime`). NaN with fewer than 2
    values in a group or a zero pooled variance.
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    fa, fb = np.isfinite(a), np.isfinite(b)
    if fa.sum() < 2 or fb.sum() < 2:
        return float("nan")
    va, vb = a[fa].var(ddof=1), b[fb].var(ddof=1)
    if extra_a is not None:
        va += float(np.mean(np.asarray(extra_a, float)[fa]))
    if extra_b is not None:
        vb += float(np.mean(np.asarray(extra_b, float)[fb]))
    pooled = 0.5 * (va + vb)
    if not pooled > 1e-24:
        return float("nan")
    return float((a[fa].mean() - b[fb].mean()) / math.sqrt(pooled))


def _level_pairs(levels: np.ndarray, positive: Optional[Any], exclude: Sequence[Any]):
    """``[(in_a, in_b)]`` bool trial masks: the positive level vs the other (two-level factor,
    signed), or each level vs the rest (multi-level; magnitudes are averaged)."""
    keep = ~np.isin(levels, np.asarray(list(exclude))) if len(exclude) else np.ones(levels.shape, bool)
    lv = np.unique(levels[keep])
    if positive is not None:
        if lv.size != 2 or positive not in lv:
            return []
        return [(keep & (levels == positive), keep & (levels != positive))]
    return [(keep & (levels == l), keep & (levels != l)) for l in lv] if lv.size >= 2 else []


def selectivity_dprime(r: np.ndarray, levels: Any, positive: Optional[Any] = None, exclude: Sequence[Any] = (),
                       poisson_dur_s: Optional[np.ndarray] = None) -> np.ndarray:
    """Per-neuron selectivity index of trial-mean rates ``r [K, N]`` for one factor.

    Two-level factor (``positive`` given): signed ``d'(positive vs other)``. Multi-level:
    ``mean_l |d'(level l vs the rest)|`` (one-vs-rest). Trials at an ``exclude`` level are
    left out. ``poisson_dur_s [K, N]``: ``r`` is a rate *predictor*; each trial adds the
    Poisson variance of a rate estimated over that duration, ``r / dur`` (law of total
    variance), so a predictor's d' is the d' expected of spike trains drawn from it.

    Returns:
        ``[N]`` (NaN where undefined).
    """
    lab = _np(levels, dtype=None).reshape(-1)
    pairs = _level_pairs(lab, positive, exclude)
    n = r.shape[1]
    out = np.full(n, np.nan)
    if not pairs:
        return out
    extra = None
    if poisson_dur_s is not None:
        with np.errstate(invalid="ignore", divide="ignore"):
            extra = np.where(poisson_dur_s > 0, r / np.where(poisson_dur_s > 0, poisson_dur_s, 1.0), np.nan)
    for j in range(n):
        ds = [dprime(r[a, j], r[b, j], None if extra is None else extra[a, j], None if extra is None else extra[b, j])
              for a, b in pairs]
        if positive is not None:
            out[j] = ds[0]
        elif np.all(np.isfinite(ds)):
            out[j] = float(np.mean(np.abs(ds)))
    return out


def _auc(a: np.ndarray, b: np.ndarray) -> float:
    """``P(a > b) + P(a = b) / 2`` (Mann-Whitney), NaN entries dropped."""
    from scipy.stats import rankdata

    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if a.size == 0 or b.size == 0:
        return float("nan")
    ranks = rankdata(np.concatenate([a, b]))
    u = ranks[: a.size].sum() - a.size * (a.size + 1) / 2.0
    return float(u / (a.size * b.size))


def selectivity_auc(r: np.ndarray, levels: Any, positive: Optional[Any] = None,
                    exclude: Sequence[Any] = ()) -> np.ndarray:
    """ROC form of :func:`selectivity_dprime`: ``2 (AUC - 0.5)`` per neuron (signed for a
    two-level factor; ``mean_l |2 (AUC_l - 0.5)|`` one-vs-rest for a multi-level one)."""
    lab = _np(levels, dtype=None).reshape(-1)
    pairs = _level_pairs(lab, positive, exclude)
    out = np.full(r.shape[1], np.nan)
    if not pairs:
        return out
    for j in range(r.shape[1]):
        s = [2.0 * (_auc(r[a, j], r[b, j]) - 0.5) for a, b in pairs]
        if positive is not None:
            out[j] = s[0]
        elif np.all(np.isfinite(s)):
            out[j] = float(np.mean(np.abs(s)))
    return out


def poisson_rate_draws(r: np.ndarray, dur_s: np.ndarray, n_draws: int, seed: int = 0) -> np.ndarray:
    """``[S, K, N]`` rates of Poisson spike counts drawn from predicted trial-mean rates:
    ``c ~ Poisson(r dur)``, rate ``c / dur`` (NaN where ``r`` is NaN or ``dur = 0``)."""
    rng = np.random.default_rng(seed)
    ok = np.isfinite(r) & (dur_s > 0)
    lam = np.where(ok, np.maximum(r, 0.0) * dur_s, 0.0)
    c = rng.poisson(lam, size=(int(n_draws),) + r.shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ok, c / np.where(ok, dur_s, 1.0), np.nan)


def selectivity_r(pred_sel: np.ndarray, data_sel: np.ndarray) -> Tuple[float, float, int]:
    """Pearson r across neurons between two selectivity vectors (neurons finite in both).

    Returns ``(r, p, n)`` (two-sided p of scipy.stats.pearsonr); NaN with fewer than 3
    neurons or a constant vector.
    """
    a, b = np.asarray(pred_sel, float).reshape(-1), np.asarray(data_sel, float).reshape(-1)
    ok = np.isfinite(a) & np.isfinite(b)
    n = int(ok.sum())
    if n < 3 or np.ptp(a[ok]) <= 0 or np.ptp(b[ok]) <= 0:
        return float("nan"), float("nan"), n
    from scipy.stats import pearsonr

    res = pearsonr(a[ok], b[ok])
    return float(res[0]), float(res[1]), n


def factor_noise_ceiling(data_a: np.ndarray, ma: np.ndarray, conditions: Any, factors: Dict[str, Any],
                         win_r: np.ndarray, sigma_bins: float = 0.0, seg: Optional[np.ndarray] = None,
                         excluded: Optional[Dict[str, Sequence[Any]]] = None,
                         positive: Optional[Dict[str, Any]] = None, n_splits: int = 50, seed: int = 0,
                         n_target: Optional[int] = None) -> Dict[str, Any]:
    """Split-half ceilings of the condition- and factor-resolved metrics (data alone).

    Same procedure and reasoning as :func:`psth_noise_ceiling`: ``n_splits`` random halves
    within each condition; per split the metric between half A and half B (smoothed aligned
    condition PSTHs per neuron; marginal responses per neuron; selectivity vectors
    *across* neurons); the mean split-half ``r_AB`` is extrapolated with Spearman-Brown to the
    reliability ``rho`` of the scored trial count (``k = 2 n_target / K``), and the ceiling is
    ``sqrt(rho)`` for a correlation, ``rho`` for ``condition_psth_r2``.

    Args:
        data_a, ma: aligned data ``[K, W, N]``; conditions ``[K]``; factors ``{name: [K]}``;
        win_r: ``[K, N]`` trial-mean rates in the selectivity window.

    Returns:
        ``{metric: {"per_neuron": [N] or None, "mean": float, "split_half_r": ...}}`` for
        ``condition_psth_r2``, ``condition_psth_corr``, ``marginal_corr_<f>``,
        ``selectivity_r_<f>`` and ``selectivity_auc_r_<f>``.
    """
    excluded = dict(excluded or {})
    positive = dict(positive or {})
    k_trials, _, n_neurons = data_a.shape
    cond = _np(conditions, dtype=None).reshape(-1)
    groups = [np.flatnonzero(cond == c) for c in np.unique(cond)]
    kk = 2.0 if n_target is None else 2.0 * float(n_target) / k_trials
    rng = np.random.default_rng(seed)
    acc: Dict[str, list] = {}
    for _ in range(int(n_splits)):
        half = np.zeros(k_trials, dtype=bool)
        for idx in groups:
            perm = rng.permutation(idx)
            cut = len(idx) // 2 + (int(rng.integers(2)) if len(idx) % 2 else 0)
            half[perm[:cut]] = True
        # condition PSTHs over the conditions present in both halves
        both = np.intersect1d(np.unique(cond[half]), np.unique(cond[~half]))
        pa, va, _ = group_psths(data_a[half], ma[half], cond[half], sigma_bins, seg, both)
        pb, vb, _ = group_psths(data_a[~half], ma[~half], cond[~half], sigma_bins, seg, both)
        acc.setdefault("condition", []).append(stacked_corr_per_neuron(pa, pb, va & vb))
        for f, lv in factors.items():
            lab = np.asarray(lv).reshape(-1)
            ex = tuple(excluded.get(f, ()))
            ra, rva, la = marginal_responses(data_a[half], ma[half], lab[half], sigma_bins, seg, ex)
            rb, rvb, lb = marginal_responses(data_a[~half], ma[~half], lab[~half], sigma_bins, seg, ex)
            common = np.intersect1d(la, lb)
            ia, ib = np.searchsorted(la, common), np.searchsorted(lb, common)
            acc.setdefault(f"marginal_corr_{f}", []).append(
                stacked_corr_per_neuron(ra[ia], rb[ib], rva[ia] & rvb[ib]))
            pos = positive.get(f)
            sa = selectivity_dprime(win_r[half], lab[half], pos, ex)
            sb = selectivity_dprime(win_r[~half], lab[~half], pos, ex)
            acc.setdefault(f"selectivity_r_{f}", []).append(selectivity_r(sa, sb)[0])
            aa = selectivity_auc(win_r[half], lab[half], pos, ex)
            ab = selectivity_auc(win_r[~half], lab[~half], pos, ex)
            acc.setdefault(f"selectivity_auc_r_{f}", []).append(selectivity_r(aa, ab)[0])

    def mean_r(rs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(np.stack([np.atleast_1d(np.asarray(r, float)) for r in rs]), axis=0)

    out: Dict[str, Any] = {}
    r = mean_r(acc["condition"])
    rho = _spearman_brown(r, kk)
    out["condition_psth_corr"] = {"per_neuron": np.sqrt(rho), "mean": _nanmean(np.sqrt(rho)), "split_half_r": r}
    out["condition_psth_r2"] = {"per_neuron": rho, "mean": _nanmean(rho), "split_half_r": r}
    for key, rs in acc.items():
        if key == "condition":
            continue
        r = mean_r(rs)
        c = np.sqrt(_spearman_brown(r, kk))
        if key.startswith("marginal"):
            out[key] = {"per_neuron": c, "mean": _nanmean(c), "split_half_r": r}
        else:
            out[key] = {"per_neuron": None, "mean": float(c[0]), "split_half_r": float(r[0])}
    return out
