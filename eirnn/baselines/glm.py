"""Linear-nonlinear Poisson GLM on time-lagged task inputs (the encoding-model baseline).

Model, per neuron n, trial b, bin t (``dt = bin_size_ms / 1000``)::

    eta[b, t, n] = w0[n] + sum_c sum_k W[c, k, n] * (B_k * u_c[b])[t]
    lambda[b, t, n] = exp(eta)                      # expected spike count in the bin
    rate = lambda / dt                              # sp/s (the prediction)

``u_c`` are the task input channels; ``(B_k * u)[t] = sum_l B_k[l] u[t - l]`` is a causal
convolution with the k-th basis function over lags ``l = 0 .. n_lags - 1`` (raised
cosines on a log-stretched time axis, :func:`raised_cosine_basis`). Features are
z-scored on the training trials. The weights minimise, for each neuron separately,

    sum_valid (lambda - k eta) + (l2_n / 2) |W[:, :, n]|^2         (bias not penalised)

(the Poisson negative log-likelihood up to a constant) with L-BFGS (torch, float64, all
neurons at once; the objective is separable). ``l2_n`` is chosen per neuron from
``l2_grid`` by ``inner_folds``-fold cross-validation on the training trials (folds
stratified by condition), maximising the held-out Poisson log-likelihood.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch

from eirnn.data.splits import stratified_kfold

from .base import Baseline, TrialSet

__all__ = ["raised_cosine_basis", "lagged_features", "fit_poisson_glm", "PoissonGLM"]

_ETA_MAX = 20.0


def raised_cosine_basis(n_basis: int, n_lags: int, offset: float = 1.0) -> np.ndarray:
    """``[n_lags, n_basis]`` raised-cosine bumps tiling lags ``0 .. n_lags-1``.

    With ``y(l) = log(l + offset)`` and centres ``phi_k`` evenly spaced from ``y(0)`` to
    ``y(n_lags - 1)`` (spacing ``d``)::

        B[l, k] = 0.5 (1 + cos(clip((y(l) - phi_k) * pi / d, -pi, pi)))

    Each bump reaches zero at its neighbours' centres, so the columns sum to exactly 1 over
    all lags; resolution is fine at short lags and coarse at long ones. ``n_basis == 1``
    gives a single column of ones (a boxcar over all lags).
    """
    n_basis, n_lags = int(n_basis), int(n_lags)
    if n_basis < 1 or n_lags < 1:
        raise ValueError("n_basis and n_lags must be >= 1")
    if n_basis == 1:
        return np.ones((n_lags, 1))
    y = np.log(np.arange(n_lags) + float(offset))
    centres = np.linspace(y[0], y[-1], n_basis)
    d = centres[1] - centres[0]
    arg = np.clip((y[:, None] - centres[None, :]) * math.pi / d, -math.pi, math.pi)
    return 0.5 * (1.0 + np.cos(arg))


def lagged_features(inputs: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """Causal basis-filtered inputs: ``[K, T, C]`` x ``[L, J]`` -> ``[K, T, C * J]``.

    ``out[b, t, c * J + j] = sum_{l < min(L, t + 1)} basis[l, j] * inputs[b, t - l, c]``
    (inputs before the first bin count as 0).
    """
    u = np.asarray(inputs, dtype=np.float64)
    k, t, c = u.shape
    n_lags, j = basis.shape
    out = np.zeros((k, t, c, j))
    for lag in range(min(n_lags, t)):
        shifted = u[:, : t - lag, :, None] * basis[lag][None, None, None, :]
        out[:, lag:, :, :] += shifted
    return out.reshape(k, t, c * j)


def fit_poisson_glm(x: torch.Tensor, counts: torch.Tensor, valid: torch.Tensor, l2: torch.Tensor,
                    w0: Optional[torch.Tensor] = None, max_iter: int = 200,
                    penalty_map: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Penalised Poisson regression for all neurons at once (see module docstring).

    Minimises, for each neuron n (columns of ``counts``), ``sum_s valid (exp(eta) - k eta)
    + (l2_n / 2) |A v_n|^2`` with ``eta = x v`` (bias = last row of ``v``, not penalised;
    ``A = penalty_map`` maps the weights on ``x``'s columns to the weights that are
    penalised, default identity). Each neuron's term is divided by its spike count
    (which does not move its minimum) so that all neurons are on one scale for L-BFGS.

    Args:
        x: ``[S, P]`` features with a last column of ones.
        counts, valid: ``[S, N]`` spike counts and 0/1 validity.
        l2: ``[N]`` penalty per neuron. w0: ``[P, N]`` warm start (default: bias only).
        penalty_map: ``[R, P - 1]`` or None.

    Returns:
        ``[P, N]`` weights on the columns of ``x``.
    """
    s, p = x.shape
    counts, valid, l2 = counts.to(x.dtype), valid.to(x.dtype), l2.to(x.dtype)
    if w0 is None:
        mean = (counts * valid).sum(0) / valid.sum(0).clamp_min(1)
        w0 = torch.zeros(p, counts.shape[1], dtype=x.dtype)
        w0[-1] = torch.log(mean.clamp_min(1e-6))
    w = w0.to(x.dtype).clone().requires_grad_(True)
    norm = (counts * valid).sum(0).clamp_min(1.0)  # [N]
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=max_iter, history_size=20, tolerance_grad=1e-8,
                            tolerance_change=1e-10, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        eta = (x @ w).clamp(max=_ETA_MAX)
        nll = (valid * (torch.exp(eta) - counts * eta)).sum(0)
        v = w[:-1] if penalty_map is None else penalty_map @ w[:-1]
        loss = ((nll + 0.5 * l2 * v.pow(2).sum(0)) / norm).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach()


class PoissonGLM(Baseline):
    """LN-Poisson GLM on lagged task inputs + bias (see the module docstring).

    Args:
        n_basis: raised-cosine functions per input channel.
        max_lag_ms: longest lag covered (``n_lags = max(1, round(max_lag_ms / bin) + 1)``).
        l2_grid: candidate penalties (on z-scored features).
        inner_folds: folds of the penalty search (< 2: no search, the largest penalty).
        seed: seed of the inner folds. max_iter: L-BFGS iterations per fit.
        dtype: ``float32`` (default; fast) or ``float64`` for the fits.
    """

    name = "glm"

    def __init__(self, n_basis: int = 6, max_lag_ms: float = 500.0,
                 l2_grid: Sequence[float] = (1e3, 1e2, 1e1, 1.0),
                 inner_folds: int = 2, seed: int = 0, max_iter: int = 60, dtype: str = "float32"):
        self.n_basis = int(n_basis)
        self.max_lag_ms = float(max_lag_ms)
        self.l2_grid = tuple(sorted((float(v) for v in l2_grid), reverse=True))
        self.inner_folds = int(inner_folds)
        self.seed = int(seed)
        self.max_iter = int(max_iter)
        self.dtype = {"float32": torch.float32, "float64": torch.float64}[str(dtype)]

    # ---------------------------------------------------------------- design
    def _design(self, trials: TrialSet) -> torch.Tensor:
        """``[K * T, Q + 1]``: whitened features (``z @ white_``) and a column of ones."""
        f = lagged_features(trials.inputs, self.basis_)
        z = ((f - self.mu_) / self.sd_).reshape(-1, f.shape[2]) @ self.white_
        return torch.from_numpy(np.concatenate([z, np.ones((z.shape[0], 1))], axis=1)).to(self.dtype)

    def _targets(self, trials: TrialSet):
        n = trials.rates.shape[2]
        counts = torch.from_numpy(trials.counts.reshape(-1, n)).to(self.dtype)
        valid = torch.from_numpy(trials.mask.reshape(-1, n)).to(self.dtype)
        return counts, valid

    @staticmethod
    def _loglik(x, w, counts, valid) -> torch.Tensor:
        """Per-neuron Poisson log-likelihood without the ``-log k!`` term: ``[N]``."""
        eta = (x @ w).clamp(max=_ETA_MAX)
        return (valid * (counts * eta - torch.exp(eta))).sum(0).double()

    # ------------------------------------------------------------------- fit
    def fit(self, train: TrialSet) -> "PoissonGLM":
        n_lags = max(1, int(round(self.max_lag_ms / train.bin_size_ms)) + 1)
        self.basis_ = raised_cosine_basis(min(self.n_basis, n_lags), n_lags)
        f = lagged_features(train.inputs, self.basis_).reshape(-1, train.inputs.shape[2] * self.basis_.shape[1])
        self.mu_ = f.mean(0)
        sd = f.std(0)
        self.sd_ = np.where(sd > 1e-12, sd, 1.0)  # constant features (e.g. all-zero eye) -> 0 after centring
        # Whitening (the optimiser sees decorrelated unit-variance features; the L2 penalty
        # stays on the weights of the z-scored features through penalty_map = white_).
        z = (f - self.mu_) / self.sd_
        evals, evecs = np.linalg.eigh(z.T @ z / max(z.shape[0], 1))
        keep = evals > 1e-8 * max(float(evals.max()), 1e-300)
        self.white_ = evecs[:, keep] / np.sqrt(evals[keep])[None, :]  # [P, Q]
        self.penalty_map_ = torch.from_numpy(self.white_).to(self.dtype)
        del z, f
        n = train.rates.shape[2]
        k = min(self.inner_folds, train.n_trials)
        grid = self.l2_grid
        if k >= 2 and len(grid) > 1:
            fold = stratified_kfold(train.conditions, k, self.seed)
            score = torch.zeros(len(grid), n, dtype=torch.float64)
            for f_i in range(k):
                tr, te = train.subset(np.flatnonzero(fold != f_i)), train.subset(np.flatnonzero(fold == f_i))
                xtr, xte = self._design(tr), self._design(te)
                ctr, vtr = self._targets(tr)
                cte, vte = self._targets(te)
                w = None
                for g, lam in enumerate(grid):  # large -> small penalty, warm-started
                    w = fit_poisson_glm(xtr, ctr, vtr, torch.full((n,), lam, dtype=torch.float64), w,
                                        self.max_iter, self.penalty_map_)
                    score[g] += self._loglik(xte, w, cte, vte)
            best = score.argmax(0)
            self.l2_ = torch.tensor([grid[int(i)] for i in best], dtype=torch.float64)
            self.cv_loglik_ = score.numpy()
        else:
            self.l2_ = torch.full((n,), grid[0], dtype=torch.float64)
        x = self._design(train)
        counts, valid = self._targets(train)
        self.w_ = fit_poisson_glm(x, counts, valid, self.l2_, None, self.max_iter, self.penalty_map_)
        return self

    def predict(self, trials: TrialSet) -> np.ndarray:
        x = self._design(trials)
        eta = (x @ self.w_).clamp(max=_ETA_MAX)
        k, t = trials.inputs.shape[:2]
        return (torch.exp(eta.double()).numpy() / (trials.bin_size_ms / 1000.0)).reshape(k, t, -1)

    def describe(self) -> str:
        l2 = self.l2_.numpy()
        return (f"{self.name} ({self.basis_.shape[1]} raised cosines x {self.basis_.shape[0]} lags per input, "
                f"L2 per neuron from {sorted(set(l2.tolist()))} chosen on training trials)")

    def info(self) -> Dict[str, Any]:
        return {"n_basis": int(self.basis_.shape[1]), "n_lags": int(self.basis_.shape[0]),
                "l2_per_neuron": self.l2_.numpy().tolist()}
