"""PSTH baselines: the training trials' mean PSTH, its smoothed version, and per-condition means.

All are masked trial averages over the training trials, ``P[t, n] = sum_b m x / sum_b m``;
a ``(t, n)`` with no valid training trial falls back to neuron n's mean over all its
valid training bins. Predictions repeat the PSTH on every trial to predict.
"""
from __future__ import annotations

from typing import Any, Dict, Sequence

import numpy as np
from scipy.ndimage import gaussian_filter1d

from eirnn.data.splits import stratified_kfold

from .base import Baseline, TrialSet

__all__ = ["masked_mean_psth", "smooth_psth", "TrainMeanPSTH", "SmoothedMeanPSTH", "ConditionMeanPSTH",
           "ShrunkConditionMeanPSTH"]


def masked_mean_psth(rates: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``[K, T, N] -> [T, N]`` masked mean over trials; empty ``(t, n)`` -> the neuron's
    mean over its valid bins (0 for a neuron with none)."""
    cnt = mask.sum(0)
    tot = np.where(mask, rates, 0.0).sum(0)
    psth = tot / np.maximum(cnt, 1)
    fill = tot.sum(0) / np.maximum(cnt.sum(0), 1)
    return np.where(cnt > 0, psth, fill[None, :])


def smooth_psth(psth: np.ndarray, sigma_bins: float) -> np.ndarray:
    """Gaussian smoothing along time (axis 0 of ``[T, N]``), width ``sigma_bins``.

    Zero-padded and renormalised by the smoothed window (normalised convolution), so the
    edges are not pulled towards 0. ``sigma_bins <= 0`` returns the input.
    """
    if sigma_bins <= 0:
        return psth
    ones = np.ones(psth.shape[0])
    w = gaussian_filter1d(ones, sigma_bins, mode="constant", truncate=4.0)
    return gaussian_filter1d(psth, sigma_bins, axis=0, mode="constant", truncate=4.0) / w[:, None]


class TrainMeanPSTH(Baseline):
    """Every trial is predicted by the mean PSTH of all training trials."""

    name = "train_mean"

    def fit(self, train: TrialSet) -> "TrainMeanPSTH":
        self.psth_ = masked_mean_psth(train.rates, train.mask)
        return self

    def predict(self, trials: TrialSet) -> np.ndarray:
        return np.broadcast_to(self.psth_, (trials.n_trials,) + self.psth_.shape).copy()


class SmoothedMeanPSTH(Baseline):
    """The training mean PSTH smoothed in time; the width is chosen on the training trials.

    ``sigma_bins`` is picked from ``sigmas`` by ``inner_folds``-fold cross-validation
    within the training trials (stratified by condition): for each inner fold the mean
    PSTH of the other folds, smoothed, is scored with :func:`eirnn.metrics.psth_corr`
    against the held-out fold; the best mean score wins (ties -> the smaller sigma).
    """

    name = "train_mean_smoothed"

    def __init__(self, sigmas: Sequence[float] = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0),
                 inner_folds: int = 5, seed: int = 0):
        self.sigmas = tuple(float(s) for s in sigmas)
        self.inner_folds = int(inner_folds)
        self.seed = int(seed)

    def fit(self, train: TrialSet) -> "SmoothedMeanPSTH":
        from eirnn.metrics import psth_corr

        scores = np.zeros(len(self.sigmas))
        k = min(self.inner_folds, train.n_trials)
        if k >= 2 and len(self.sigmas) > 1:
            fold = stratified_kfold(train.conditions, k, self.seed)
            for f in range(k):
                fit, held = fold != f, fold == f
                base = masked_mean_psth(train.rates[fit], train.mask[fit])
                for i, s in enumerate(self.sigmas):
                    pred = np.broadcast_to(smooth_psth(base, s), (int(held.sum()),) + base.shape)
                    scores[i] += psth_corr(pred, train.rates[held], train.mask[held]) / k
        self.cv_scores_ = dict(zip(self.sigmas, scores.tolist()))
        self.sigma_bins_ = self.sigmas[int(np.argmax(scores))] if len(self.sigmas) > 1 else self.sigmas[0]
        self.psth_ = smooth_psth(masked_mean_psth(train.rates, train.mask), self.sigma_bins_)
        return self

    def predict(self, trials: TrialSet) -> np.ndarray:
        return np.broadcast_to(self.psth_, (trials.n_trials,) + self.psth_.shape).copy()

    def describe(self) -> str:
        return f"{self.name} (sigma {self.sigma_bins_:g} bins, chosen on training trials)"

    def info(self) -> Dict[str, Any]:
        return {"sigma_bins": self.sigma_bins_}


class ConditionMeanPSTH(Baseline):
    """Each trial is predicted by the mean PSTH of the training trials of its condition.

    Conditions are the (location, identity, reward, salience) codes of
    :func:`~eirnn.baselines.base.condition_codes`. A condition without training trials,
    and any ``(t, n)`` where its training trials have no valid bin, fall back to the
    mean PSTH of all training trials.
    """

    name = "condition_mean"

    def fit(self, train: TrialSet) -> "ConditionMeanPSTH":
        self.grand_ = masked_mean_psth(train.rates, train.mask)
        self.psths_: Dict[int, np.ndarray] = {}
        for c in np.unique(train.conditions):
            sel = train.conditions == c
            r, m = train.rates[sel], train.mask[sel]
            cnt = m.sum(0)
            p = np.where(m, r, 0.0).sum(0) / np.maximum(cnt, 1)
            self.psths_[int(c)] = np.where(cnt > 0, p, self.grand_)
        return self

    def predict(self, trials: TrialSet) -> np.ndarray:
        self.n_fallback_ = int(sum(int(c) not in self.psths_ for c in trials.conditions))
        return np.stack([self.psths_.get(int(c), self.grand_) for c in trials.conditions])

    def info(self) -> Dict[str, Any]:
        return {"n_conditions": len(self.psths_)}


class ShrunkConditionMeanPSTH(Baseline):
    """Smoothed condition mean, shrunk towards the smoothed grand mean (issue 15).

    For a condition with ``n_c`` training trials, with ``S_sigma`` the Gaussian smoothing
    of :func:`smooth_psth`::

        pred_c = w_c S(P_c) + (1 - w_c) S(P_all),      w_c = n_c / (n_c + kappa)

    (``P_c``, ``P_all``: masked mean PSTHs of the condition's / all training trials; a
    ``(t, n)`` without a valid trial of ``c`` uses ``P_all``). ``sigma`` (bins) and
    ``kappa`` (trials) are chosen on the training trials by ``inner_folds``-fold
    cross-validation stratified by condition, minimising the squared error of the
    held-out trials' rates (the same as the count-weighted squared error of their
    condition PSTHs, up to a constant); ties -> the first in grid order. ``kappa = 0`` and
    ``sigma = 0`` is :class:`ConditionMeanPSTH`.
    """

    name = "condition_mean_shrunk"

    def __init__(self, sigmas: Sequence[float] = (0.0, 1.0, 2.0, 3.0, 4.0),
                 kappas: Sequence[float] = (0.0, 2.0, 5.0, 10.0, 20.0, 50.0), inner_folds: int = 5, seed: int = 0):
        self.sigmas = tuple(float(s) for s in sigmas)
        self.kappas = tuple(float(k) for k in kappas)
        self.inner_folds = int(inner_folds)
        self.seed = int(seed)

    @staticmethod
    def _fit_parts(t: TrialSet):
        grand = masked_mean_psth(t.rates, t.mask)
        parts = {}
        for c in np.unique(t.conditions):
            sel = t.conditions == c
            cnt = t.mask[sel].sum(0)
            p = np.where(t.mask[sel], t.rates[sel], 0.0).sum(0) / np.maximum(cnt, 1)
            parts[int(c)] = (np.where(cnt > 0, p, grand), int(sel.sum()))
        return grand, parts

    @staticmethod
    def _table(grand, parts, sigma, kappa):
        g = smooth_psth(grand, sigma)
        return g, {c: (n / (n + kappa) if n + kappa > 0 else 0.0) * smooth_psth(p, sigma)
                   + (kappa / (n + kappa) if n + kappa > 0 else 1.0) * g for c, (p, n) in parts.items()}

    def fit(self, train: TrialSet) -> "ShrunkConditionMeanPSTH":
        grid = [(s, k) for s in self.sigmas for k in self.kappas]
        err = np.zeros(len(grid))
        k = min(self.inner_folds, train.n_trials)
        if k >= 2 and len(grid) > 1:
            fold = stratified_kfold(train.conditions, k, self.seed)
            for f in range(k):
                fit_set, held = train.subset(np.flatnonzero(fold != f)), train.subset(np.flatnonzero(fold == f))
                grand, parts = self._fit_parts(fit_set)
                for i, (s, kap) in enumerate(grid):
                    g, tab = self._table(grand, parts, s, kap)
                    pred = np.stack([tab.get(int(c), g) for c in held.conditions])
                    err[i] += float(np.where(held.mask, (pred - held.rates) ** 2, 0.0).sum())
        best = int(np.argmin(err)) if len(grid) > 1 else 0
        self.sigma_bins_, self.kappa_ = grid[best]
        self.cv_errors_ = {f"{s:g},{kap:g}": e for (s, kap), e in zip(grid, err.tolist())}
        grand, parts = self._fit_parts(train)
        self.grand_, self.psths_ = self._table(grand, parts, self.sigma_bins_, self.kappa_)
        return self

    def predict(self, trials: TrialSet) -> np.ndarray:
        return np.stack([self.psths_.get(int(c), self.grand_) for c in trials.conditions])

    def describe(self) -> str:
        return f"{self.name} (sigma {self.sigma_bins_:g} bins, kappa {self.kappa_:g} trials, chosen on training trials)"

    def info(self) -> Dict[str, Any]:
        return {"sigma_bins": self.sigma_bins_, "kappa": self.kappa_, "n_conditions": len(self.psths_)}


def choose_psth_smoothing(dm, seed: int = 0) -> Dict[str, Any]:
    """Gaussian width (bins) of the best smoothed mean PSTH, chosen on the training trials
    of the data module ``dm`` by :class:`SmoothedMeanPSTH`'s inner cross-validation (the
    validation trials are never looked at). Returns ``{"sigma_bins": s, "cv_scores":
    {sigma: score}}``; used by ``loss.neuron.target_smooth_sigma_bins=auto``."""
    train = TrialSet.from_tensors(dm.tensors("train"), dm._need(), dm.bin_size_ms)
    b = SmoothedMeanPSTH(seed=seed).fit(train)
    return {"sigma_bins": float(b.sigma_bins_), "cv_scores": dict(b.cv_scores_)}
