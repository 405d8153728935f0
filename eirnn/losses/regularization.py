"""Regularisers on weights and on model activity.

Shapes: ``model_rates`` ``[B, T, N]`` (sp/s), ``mask`` bool ``[B, T, N]`` or
``None``; weights are tensors of any shape. All results are scalar tensors.
"""

from __future__ import annotations

from typing import Iterable, Optional

import torch
from torch import Tensor

from .masked import check_rates

__all__ = ["weight_l2", "activity_regularization"]


def weight_l2(weights: Iterable[Tensor], lam: float = 1e-4) -> Tensor:
    """``lam * sum_W mean(W^2)`` over the given weight tensors.

    Each tensor contributes its mean square (so large matrices are not
    favoured over small ones). An empty iterable gives ``tensor(0.)``.
    """
    total: Optional[Tensor] = None
    for w in weights:
        term = w.pow(2).mean()
        total = term if total is None else total + term
    if total is None:
        return torch.zeros(())
    return lam * total


def activity_regularization(
    model_rates: Tensor,
    mask: Optional[Tensor] = None,
    target_mean: float = 10.0,
    target_max: float = 100.0,
    lambda_mean: float = 0.01,
    lambda_max: float = 0.001,
) -> Tensor:
    """Keep the mean rate near ``target_mean`` and peak rates below ``target_max``.

    ``R = lambda_mean * (mean_V r - target_mean)^2
         + lambda_max * mean_n relu(max_{(b,t) in V_n} r[b,t,n] - target_max)^2``

    where ``V`` is the set of valid ``(b, t, n)`` and ``V_n`` its slice for
    neuron ``n``; neurons with no valid bin are excluded from ``mean_n``.

    Args:
        model_rates: ``[B, T, N]``; mask: bool ``[B, T, N]`` or ``None``.

    Returns:
        scalar tensor.
    """
    mask = check_rates(model_rates, None, mask)
    dtype = model_rates.dtype
    x = torch.where(mask, model_rates, torch.zeros_like(model_rates))
    mean_rate = x.sum() / mask.sum().clamp_min(1).to(dtype)
    mean_term = (mean_rate - target_mean).pow(2)

    has_bins = mask.any(dim=0).any(dim=0)  # [N]
    floor = torch.full_like(model_rates, float(target_max))  # never exceeds the threshold
    peak = torch.where(mask, model_rates, floor).amax(dim=(0, 1))  # [N]
    excess = torch.relu(peak - target_max).pow(2)
    excess = torch.where(has_bins, excess, torch.zeros_like(excess))
    max_term = excess.sum() / has_bins.sum().clamp_min(1).to(dtype)
    return lambda_mean * mean_term + lambda_max * max_term
