"""Baselines scored by the same code, on the same trials, as the fitted RNN.

=======================  ==============================================================
name                     predictor of a validation trial
=======================  ==============================================================
``train_mean``           the mean PSTH of the training trials
``train_mean_smoothed``  the same, Gaussian-smoothed in time (width chosen on training
                         trials by inner cross-validation)
``condition_mean``       the mean PSTH of the training trials of the same condition
                         (grand mean for a condition absent from training)
``condition_mean_shrunk``  the smoothed condition mean shrunk towards the smoothed grand
                         mean, ``n_c / (n_c + kappa)`` (width and kappa chosen on training
                         trials by inner cross-validation)
``glm``                  a Poisson GLM on time-lagged task inputs (raised-cosine lags,
                         exp link, per-neuron L2 chosen on training trials)
=======================  ==============================================================

The unconstrained RNN (no Dale's law, same size and losses) is trained, not fitted here:
``python -m eirnn.cv`` trains it on each fold (``model.dale=false``).

Usage::

    from eirnn.baselines import TrialSet, make_baseline
    pred = make_baseline("glm").fit(train_set).predict(val_set)     # [K, T, N] sp/s
"""
from __future__ import annotations

from typing import Any, Dict

from .base import Baseline, TrialSet, condition_codes
from .glm import PoissonGLM, lagged_features, raised_cosine_basis
from .psth import (ConditionMeanPSTH, ShrunkConditionMeanPSTH, SmoothedMeanPSTH, TrainMeanPSTH, masked_mean_psth,
                   smooth_psth)

BASELINES = {
    "train_mean": TrainMeanPSTH,
    "train_mean_smoothed": SmoothedMeanPSTH,
    "condition_mean": ConditionMeanPSTH,
    "condition_mean_shrunk": ShrunkConditionMeanPSTH,
    "glm": PoissonGLM,
}
#: Baselines that are trained RNNs (handled by eirnn.cv, not fitted by make_baseline).
TRAINED_BASELINES = ("unconstrained_rnn",)


def make_baseline(name: str, **kwargs: Any) -> Baseline:
    """A fresh baseline by name (see the module docstring); kwargs go to its constructor."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; known: {sorted(BASELINES)} (+ {list(TRAINED_BASELINES)} in eirnn.cv)")
    return BASELINES[name](**kwargs)


__all__ = ["Baseline", "TrialSet", "condition_codes", "BASELINES", "TRAINED_BASELINES", "make_baseline",
           "TrainMeanPSTH", "SmoothedMeanPSTH", "ConditionMeanPSTH", "ShrunkConditionMeanPSTH", "PoissonGLM", "raised_cosine_basis",
           "lagged_features", "masked_mean_psth", "smooth_psth"]
