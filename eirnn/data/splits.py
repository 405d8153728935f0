"""Seeded, condition-stratified trial splits (pure numpy): a train/validation split and a
k-fold partition. Used by the data module, the cross-validation and the baselines' inner CV."""
from __future__ import annotations

import math
from typing import Tuple

import numpy as np

__all__ = ["stratified_split", "stratified_kfold", "proportional_split"]


def stratified_split(condition_ids: np.ndarray, val_fraction: float, seed: int
                     ) -> Tuple[np.ndarray, np.ndarray]:
    """Seeded per-condition split -> (train_idx, val_idx), both sorted int64.

    Each condition with n trials sends round(val_fraction * n) trials to validation,
    clipped to [1, n - 1] when n >= 2 (and 0 when n == 1 or val_fraction == 0).
    """
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    cids = np.asarray(condition_ids).reshape(-1)
    rng = np.random.default_rng(int(seed))
    val = []
    for c in np.unique(cids):
        idx = np.flatnonzero(cids == c)
        n = idx.size
        n_val = int(math.floor(val_fraction * n + 0.5))
        if val_fraction > 0 and n >= 2:
            n_val = min(max(n_val, 1), n - 1)
        elif n < 2:
            n_val = 0
        val.append(rng.permutation(idx)[:n_val])
    val_idx = np.sort(np.concatenate(val)).astype(np.int64) if val else np.zeros(0, np.int64)
    train_idx = np.setdiff1d(np.arange(cids.size, dtype=np.int64), val_idx)
    return train_idx, val_idx


def stratified_kfold(condition_ids: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Seeded k-fold partition stratified by condition -> [K] int64 fold index (0..k-1).

    The trials of each condition (in sorted condition order) are shuffled with
    ``numpy.random.default_rng(seed)`` and dealt round-robin into the folds, each
    condition starting where the previous one stopped. So every condition with
    n >= k trials is in every fold (floor(n/k) or ceil(n/k) of its trials), and fold
    sizes differ by at most one trial. Folds are disjoint and cover every trial.
    """
    k = int(n_folds)
    if k < 2:
        raise ValueError(f"cv_folds must be >= 2, got {n_folds}")
    cids = np.asarray(condition_ids).reshape(-1)
    if cids.size < k:
        raise ValueError(f"cv_folds={k} is more than the {cids.size} trials")
    rng = np.random.default_rng(int(seed))
    fold = np.empty(cids.size, np.int64)
    start = 0
    for c in np.unique(cids):
        idx = rng.permutation(np.flatnonzero(cids == c))
        fold[idx] = (start + np.arange(idx.size)) % k
        start = (start + idx.size) % k
    return fold


def proportional_split(condition_ids: np.ndarray, fraction: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """Seeded split -> (kept_idx, taken_idx), both sorted int64, with ``taken`` about
    ``fraction`` of the trials in total and of every condition.

    Systematic sampling: the trials, shuffled within each condition and listed condition by
    condition, go to ``taken`` at positions i where floor((i + 1) f + u) > floor(i f + u)
    (u uniform in [0, 1)). So ``taken`` holds floor(n f) or ceil(n f) of all n trials and
    floor or ceil of each condition's share (unlike :func:`stratified_split`, no condition
    is forced to give a trial; a 2-trial condition may give none).
    """
    f = float(fraction)
    if not 0.0 <= f < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    cids = np.asarray(condition_ids).reshape(-1)
    rng = np.random.default_rng(int(seed))
    order = [rng.permutation(np.flatnonzero(cids == c)) for c in np.unique(cids)]
    order = np.concatenate(order).astype(np.int64) if order else np.zeros(0, np.int64)
    u = rng.random()
    pos = np.arange(order.size)
    taken = np.sort(order[np.floor((pos + 1) * f + u) > np.floor(pos * f + u)])
    return np.setdiff1d(np.arange(cids.size, dtype=np.int64), taken), taken
