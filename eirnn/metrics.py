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
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
from scipy.special import gammaln

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
    x, y, m = _prep(model_rates, target_rates, mask)
    dt = bin_size_ms / 1000.0
    k = np.where(m, np.round(y * dt), 0.0)
    lam = np.maximum(x * dt, _LAM_FLOOR)
    n_bins = m.sum(axis=(0, 1))
    lam0 = np.maximum(k.sum(axis=(0, 1)) / np.maximum(n_bins, 1), _LAM_FLOOR)  # [N]
    ll = np.where(m, k * np.log(lam) - lam - gammaln(k + 1.0), 0.0).sum(axis=(0, 1))
    ll0 = np.where(m, k * np.log(lam0) - lam0 - gammaln(k + 1.0), 0.0).sum(axis=(0, 1))
    return ll, ll0, k.sum(axis=(0, 1))


def bits_per_spike_per_neuron(
    model_rates: Any, target_rates: Any, mask: Any = None, bin_size_ms: float = 25.0
) -> np.ndarray:
    """Per-neuron ``(LL_n - LL0_n) / (S_n ln 2)``; NaN where ``S_n = 0``.

    Same terms as :func:`bits_per_spike`, summed over neuron ``n`` only.

    Returns:
        ``[N]`` float array.
    """
    ll, ll0, spikes = _bps_parts(model_rates, target_rates, mask, bin_size_ms)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (ll - ll0) / (spikes * math.log(2.0))
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

    Returns:
        float (NaN if there are no spikes).
    """
    ll, ll0, spikes = _bps_parts(model_rates, target_rates, mask, bin_size_ms)
    total = spikes.sum()
    if total <= 0:
        return float("nan")
    return float((ll.sum() - ll0.sum()) / (total * math.log(2.0)))


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
    n_valid = valid.sum(axis=(0, 1))
    d_mean = np.where(valid, pd, 0.0).sum(axis=(0, 1)) / np.maximum(n_valid, 1)
    ss_res = np.where(valid, (pd - pm) ** 2, 0.0).sum(axis=(0, 1))
    ss_tot = np.where(valid, (pd - d_mean) ** 2, 0.0).sum(axis=(0, 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r2 = 1.0 - ss_res / ss_tot
    return np.where((n_valid > 0) & (ss_tot > 0), r2, np.nan)


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
    c, t, n = pm.shape
    return _masked_pearson(pm.reshape(c * t, n), pd.reshape(c * t, n), valid.reshape(c * t, n))


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
