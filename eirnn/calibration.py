"""Per-neuron affine calibration of a predictor's rates, fitted on training trials.

A predictor that is scored on single-trial spike counts (bits/spike) has to get each
neuron's rate *scale* right, which the lab's PSTH correlation loss leaves free. The
calibration maps a predictor's rate ``p`` of neuron ``n`` to

    lambda_n(p) = max(a_n p + c_n, floor),        a_n >= 0

with ``(a_n, c_n)`` the Poisson maximum-likelihood fit on the *training* trials (the
predictor's own predictions for them against their spike counts ``k = round(rate dt)``)::

    (a_n, c_n) = argmin sum_{valid (b, t)} [ lambda_n dt - k log(lambda_n dt) ]

(identity link, convex in ``(a_n, c_n)`` where ``lambda_n > 0``; Newton from ``(1, 0)``).
Two numbers per neuron, fitted on thousands of training bins: no validation trial is
looked at. A positive affine map leaves every Pearson correlation (``psth_corr``, the
condition PSTH correlation) unchanged, up to the ``floor``. For a predictor that is already
the per-bin maximum-likelihood rate on the training trials (the training mean PSTH, the
condition means) the optimum is ``(1, 0)`` exactly; a Poisson GLM with a bias is already
close to calibrated. :mod:`eirnn.evaluate` applies it to every predictor alike.

Shapes: ``pred``, ``rates`` ``[K, T, N]`` (sp/s); ``mask`` bool ``[K, T, N]``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict

import numpy as np

__all__ = ["AffineCalibration", "fit_affine_calibration"]

#: Lowest calibrated rate (sp/s).
RATE_FLOOR = 1e-3


@dataclass
class AffineCalibration:
    """``lambda = max(gain * p + offset, floor)`` per neuron (``gain``, ``offset``: ``[N]``, sp/s)."""

    gain: np.ndarray
    offset: np.ndarray
    floor: float = RATE_FLOOR

    def __call__(self, pred: np.ndarray) -> np.ndarray:
        """``[K, T, N] -> [K, T, N]`` calibrated rates."""
        p = np.asarray(pred, dtype=np.float64)
        if p.shape[-1] != self.gain.shape[0]:
            raise ValueError(f"prediction has {p.shape[-1]} neurons, the calibration {self.gain.shape[0]}")
        return np.maximum(p * self.gain + self.offset, self.floor)

    def info(self) -> Dict[str, Any]:
        return {"gain": self.gain.tolist(), "offset_hz": self.offset.tolist()}


class _Stats:
    """Per-neuron sufficient statistics of the Poisson objective (identity link).

    At a feasible ``(a, c)`` (every valid ``lam = a x + c >= lo``) the objective is
    ``a Sx + c Sv - sum_{valid, k > 0} k log(a x + c)``: the bins without a spike (most of
    them) enter only through ``Sx = sum v x`` and ``Sv = sum v``, and feasibility only
    through ``x_min`` (``a >= 0``). Only the bins with a spike are kept, flat, with their
    neuron index.
    """

    def __init__(self, x: np.ndarray, k: np.ndarray, v: np.ndarray, lo: float):
        self.n = x.shape[1]
        self.lo = lo
        self.sv = v.sum(0)
        self.sx = (v * x).sum(0)
        self.x_min = np.min(np.where(v > 0, x, np.inf), axis=0)
        rows, cols = np.nonzero((v > 0) & (k > 0))
        self.idx, self.xs, self.ks = cols, x[rows, cols], k[rows, cols]

    def _sum(self, values: np.ndarray) -> np.ndarray:
        return np.bincount(self.idx, weights=values, minlength=self.n)

    def nll(self, a: np.ndarray, c: np.ndarray) -> np.ndarray:
        lam = np.maximum(a[self.idx] * self.xs + c[self.idx], self.lo)
        return a * self.sx + c * self.sv - self._sum(self.ks * np.log(lam))

    def feasible(self, a: np.ndarray, c: np.ndarray) -> np.ndarray:
        return (a >= 0) & ((self.sv == 0) | (a * self.x_min + c >= self.lo))

    def grad_hess(self, a: np.ndarray, c: np.ndarray):
        lam = np.maximum(a[self.idx] * self.xs + c[self.idx], self.lo)
        q = self.ks / lam          # k / lam
        w = q / lam                # k / lam^2
        ga = self.sx - self._sum(q * self.xs)
        gc = self.sv - self._sum(q)
        return ga, gc, self._sum(w * self.xs**2), self._sum(w * self.xs), self._sum(w)


def fit_affine_calibration(pred: Any, rates: Any, mask: Any, bin_size_ms: float, max_iter: int = 50,
                           floor: float = RATE_FLOOR) -> AffineCalibration:
    """Fit :class:`AffineCalibration` by Poisson maximum likelihood (module docstring).

    Newton's method on ``(a_n, c_n)`` for all neurons at once (the objective is separable
    and convex): with ``lam = a x + c`` (counts, ``x = p dt``), gradient
    ``sum v (1 - k / lam) (x, 1)`` and Hessian ``sum v k / lam^2 (x, 1)(x, 1)^T``; each step
    is halved until the objective decreases and every valid bin keeps ``lam >= floor dt``;
    a neuron whose gain would go negative gets ``a = 0`` and its mean count as ``c``.
    Computed on sufficient statistics (:class:`_Stats`): the cost of an iteration is that
    of the bins with a spike.

    Args:
        pred: ``[K, T, N]`` the predictor's rates for the training trials.
        rates, mask: ``[K, T, N]`` their recorded rates and validity.
        bin_size_ms: bin width (counts ``k = round(rates * dt)``).
    """
    p = np.asarray(pred, dtype=np.float64)
    y = np.asarray(rates, dtype=np.float64)
    m = np.asarray(mask, dtype=bool)
    if p.shape != y.shape or m.shape != y.shape or p.ndim != 3:
        raise ValueError(f"pred {p.shape}, rates {y.shape} and mask {m.shape} must be the same [K, T, N]")
    dt = float(bin_size_ms) / 1000.0
    n = p.shape[2]
    v = m.reshape(-1, n).astype(np.float64)
    x = np.where(m, p, 0.0).reshape(-1, n) * dt
    k = np.where(m, np.round(np.nan_to_num(y) * dt), 0.0).reshape(-1, n)
    lo = float(floor) * dt
    st = _Stats(x, k, v, lo)
    a, c = np.ones(n), np.zeros(n)
    if np.any((st.sv > 0) & (st.x_min < lo)):  # start feasible: lift c so that every valid lam >= lo
        c = np.maximum(c, lo - st.x_min)
        c = np.where(np.isfinite(c), c, 0.0)
    f = st.nll(a, c)
    for _ in range(int(max_iter)):
        ga, gc, haa, hac, hcc = st.grad_hess(a, c)
        det = haa * hcc - hac**2
        ok = det > 1e-12 * np.maximum(haa * hcc, 1e-300)
        da = np.where(ok, -(hcc * ga - hac * gc) / np.where(ok, det, 1.0), 0.0)
        dc = np.where(ok, -(haa * gc - hac * ga) / np.where(ok, det, 1.0), -gc / np.maximum(hcc, 1e-12))
        # Newton decrement: a neuron whose predicted decrease is at round-off level is done
        # (a step there cannot pass "nf <= f" reliably; 40 halvings each would waste the time)
        converged = ok & (-(ga * da + gc * dc) <= 1e-12 * np.maximum(np.abs(f), 1.0))
        if converged.all():
            break
        # longest step that stays feasible (a >= 0, a x_min + c >= lo), so that a neuron whose
        # optimum lies on that boundary approaches it instead of halving 40 times per iteration
        slack = np.where(st.sv > 0, a * st.x_min + c - lo, np.inf)
        rate = np.where(st.sv > 0, da * st.x_min + dc, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            s_bound = np.where(rate < 0, slack / -rate, np.inf)
            s_gain = np.where(da < 0, a / -da, np.inf)
        step = np.minimum(1.0, 0.999 * np.minimum(s_bound, s_gain))
        step = np.where(np.isfinite(step) & (step > 0), step, 1.0)
        # pressed against a bound (gain 0, or the floor) with no room left: stop that neuron
        # there (a gain-0 neuron is then compared with its constant rate below)
        converged |= step * np.maximum(np.abs(da), np.abs(dc)) < 1e-12
        if converged.all():
            break
        done = converged.copy()
        for _ in range(40):  # backtracking, per neuron
            na, nc = a + step * da, c + step * dc
            nf = st.nll(na, nc)
            accept = ~done & st.feasible(na, nc) & (nf <= f)
            a, c, f = np.where(accept, na, a), np.where(accept, nc, c), np.where(accept, nf, f)
            done |= accept
            step = np.where(done, step, step / 2)
            if done.all():
                break
        if np.all(np.abs(step * da) < 1e-10) and np.all(np.abs(step * dc) < 1e-12):
            break
    # a neuron better described without its prediction: a = 0, c = its mean count
    const_c = np.maximum((v * k).sum(0) / np.maximum(st.sv, 1), lo)
    const_f = st.nll(np.zeros(n), const_c)
    better = const_f < f
    a, c = np.where(better, 0.0, a), np.where(better, const_c, c)
    return AffineCalibration(gain=a, offset=c / dt, floor=float(floor))
