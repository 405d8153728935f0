"""The E-I rate recurrence as one autograd node with a hand-written backward through time.

Recurrence (time-major: ``inp`` ``[T, B, n]``; ``w_t = (alpha * W_rec)^T`` ``[n, n]``;
``decay = 1 - alpha`` ``[n]``; ``s``, ``b`` scalars; ``x[-1] = h0`` ``[n]`` or ``[B, n]``)::

    r[t-1] = s * softplus(x[t-1]) + b
    x[t]   = inp[t] + r[t-1] @ w_t + decay * x[t-1]                   t = 0 .. T-1

``inp[t]`` is the whole state-independent drive ``alpha * (W_in e(u[t]) + b_in) +
noise[t]``. ``softplus`` is PyTorch's (``beta = 1``, linear above ``threshold = 20``).

Backward through time (``G[t] = dL/dr[t]`` from the caller, ``gx[T] = 0``,
``sig = softplus'``, which is ``sigmoid(x)`` and 1 above the threshold)::

    gr[t] = G[t] + gx[t+1] @ w_t^T                                   # dL/dr[t], t = -1 .. T-1  (G[-1] = 0)
    gx[t] = s * sig(x[t]) * gr[t] + decay * gx[t+1]                   # dL/dx[t]

    dL/dinp[t] = gx[t]
    dL/dw_t    = sum_t r[t-1]^T gx[t]                                 # one [n, T*B] @ [T*B, n] product
    dL/ddecay  = sum_{t,b} x[t-1] * gx[t]
    dL/ds      = sum_t <gr[t], softplus(x[t])>,   dL/db = sum_t sum gr[t]
    dL/dh0     = gx[-1]   (summed over the batch when ``h0`` is ``[n]``)

Each step is one matrix product and a few element-wise kernels on ``[B, n]`` slices
(forward: ``addmm``, ``addcmul_``, ``softplus``, scale and shift; backward: ``addmm``,
``softplus_backward``, scale, ``addcmul_``, and a dot product and a sum of ``gr[t]``,
which is still in cache, for ``dL/ds`` and ``dL/db``), written into buffers preallocated
for the whole sequence (``X``, ``softplus(X)``, ``R`` in the forward, ``dL/dx`` in the
backward). Autograd records one node for the whole sequence instead of ~5 per step, and
``dL/dw_t`` is a single large product after the loop. The states, ``softplus`` values
and rates are kept for the backward pass (3 x ``[T+1, B, n]``).

:func:`recurrence` is the entry point; :func:`recurrence_reference` is the same
computation as a plain autograd loop (for tests and the ``autograd`` option).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["FusedRecurrence", "recurrence", "recurrence_reference", "IMPLS"]

IMPLS = ("fused", "autograd")
SOFTPLUS_THRESHOLD = 20.0


class FusedRecurrence(torch.autograd.Function):
    """``(inp [T,B,n], w_t, decay, scale, baseline, h0, want_states) -> (rates [T,B,n], states [T,B,n] or None)``.

    See the module docstring for the equations. Not twice differentiable.
    """

    @staticmethod
    def forward(ctx, inp, w_t, decay, scale, baseline, h0, want_states: bool):
        T, B, n = inp.shape
        with torch.no_grad():
            X = inp.new_empty((T + 1, B, n))  # X[t+1] = x[t], X[0] = x[-1] = h0
            SP = inp.new_empty((T + 1, B, n))  # softplus(X)
            R = inp.new_empty((T + 1, B, n))  # s * SP + b
            X[0].copy_(h0.expand(B, n))
            for t in range(-1, T):
                x = X[t + 1]
                if t >= 0:
                    torch.addmm(inp[t], R[t], w_t, out=x)
                    x.addcmul_(decay, X[t])
                sp = SP[t + 1]
                _softplus_out(x, sp)
                torch.mul(sp, scale, out=R[t + 1]).add_(baseline)
        ctx.save_for_backward(X, SP, R, w_t, decay, scale, baseline)
        ctx.h0_batched = h0.dim() == 2
        ctx.set_materialize_grads(False)  # an unused output gets None, not a zero tensor
        return R[1:], (X[1:] if want_states else None)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_rates, g_states):
        X, SP, R, w_t, decay, scale, baseline = ctx.saved_tensors
        Tp1, B, n = X.shape
        T = Tp1 - 1
        need_inp, need_w, need_decay, need_scale, need_base, need_h0, _ = ctx.needs_input_grad
        if g_rates is None:
            g_rates = X.new_zeros((T, B, n))
        if g_states is not None and g_states.shape != (T, B, n):
            g_states = g_states.expand(T, B, n)
        GX = X.new_empty((T, B, n))  # GX[t] = dL/dx[t]
        gr = X.new_empty((B, n))  # dL/dr[t] of the current step
        acc_sp = X.new_zeros((Tp1,))  # <gr[t], softplus(x[t])>, index t+1
        acc_r = X.new_zeros((Tp1,))  # sum gr[t]
        w_tt = w_t.t()
        for t in range(T - 1, -2, -1):
            # gr[t] = G[t] + gx[t+1] @ w_t^T   (G[-1] = 0, gx[T] = 0)
            if t == T - 1:
                gr.copy_(g_rates[t])
            elif t >= 0:
                torch.addmm(g_rates[t], GX[t + 1], w_tt, out=gr)
            else:
                torch.mm(GX[0], w_tt, out=gr)
            if need_scale:
                torch.dot(gr.view(-1), SP[t + 1].view(-1), out=acc_sp[t + 1])
            if need_base:
                torch.sum(gr.view(-1), 0, out=acc_r[t + 1])
            if t < 0:
                break
            # gx[t] = s * softplus'(x[t]) * gr[t] + decay * gx[t+1]
            g = GX[t]
            torch.ops.aten.softplus_backward.grad_input(gr, X[t + 1], 1.0, SOFTPLUS_THRESHOLD, grad_input=g)
            g.mul_(scale)
            if t < T - 1:
                g.addcmul_(decay, GX[t + 1])
            if g_states is not None:
                g.add_(g_states[t])

        grad_w = grad_decay = grad_scale = grad_base = grad_h0 = None
        if need_w:  # sum_t r[t-1]^T gx[t]
            grad_w = R[:T].reshape(T * B, n).t() @ GX.view(T * B, n)
        if need_decay:  # sum_{t,b} x[t-1] * gx[t]
            grad_decay = (X[:T] * GX).sum((0, 1))
        if need_scale:
            grad_scale = acc_sp.sum()
        if need_base:
            grad_base = acc_r.sum()
        if need_h0:  # gx[-1] = s * softplus'(h0) * gr[-1] + decay * gx[0]   (gr holds gr[-1])
            gh = torch.ops.aten.softplus_backward(gr, X[0], 1.0, SOFTPLUS_THRESHOLD).mul_(scale).addcmul_(decay, GX[0])
            grad_h0 = gh if ctx.h0_batched else gh.sum(0)
        return (GX if need_inp else None), grad_w, grad_decay, grad_scale, grad_base, grad_h0, None


def _softplus_out(x: Tensor, out: Tensor) -> None:
    torch.ops.aten.softplus.out(x, 1.0, SOFTPLUS_THRESHOLD, out=out)


def recurrence(
    inp: Tensor,
    w_t: Tensor,
    decay: Tensor,
    scale: Tensor,
    baseline: Tensor,
    h0: Tensor,
    return_states: bool = False,
    time_major: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Run the recurrence with the fused forward/backward (:class:`FusedRecurrence`).

    Args:
        inp: drive ``[B, T, n]`` (``[T, B, n]`` when ``time_major``).
        w_t: ``(alpha * W_rec)^T`` ``[n, n]`` (``r @ w_t == alpha * W_rec r``).
        decay: ``1 - alpha`` ``[n]``.
        scale, baseline: 0-d tensors ``s``, ``b`` of ``r = s * softplus(x) + b``.
        h0: ``x[-1]``, ``[n]`` or ``[B, n]``.
        return_states: also return the states ``x``.
        time_major: ``inp`` and the results are ``[T, B, n]``.

    Returns:
        ``(rates, states or None)`` with the layout of ``inp`` (for ``time_major=False``
        these are transposed views of time-major storage).
    """
    if inp.dim() != 3:
        raise ValueError(f"inp must be 3-D, got shape {tuple(inp.shape)}")
    x = inp if time_major else inp.transpose(0, 1)
    x = x.contiguous()
    dtype = x.dtype
    args = [t.to(dtype) for t in (w_t, decay, scale, baseline, h0)]
    rates, states = FusedRecurrence.apply(x, *args, bool(return_states))
    if not time_major:
        rates = rates.transpose(0, 1)
        states = None if states is None else states.transpose(0, 1)
    return rates, states


def recurrence_reference(
    inp: Tensor,
    w_t: Tensor,
    decay: Tensor,
    scale: Tensor,
    baseline: Tensor,
    h0: Tensor,
    return_states: bool = False,
    time_major: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """The same recurrence as a Python loop recorded by autograd (same arguments as :func:`recurrence`)."""
    x_seq = inp.transpose(0, 1) if time_major else inp  # [B, T, n]
    B, n = x_seq.shape[0], x_seq.shape[2]
    x = h0.expand(B, n)
    r = F.softplus(x) * scale + baseline
    rates, states = [], []
    # unbind (one backward op for all steps), not inp[:, t]: the backward of each
    # indexing op would materialise a zero tensor of the whole [B, T, n] input.
    for inp_t in x_seq.unbind(1):
        x = torch.addmm(inp_t, r, w_t) + decay * x
        r = F.softplus(x) * scale + baseline
        rates.append(r)
        if return_states:
            states.append(x)
    dim = 0 if time_major else 1
    return torch.stack(rates, dim=dim), (torch.stack(states, dim=dim) if return_states else None)
