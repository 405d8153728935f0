"""Losses for fitting E/I RNNs to recordings (torch, differentiable, mask-aware).

Conventions: rates ``[B, T, N]`` in sp/s, ``mask`` bool ``[B, T, N]``
(``True`` = valid, ``None`` = all valid); masked bins never affect values or
gradients. See each module for formulas.
"""

from .neuron import (
    check_rates,
    condition_neuron_loss_terms,
    hybrid_neuron_loss,
    masked_psth,
    neuron_loss,
    neuron_loss_terms,
    poisson_neuron_loss,
)
from .regularization import activity_regularization, weight_l2
from .sinkhorn import sinkhorn_log
from .trial import (
    euclidean_trial_cost,
    poisson_trial_cost,
    population_trajectory,
    smooth_trajectory,
    trial_loss,
    zscore_across_trials,
)

__all__ = [
    "check_rates",
    "masked_psth",
    "neuron_loss",
    "neuron_loss_terms",
    "condition_neuron_loss_terms",
    "poisson_neuron_loss",
    "hybrid_neuron_loss",
    "sinkhorn_log",
    "trial_loss",
    "population_trajectory",
    "smooth_trajectory",
    "zscore_across_trials",
    "euclidean_trial_cost",
    "poisson_trial_cost",
    "weight_l2",
    "activity_regularization",
]
