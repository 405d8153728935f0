"""Log-domain Sinkhorn for entropic optimal transport (differentiable by unrolling).

Problem (for one cost matrix ``C`` of shape ``[n, m]``)::

    P* = argmin_{P >= 0, P 1_m = a, P^T 1_n = b}  <P, C> - eps * H(P),
    H(P) = -sum_ij P_ij (log P_ij - 1).

The solution has the form ``P_ij = exp(f_i + g_j - C_ij / eps)`` where
``f = log u`` and ``g = log v`` are the (scaled) dual potentials. Starting
from ``f = g = 0``, each iteration performs, in this order,

    g_j <- log b_j - logsumexp_i(f_i - C_ij / eps)
    f_i <- log a_i - logsumexp_j(g_j - C_ij / eps)

which is exactly the update order of POT's
``ot.sinkhorn(a, b, C, eps, method="sinkhorn_log")`` (POT 0.9.x). POT checks
the right-marginal error ``||P^T 1 - b||_2`` only when ``iteration % 10 == 0``
(i.e. after iterations 0, 10, 20, ... counted from 0) and stops when it is
below ``stopThr``; with ``stopThr=0`` it runs exactly ``numItermax`` updates.
:func:`sinkhorn_log` reproduces both behaviours (``tol=None`` = always
``n_iters`` updates, the default used inside losses because it never needs a
host synchronisation).

Gradients flow through the unrolled iterations by autograd.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import Tensor

__all__ = ["sinkhorn_log"]


def _log_marginal(w: Optional[Tensor], size: int, like: Tensor) -> Tensor:
    if w is None:
        return torch.full((size,), -math.log(size), dtype=like.dtype, device=like.device)
    w = torch.as_tensor(w, dtype=like.dtype, device=like.device)
    if w.shape[-1] != size:
        raise ValueError(f"marginal has length {w.shape[-1]}, expected {size}")
    return torch.log(w)  # zero mass -> -inf potential -> zero row/column of the plan


def sinkhorn_log(
    cost: Tensor,
    epsilon: Union[float, Tensor],
    n_iters: int = 20,
    a: Optional[Tensor] = None,
    b: Optional[Tensor] = None,
    tol: Optional[float] = None,
    check_every: int = 10,
) -> Tensor:
    """Entropic OT plan by log-domain Sinkhorn iterations.

    ``P = exp(f[:, None] + g[None, :] - C / epsilon)`` after ``n_iters``
    updates of ``g = log b - LSE_i(f_i - C_ij/eps)`` then
    ``f = log a - LSE_j(g_j - C_ij/eps)`` (see module docstring).

    Args:
        cost: ``[..., n, m]`` cost matrix (leading dims are batch dims, each
            problem solved independently).
        epsilon: entropic regularisation ``eps > 0`` (same as POT's ``reg``).
        n_iters: maximum number of (v, u) update pairs, ``>= 1``.
        a: source marginal ``[n]`` or ``[..., n]``; default uniform ``1/n``.
            Entries may be 0 (that row of the plan is then exactly 0).
        b: target marginal ``[m]`` or ``[..., m]``; default uniform ``1/m``.
        tol: if given, stop once ``||P^T 1 - b||_2 < tol`` (for every batch
            element), tested after iterations ``0, check_every, 2*check_every,
            ...`` as in POT (this test synchronises with the host). ``None``:
            always run ``n_iters`` updates.
        check_every: stride of the convergence test (POT uses 10).

    Returns:
        plan ``P`` of shape ``[..., n, m]``: after the final ``f`` update its
        row sums equal ``a`` exactly; the column sums approach ``b``.
    """
    if cost.dim() < 2:
        raise ValueError(f"cost must be [..., n, m], got shape {tuple(cost.shape)}")
    if n_iters < 1:
        raise ValueError("n_iters must be >= 1")
    if not isinstance(epsilon, Tensor) and not epsilon > 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    n, m = cost.shape[-2], cost.shape[-1]
    log_a = _log_marginal(a, n, cost)
    log_b = _log_marginal(b, m, cost)
    b_lin = log_b.exp()

    log_k = -cost / epsilon  # [..., n, m]
    batch = cost.shape[:-2]
    f = torch.zeros(batch + (n,), dtype=cost.dtype, device=cost.device)
    g = torch.zeros(batch + (m,), dtype=cost.dtype, device=cost.device)
    for it in range(n_iters):
        g = log_b - torch.logsumexp(log_k + f.unsqueeze(-1), dim=-2)
        f = log_a - torch.logsumexp(log_k + g.unsqueeze(-2), dim=-1)
        if tol is not None and it % check_every == 0:
            with torch.no_grad():
                col = torch.exp(log_k + f.unsqueeze(-1) + g.unsqueeze(-2)).sum(dim=-2)
                err = torch.linalg.vector_norm(col - b_lin, dim=-1)
                if bool((err < tol).all()):
                    break
    return torch.exp(log_k + f.unsqueeze(-1) + g.unsqueeze(-2))
