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

Gradients flow through the unrolled iterations. With ``tol=None`` (the default, used
by the losses) the iterations run in one autograd node, :class:`SinkhornUnrolled`, whose
hand-written backward is the exact reverse of the unrolled updates: with
``S^g_ij = exp(L_ij + f_i - lse^g_j)`` (softmax over ``i``) and
``S^f_ij = exp(L_ij + g_j - lse^f_i)`` (softmax over ``j``), ``L = -C / eps``, each update
``g = log b - lse^g`` sends ``dL_ij -= dg_j S^g_ij`` and ``df_i -= sum_j S^g_ij dg_j``
(and likewise for ``f``); the final ``P = exp(L + f + g)`` sends ``dL += dP * P``,
``df += rowsum(dP * P)``, ``dg += colsum(dP * P)``. Exponentials are evaluated on
arguments clamped at the underflow limit of the dtype (``exp(-87)`` in float32):
below it PyTorch's CPU ``exp`` takes a slow path (10-40x), and the clamped terms are
below the float resolution of every sum they enter; the plan is exactly 0 there.
The softmaxes of the backward are not recomputed: the forward keeps each half-iteration's
``E = exp(L + f - M)`` (``M`` the stabilising maximum of its log-sum-exp), and
``S = E * exp(M - lse)`` (2 x n_iters matrices of memory instead of 2 x n_iters exponentials).
With ``tol`` set, the iterations are recorded by autograd step by step (as POT does,
the early stop needs the host).
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import Tensor

__all__ = ["sinkhorn_log", "SinkhornUnrolled"]


def _log_marginal(w: Optional[Tensor], size: int, like: Tensor) -> Tensor:
    if w is None:
        return torch.full((size,), -math.log(size), dtype=like.dtype, device=like.device)
    w = torch.as_tensor(w, dtype=like.dtype, device=like.device)
    if w.shape[-1] != size:
        raise ValueError(f"marginal has length {w.shape[-1]}, expected {size}")
    return torch.log(w)  # zero mass -> -inf potential -> zero row/column of the plan


def _exp_floor(dtype: torch.dtype) -> float:
    """Smallest argument whose ``exp`` is a normal float of ``dtype`` (underflow limit)."""
    return math.log(torch.finfo(dtype).tiny) + 0.5


def _lse_m_(w: Tensor, dim: int, floor: float) -> tuple[Tensor, Tensor]:
    """``logsumexp`` of ``w`` over ``dim`` and the stabilising maximum ``M`` (keepdim); overwrites
    ``w`` with ``exp(max(w - M, floor))``."""
    m = w.amax(dim, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    w.sub_(m).clamp_min_(floor).exp_()
    return m.squeeze(dim) + w.sum(dim).log(), m


class SinkhornUnrolled(torch.autograd.Function):
    """``(log_k [..., n, m], log_a [..., n], log_b [..., m], n_iters) -> P [..., n, m]``.

    ``n_iters`` log-domain updates from ``f = g = 0`` (see :func:`sinkhorn_log`), then
    ``P = exp(log_k + f + g)``. Gradient w.r.t. ``log_k`` only (the marginals are constants).

    The forward keeps, for each half-iteration, the exponentials ``E = exp(L + f - M)`` of its
    log-sum-exp (``M`` the stabilising maximum); the backward's softmax is then
    ``S = E * exp(M - lse)`` (a scaling instead of a second exponential of every entry).
    """

    @staticmethod
    def forward(ctx, log_k, log_a, log_b, n_iters: int):
        floor = _exp_floor(log_k.dtype)
        with torch.no_grad():
            f = torch.zeros(log_k.shape[:-1], dtype=log_k.dtype, device=log_k.device)
            exps, maxs, lses = [], [], []  # per half-iteration: E, M (keepdim), lse (keepdim)
            for _ in range(n_iters):
                work = torch.add(log_k, f.unsqueeze(-1))
                lse_g, m_g = _lse_m_(work, -2, floor)
                g = log_b - lse_g
                exps.append(work), maxs.append(m_g), lses.append(lse_g.unsqueeze(-2))
                work = torch.add(log_k, g.unsqueeze(-2))
                lse_f, m_f = _lse_m_(work, -1, floor)
                f = log_a - lse_f
                exps.append(work), maxs.append(m_f), lses.append(lse_f.unsqueeze(-1))
            z = log_k + f.unsqueeze(-1)
            z.add_(g.unsqueeze(-2))
            plan = torch.where(z >= floor, z.clamp_min(floor).exp_(), torch.zeros_like(z))
        ctx.save_for_backward(plan, *exps)
        ctx.scales = [torch.exp(m - lse) for m, lse in zip(maxs, lses)]  # S = E * exp(M - lse)
        return plan

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_plan):
        plan, *exps = ctx.saved_tensors
        scales = ctx.scales
        n_iters = len(exps) // 2
        d_logk = d_plan * plan  # P = exp(L + f + g)
        df = d_logk.sum(-1)
        dg = d_logk.sum(-2)
        for k in range(n_iters - 1, -1, -1):
            # f_k = log a - LSE_j(L + g_k):  S^f = softmax over j;  d lse^f = -df
            s = exps[2 * k + 1] * (scales[2 * k + 1] * df.neg().unsqueeze(-1))
            d_logk.add_(s)
            dg = dg + s.sum(-2)
            # g_k = log b - LSE_i(L + f_{k-1}):  S^g = softmax over i
            s = exps[2 * k] * (scales[2 * k] * dg.neg().unsqueeze(-2))
            d_logk.add_(s)
            df = s.sum(-1)  # d f_{k-1} (f_0 = 0 is a constant)
            dg = torch.zeros_like(dg)
        return d_logk, None, None, None


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
    if tol is None and not (log_a.requires_grad or log_b.requires_grad):
        return SinkhornUnrolled.apply(log_k, log_a.detach(), log_b.detach(), int(n_iters))
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
