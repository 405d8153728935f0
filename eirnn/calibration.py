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


def _nll(a: np.ndarray, c: np.ndarray, x: np.ndarray, k: np.ndarray, v: np.ndarray, lo: float) -> np.ndarray:
    """Per-neuron ``sum v (lam - k log lam)``, ``lam = max(a x + c, lo)`` (counts): ``[N]``."""
    lam = np.maximum(a * x + c, lo)
    return (v * (lam - k * np.log(lam))).sum(0)


def fit_affine_calibration(pred: Any, rates: Any, mask: Any, bin_size_ms: float, max_iter: int = 50,
                           floor: float = RATE_FLOOR) -> AffineCalibration:
    """Fit :class:`AffineCalibration` by Poisson maximum likelihood (module docstring).

    Newton's method on ``(a_n, c_n)`` for all neurons at once (the objective is separable
    and convex): with ``lam = a x + c`` (counts, ``x = p dt``), gradient
    ``sum v (1 - k / lam) (x, 1)`` and Hessian ``sum v k / lam^2 (x, 1)(x, 1)^T``; each step
    is halved until the objective decreases and every valid bin keeps ``lam >= floor dt``;
    a neuron whose gain would go negative gets ``a = 0`` and its mean count as ``c``.

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
    a, c = np.ones(n), np.zeros(n)
    if np.any(v * (x < lo)):  # start feasible: lift c so that every valid lam >= lo
        c = np.maximum(c, lo - np.min(np.where(v > 0, x, np.inf), axis=0))
        c = np.where(np.isfinite(c), c, 0.0)
    f = _nll(a, c, x, k, v, lo)
    for _ in range(int(max_iter)):
        lam = np.maximum(a * x + c, lo)
        r = v * (1.0 - k / lam)
        w = v * k / lam**2
        ga, gc = (r * x).sum(0), r.sum(0)
        haa, hac, hcc = (w * x * x).sum(0), (w * x).sum(0), w.sum(0)
        det = haa * hcc - hac**2
        ok = det > 1e-12 * np.maximum(haa * hcc, 1e-300)
        da = np.where(ok, -(hcc * ga - hac * gc) / np.where(ok, det, 1.0), 0.0)
        dc = np.where(ok, -(haa * gc - hac * ga) / np.where(ok, det, 1.0), -gc / np.maximum(hcc, 1e-12))
        step = np.ones(n)
        done = np.zeros(n, dtype=bool)
        for _ in range(40):  # backtracking, per neuron
            na, nc = a + step * da, c + step * dc
            feasible = np.all((v == 0) | (na * x + nc >= lo), axis=0) & (na >= 0)
            nf = _nll(na, nc, x, k, v, lo)
            accept = ~done & feasible & (nf <= f)
            a, c, f = np.where(accept, na, a), np.where(accept, nc, c), np.where(accept, nf, f)
            done |= accept
            step = np.where(done, step, step / 2)
            if done.all():
                break
        if np.all(np.abs(step * da) < 1e-10) and np.all(np.abs(step * dc) < 1e-12):
            break
    # a neuron better described without its prediction: a = 0, c = its mean count
    const_c = np.maximum((v * k).sum(0) / np.maximum(v.sum(0), 1), lo)
    const_f = _nll(np.zeros(n), const_c, x, k, v, lo)
    better = const_f < f
    a, c = np.where(better, 0.0, a), np.where(better, const_c, c)
    return AffineCalibration(gain=a, offset=c / dt, floor=float(floor))
