"""Single-neuron (PSTH) losses: the lab's ``L_neuron`` and Poisson alternatives.

Shapes and conventions shared by every loss in :mod:`eirnn.losses`:

* ``model_rates``, ``target_rates``: float tensors ``[B, T, N]`` in sp/s
  (trials x time bins x recorded units); ``model_rates`` is already restricted
  to the recorded units.
* ``mask``: bool tensor ``[B, T, N]``, ``True`` = valid bin, or ``None`` (all
  valid). Masked entries never influence a value or a gradient: they are
  removed with :func:`torch.where` before any arithmetic, so NaN/garbage there
  is harmless.
* ``target_rates`` is cast to ``model_rates.dtype``.
* PSTH = masked mean over trials,
  ``psth[t, n] = sum_b m[b,t,n] x[b,t,n] / sum_b m[b,t,n]``; a ``(t, n)`` with
  no valid trial is "invalid" and is dropped from everything downstream.

All functions are differentiable, device-agnostic, and never synchronise with
the host (no ``.item()`` / ``.cpu()``).
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from .masked import check_rates

__all__ = [
    "check_rates",
    "masked_psth",
    "neuron_loss_terms",
    "neuron_loss",
    "poisson_neuron_loss",
    "hybrid_neuron_loss",
    "condition_neuron_loss_terms",
]

# Floor on squared norms / variances; sqrt(1e-12) = 1e-6 is the norm clamp.
_NORM_FLOOR = 1e-6
_VAR_FLOOR = 1e-6


def masked_psth(rates: Tensor, mask: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """Masked trial average.

    ``psth[t, n] = sum_b m[b,t,n] * x[b,t,n] / sum_b m[b,t,n]`` and
    ``valid[t, n] = sum_b m[b,t,n] > 0``.

    Args:
        rates: ``[B, T, N]``.
        mask: bool ``[B, T, N]`` or ``None``.

    Returns:
        ``(psth [T, N], valid [T, N] bool)``; ``psth`` is 0 where not valid.
    """
    from .maskcache import mask_counts  # counts cached per mask tensor (performance only)

    mask = check_rates(rates, None, mask)
    all_valid, denom, valid = mask_counts(mask, 0)
    x = rates if all_valid else torch.where(mask, rates, 0.0)  # every entry valid: the same sums, no copy
    psth = x.sum(dim=0) / denom.to(rates.dtype)
    return psth, valid


def _masked_center(x: Tensor, valid: Tensor, dim: int) -> Tuple[Tensor, Tensor]:
    """Mean over ``dim`` of the valid entries and the centred, zero-filled ``x``."""
    n = valid.sum(dim=dim, keepdim=True).clamp_min(1).to(x.dtype)
    mean = x.sum(dim=dim, keepdim=True) / n  # x is already 0 where invalid
    xc = torch.where(valid, x - mean, torch.zeros_like(x))
    return mean, xc


def _psth_noise_variance(target_rates: Tensor, mask: Tensor, valid: Tensor, n_t: Tensor) -> Tensor:
    """Expected temporal variance that sampling noise adds to the data PSTH, per neuron ``[N]``.

    ``(1 - 1/T_n) * sum_t [valid_tn * s2_tn / n_tn] / T_n`` with ``n_tn`` valid trials,
    ``s2_tn`` their variance (ddof=1; 0 where ``n_tn < 2``) and ``T_n = n_t`` valid bins
    (see :func:`neuron_loss_terms`, ``var_noise_correction``). A function of the data only:
    no gradient flows through it.
    """
    with torch.no_grad():
        n = mask.sum(dim=0).to(target_rates.dtype)  # [T, N]
        x = torch.where(mask, target_rates, torch.zeros_like(target_rates))
        mu = x.sum(dim=0) / n.clamp_min(1)
        dev2 = torch.where(mask, (target_rates - mu).pow(2), torch.zeros_like(target_rates)).sum(dim=0)
        s2 = dev2 / (n - 1).clamp_min(1)
        per_bin = torch.where(valid & (n >= 2), s2 / n.clamp_min(1), torch.zeros_like(s2))
        return (1.0 - 1.0 / n_t) * per_bin.sum(dim=0) / n_t


def neuron_loss_terms(
    model_rates: Tensor,
    target_rates: Tensor,
    mask: Optional[Tensor] = None,
    lambda_scale: float = 0.1,
    lambda_var: float = 0.05,
    target_smooth_sigma_bins: float = 0.0,
    var_noise_correction: bool = False,
) -> Dict[str, Tensor]:
    """Components of the lab's ``L_neuron`` computed on the PSTHs.

    With ``M = psth(model_rates)``, ``D = psth(target_rates)`` (``[T, N]``) and
    ``V`` the valid ``(t, n)`` set, all statistics use only ``V``:

    * ``corr  = mean_n (1 - r_n)``, ``r_n = <Mc_n, Dc_n> / (max(|Mc_n|, 1e-6)
      * max(|Dc_n|, 1e-6))`` where ``Mc_n`` is ``M[:, n]`` centred over its
      valid bins (Pearson over time). A flat PSTH gives ``r_n = 0`` (not NaN).
      Neurons with no valid bin are excluded from the mean over ``n``.
    * ``scale = (mean_V M - mean_V D)^2 / max(var_V D, 1e-6)`` (grand mean and
      population variance, ddof=0, over all valid ``(t, n)``).
    * ``var = (mean_n var_t M - mean_n var_t D)^2 / ((mean_n var_t D)^2 + 1e-6)``
      (per-neuron population variance over valid bins).
    * ``total = corr + lambda_scale * scale + lambda_var * var``.

    ``var_noise_correction=True`` removes the sampling noise of the data PSTH from its
    temporal variance before it is matched. ``D`` is the mean of ``n_tn`` noisy trials, so
    ``E[var_t D_n] = var_t(true PSTH_n) + (1 - 1/T_n) mean_t s2_tn / n_tn`` (``s2_tn``: the
    across-trial variance of ``target_rates`` at ``(t, n)``, ddof=1; ``T_n`` valid bins;
    independent trials). The corrected target is::

        var_t D_n  -  (1 - 1/T_n) mean_t [ s2_tn / n_tn ]      (bins with n_tn < 2 add 0)

    clamped at 0, an unbiased estimate of the underlying PSTH's variance. Without it, the
    term asks the model for the noise as modulation: with 32 trials per step on the session
    of ``../shared/data``, 17.5 of the batch PSTH's mean variance of 21.2 (sp/s)^2 is
    sampling noise. (Measured on that session, experiments/evaluation.md: it did not fix
    the models' too large rate modulations, whose Poisson readout gain stays ~0.55, and it
    slowed the PSTH fit; so it is off in every shipped configuration.) The lab's loss is
    the uncorrected one (default ``False``). Cannot be combined with
    ``target_smooth_sigma_bins`` (smoothing changes the noise, the formula would be wrong).

    ``target_smooth_sigma_bins > 0`` first smooths ``D`` in time (mask-aware Gaussian,
    :func:`eirnn.losses.trial.smooth_trajectory`): the data PSTH of a finite set of trials
    carries sampling noise that the model would otherwise be asked to reproduce; the
    smoothed PSTH is the better estimate of the underlying rate (the width can be chosen on
    the training trials, see :func:`eirnn.baselines.psth.choose_smoothing`).

    Args:
        model_rates, target_rates: ``[B, T, N]``.
        mask: bool ``[B, T, N]`` or ``None``.

    Returns:
        dict with scalar tensors ``corr``, ``scale``, ``var``, ``total``.
    """
    mask = check_rates(model_rates, target_rates, mask)
    if var_noise_correction and target_smooth_sigma_bins > 0:
        raise ValueError("var_noise_correction cannot be combined with target_smooth_sigma_bins > 0 "
                         "(the correction is the sampling variance of the unsmoothed PSTH)")
    target_rates = target_rates.to(model_rates.dtype)
    m, valid = masked_psth(model_rates, mask)
    d, _ = masked_psth(target_rates, mask)
    if target_smooth_sigma_bins > 0:
        from eirnn.losses.trial import smooth_trajectory

        d = smooth_trajectory(d.T, valid.T, float(target_smooth_sigma_bins)).T
    dtype = m.dtype
    has_bins = valid.any(dim=0)  # [N]
    n_neurons = has_bins.sum().clamp_min(1).to(dtype)
    n_t = valid.sum(dim=0).clamp_min(1).to(dtype)  # [N]

    # Pearson over time per neuron (squared-norm floor => gradient-safe sqrt).
    _, mc = _masked_center(m, valid, dim=0)
    _, dc = _masked_center(d, valid, dim=0)
    m_norm = mc.pow(2).sum(0).clamp_min(_NORM_FLOOR**2).sqrt()
    d_norm = dc.pow(2).sum(0).clamp_min(_NORM_FLOOR**2).sqrt()
    r = (mc * dc).sum(0) / (m_norm * d_norm)
    corr = torch.where(has_bins, 1.0 - r, torch.zeros_like(r)).sum() / n_neurons

    # Grand-mean offset scaled by the data variance over all valid (t, n).
    n_all = valid.sum().clamp_min(1).to(dtype)
    m_mean = m.sum() / n_all
    d_mean = d.sum() / n_all
    d_dev = torch.where(valid, d - d_mean, torch.zeros_like(d))
    d_var_all = d_dev.pow(2).sum() / n_all
    scale = (m_mean - d_mean).pow(2) / d_var_all.clamp_min(_VAR_FLOOR)

    # Mean (over neurons) temporal variance of the PSTH.
    m_var_t = mc.pow(2).sum(0) / n_t
    d_var_t = dc.pow(2).sum(0) / n_t
    zero = torch.zeros_like(m_var_t)
    m_v = torch.where(has_bins, m_var_t, zero).sum() / n_neurons
    if var_noise_correction:
        d_var_t = (d_var_t - _psth_noise_variance(target_rates, mask, valid, n_t)).clamp_min(0.0)
    d_v = torch.where(has_bins, d_var_t, zero).sum() / n_neurons
    var = (m_v - d_v).pow(2) / (d_v.pow(2) + 1e-6)

    total = corr + lambda_scale * scale + lambda_var * var
    return {"corr": corr, "scale": scale, "var": var, "total": total}


def neuron_loss(
    model_rates: Tensor,
    target_rates: Tensor,
    mask: Optional[Tensor] = None,
    lambda_scale: float = 0.1,
    lambda_var: float = 0.05,
    target_smooth_sigma_bins: float = 0.0,
    var_noise_correction: bool = False,
) -> Tensor:
    """``L_neuron = L_corr + lambda_scale * L_scale + lambda_var * L_var``.

    See :func:`neuron_loss_terms` for the definitions. Inputs ``[B, T, N]``,
    returns a scalar tensor.
    """
    return neuron_loss_terms(model_rates, target_rates, mask, lambda_scale, lambda_var,
                             target_smooth_sigma_bins, var_noise_correction)["total"]


def poisson_neuron_loss(
    model_rates: Tensor,
    target_rates: Tensor,
    mask: Optional[Tensor] = None,
    bin_size_ms: float = 25.0,
    eps: float = 1e-8,
    include_constant: bool = False,
) -> Tensor:
    """Mean Poisson negative log-likelihood of the target spike counts.

    With ``dt = bin_size_ms / 1000``, ``lam = model_rates * dt`` and
    ``k = target_rates * dt`` (``[B, T, N]``)::

        L = mean_{(b,t,n) valid} [ lam - k * log(lam + eps) (+ lgamma(k + 1)) ]

    The ``lgamma(k + 1)`` term is a data-only constant: it is left out by
    default (``include_constant=False``) and does not change gradients; with
    ``include_constant=True`` the value is the exact NLL for integer ``k``.
    Returns a scalar tensor.
    """
    mask = check_rates(model_rates, target_rates, mask)
    target_rates = target_rates.to(model_rates.dtype)
    dt = bin_size_ms / 1000.0
    zero = torch.zeros_like(model_rates)
    lam = torch.where(mask, model_rates, zero) * dt
    k = torch.where(mask, target_rates, zero) * dt
    nll = lam - k * torch.log(lam + eps)
    if include_constant:
        nll = nll + torch.lgamma(k + 1.0)
    nll = torch.where(mask, nll, zero)
    return nll.sum() / mask.sum().clamp_min(1).to(nll.dtype)


def hybrid_neuron_loss(
    model_rates: Tensor,
    target_rates: Tensor,
    mask: Optional[Tensor] = None,
    poisson_weight: float = 0.5,
    lambda_scale: float = 0.1,
    lambda_var: float = 0.05,
    bin_size_ms: float = 25.0,
    eps: float = 1e-8,
    target_smooth_sigma_bins: float = 0.0,
    var_noise_correction: bool = False,
) -> Tensor:
    """``w * poisson_neuron_loss + (1 - w) * neuron_loss`` with ``w = poisson_weight``.

    Inputs ``[B, T, N]``; returns a scalar tensor. The Poisson part omits the
    ``lgamma`` constant.
    """
    if not 0.0 <= poisson_weight <= 1.0:
        raise ValueError(f"poisson_weight must be in [0, 1], got {poisson_weight}")
    p = poisson_neuron_loss(model_rates, target_rates, mask, bin_size_ms=bin_size_ms, eps=eps)
    n = neuron_loss(model_rates, target_rates, mask, lambda_scale, lambda_var, target_smooth_sigma_bins,
                    var_noise_correction)
    return poisson_weight * p + (1.0 - poisson_weight) * n



def condition_neuron_loss_terms(
    model_rates: Tensor,
    target_rates: Tensor,
    mask: Optional[Tensor],
    conditions: Tensor,
    lambda_var: float = 0.05,
    min_trials: int = 2,
    var_noise_correction: bool = True,
) -> Dict[str, Tensor]:
    """Condition-resolved ``L_neuron`` (issue 15): the lab's correlation and variance terms on
    the PSTH of each condition in the batch instead of the batch PSTH.

    With ``S[b, b'] = [c_b = c_b']`` (no host sync, no condition count needed), every trial
    ``b`` sees its condition's PSTHs ``M_b = sum_b' S m x / sum_b' S m`` and ``D_b`` (model
    and data, ``[B, T, N]``); trials of conditions with fewer than ``min_trials`` trials in
    the batch get weight 0, the others 1, so each condition counts by its trial count::

        corr = sum_b w_b mean_n (1 - r_bn) / sum_b w_b      (r_bn: Pearson over valid t)
        var  = sum_b w_b (v^M_b - v^D_b)^2 / ((v^D_b)^2 + 1e-6) / sum_b w_b
        total = corr + lambda_var * var

    ``v_b = mean_n var_t`` of the condition PSTH. With ``var_noise_correction`` the data
    target is ``var_t D - (1 - 1/T_n) mean_t s2 / n`` (``s2``: the condition's across-trial
    variance at ``(t, n)``, ddof 1; ``n`` its valid trials), clamped at 0: the variance of a
    PSTH of 2-3 trials is mostly sampling noise, which the model would otherwise be asked to
    produce as modulation (:func:`neuron_loss_terms` explains the correction).

    Returns:
        dict of scalar tensors ``corr``, ``var``, ``total``.
    """
    mask = check_rates(model_rates, target_rates, mask)
    if conditions.dim() != 1 or conditions.shape[0] != model_rates.shape[0]:
        raise ValueError(f"conditions must be [B] = [{model_rates.shape[0]}], got {tuple(conditions.shape)}")
    dtype = model_rates.dtype
    target = target_rates.to(dtype)
    b, t, n = model_rates.shape
    same = (conditions[:, None] == conditions[None, :]).to(dtype)                 # [B, B]
    mf = mask.to(dtype)
    x = torch.where(mask, model_rates, torch.zeros_like(model_rates)).reshape(b, t * n)
    y = torch.where(mask, target, torch.zeros_like(target)).reshape(b, t * n)
    cnt = (same @ mf.reshape(b, t * n)).reshape(b, t, n)                         # trials per (c, t, n)
    m = (same @ x).reshape(b, t, n) / cnt.clamp_min(1)
    d = (same @ y).reshape(b, t, n) / cnt.clamp_min(1)
    valid = cnt > 0
    n_trials = same.sum(1)                                                       # [B] trials of b's condition
    w = (n_trials >= float(min_trials)).to(dtype)
    has = valid.any(1)                                                           # [B, N]
    n_t = valid.sum(1).clamp_min(1).to(dtype)                                    # [B, N]
    _, mc = _masked_center(m, valid, dim=1)
    _, dc = _masked_center(d, valid, dim=1)
    m_norm = mc.pow(2).sum(1).clamp_min(_NORM_FLOOR**2).sqrt()
    d_norm = dc.pow(2).sum(1).clamp_min(_NORM_FLOOR**2).sqrt()
    r = (mc * dc).sum(1) / (m_norm * d_norm)                                     # [B, N]
    hn = has.to(dtype)
    per_b = ((1.0 - r) * hn).sum(1) / hn.sum(1).clamp_min(1)
    wsum = w.sum().clamp_min(1)
    corr = (w * per_b).sum() / wsum
    m_var = mc.pow(2).sum(1) / n_t
    d_var = dc.pow(2).sum(1) / n_t
    if var_noise_correction:
        with torch.no_grad():
            y2 = torch.where(mask, target.pow(2), torch.zeros_like(target)).reshape(b, t * n)
            s2 = ((same @ y2).reshape(b, t, n) - cnt * d.pow(2)) / (cnt - 1).clamp_min(1)
            per_bin = torch.where(valid & (cnt >= 2), s2.clamp_min(0) / cnt.clamp_min(1), torch.zeros_like(s2))
            noise = (1.0 - 1.0 / n_t) * per_bin.sum(1) / n_t
        d_var = (d_var - noise).clamp_min(0.0)
    mv = (m_var * hn).sum(1) / hn.sum(1).clamp_min(1)
    dv = (d_var * hn).sum(1) / hn.sum(1).clamp_min(1)
    var = (w * (mv - dv).pow(2) / (dv.pow(2) + 1e-6)).sum() / wsum
    return {"corr": corr, "var": var, "total": corr + lambda_var * var}
