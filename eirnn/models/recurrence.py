"""The E-I rate recurrence as one autograd node with a hand-written backward through time.

Recurrence (``w_t = (alpha * W_rec)^T`` ``[n, n]``; ``decay = 1 - alpha`` ``[n]``; ``s``, ``b``
scalars; ``x[-1] = h0`` ``[n]`` or ``[B, n]``)::

    r[t-1] = s * softplus(x[t-1]) + b
    x[t]   = d[t] + c * xi[:, t] + r[t-1] @ w_t + decay * x[t-1]               t = 0 .. T-1

The state-independent drive ``d[t]`` ``[B, n]`` (``alpha * (W_in e(u[t]) + b_in)``) is either
dense, ``drive`` ``[T, B, n]``, or looked up, ``d[t] = drive[inv[t]]`` with ``drive`` ``[U, n]``
and ``inv`` ``[T, B]`` (one row per distinct input vector, see
:class:`~eirnn.models.fastops.RepeatedRows`); ``xi`` ``[B, T, n]`` is the state noise as drawn
and ``c = sigma sqrt(alpha)`` ``[n]``. ``softplus`` is PyTorch's (``beta = 1``, linear above
``threshold = 20``). Rates and states are returned time-major, ``[T, B, n]`` (the caller's
``[B, T, n]`` is a transposed view).

Backward through time for ``K`` cotangents at once (``G[t, :, k] = dL_k/dr[t]``, ``gx[T] = 0``,
``sig = softplus'``, i.e. ``sigmoid(x)``, 1 above the threshold)::

    gr[t] = G[t] + gx[t+1] @ w_t^T                                    # dL/dr[t], t = -1 .. T-1  (G[-1] = 0)
    gx[t] = s * sig(x[t]) * gr[t] + decay * gx[t+1]                     # dL/dx[t]

    dL/dd[t]   = gx[t]          (looked up: summed into the drive rows, one index_add)
    dL/dw_t    = sum_t r[t-1]^T gx[t]                                   # one [n, T B] @ [T B, K n] product
    dL/ddecay  = sum_{t,b} x[t-1] * gx[t],     dL/dc = sum_{t,b} xi[:, t] * gx[t]
    dL/ds      = sum_t <gr[t], softplus(x[t])>,   dL/db = sum_t sum gr[t]
    dL/dh0     = gx[-1] = s * sig(h0) * gr[-1] + decay * gx[0]   (summed over the batch when ``h0`` is ``[n]``)

Every step works on one ``[B, K, n]`` slice (layout ``(b, k, j)``, ``dL/dx`` kept as
``[T, B, K, n]``): ``gx[t+1] @ w_t^T`` is one ``[B K, n] x [n, n]`` product for all ``K``
cotangents and ``s * sig(x[t])`` is evaluated once for all of them. Autograd's backward is
the ``K = 1`` case; :func:`output_vjp` runs the sweep for several cotangents of the *same*
forward (the two losses of the parameter-space balancer: one reverse pass instead of two, the
same gradients up to float round-off), continuing through an attention-pooled drive
(:func:`~eirnn.models.fastops.attention_pool_vjp`).

Forward per step: the drive rows of the step (``index_select`` or a slice), ``addcmul`` of the
noise, ``addmm``, ``addcmul`` of the decay, ``softplus``, scale and shift, written into
buffers preallocated for the whole sequence. States, ``softplus`` values and rates are kept
for the backward (3 x ``[T+1, B, n]``); without a backward (validation) only two states are kept.

:func:`recurrence` is the entry point for a dense drive; :func:`recurrence_reference` is the
same computation as a plain autograd loop (for tests and the ``autograd`` option).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["FusedRecurrence", "recurrence", "recurrence_reference", "output_vjp", "supports_output_vjp", "IMPLS"]

IMPLS = ("fused", "autograd")
LEAN_ON_CPU = False  # tests: run the GPU variant (fewer, larger kernels per step; see _lean) on CPU tensors
SOFTPLUS_THRESHOLD = 20.0
# backward nodes of injective views (no overlap, no reduction): a cotangent of such a view
# of the rates is the cotangent of the rates scattered through the same strides
_VIEW_NODES = frozenset({
    "SliceBackward0", "SelectBackward0", "TransposeBackward0", "TransposeBackward1", "PermuteBackward0",
    "ViewBackward0", "UnsafeViewBackward0", "AliasBackward0", "UnsqueezeBackward0", "SqueezeBackward0",
    "SqueezeBackward1", "SqueezeBackward2", "NarrowBackward0",
})
_DIFF_INPUTS = ("drive", "w_t", "decay", "scale", "baseline", "h0", "coef")


class FusedRecurrence(torch.autograd.Function):
    """``apply(drive, inv, xi, coef, w_t, decay, scale, baseline, h0, want_states, need_backward)``
    ``-> (rates [T, B, n], states [T, B, n] or None)`` (time-major).

    ``drive``: ``[T, B, n]`` (``inv=None``) or ``[U, n]`` with ``inv`` ``[T, B]`` int64;
    ``xi``: ``[B, T, n]`` or ``None`` (then ``coef`` is unused); ``need_backward=False``:
    no gradient will be asked for (only two states are kept). See the module docstring.
    Not twice differentiable.
    """

    @staticmethod
    def forward(ctx, drive, inv, xi, coef, w_t, decay, scale, baseline, h0, want_states: bool = False,
                need_backward: bool = True):
        T, B = (inv.shape[0], inv.shape[1]) if inv is not None else (drive.shape[0], drive.shape[1])
        n = w_t.shape[0]
        keep_x = need_backward or want_states
        if _lean(drive):
            return _forward_lean(ctx, drive, inv, xi, coef, w_t, decay, scale, baseline, h0, want_states,
                                 need_backward, T, B, n, keep_x)
        with torch.no_grad():
            X = drive.new_empty((T + 1 if keep_x else 2, B, n))  # X[t+1] = x[t], X[0] = x[-1] = h0
            SP = drive.new_empty((T + 1 if need_backward else 1, B, n))  # softplus(X)
            R = drive.new_empty((T + 1, B, n))  # s * SP + b
            tmp = drive.new_empty((B, n)) if (inv is not None or xi is not None) else None  # drive of a step
            X[0].copy_(h0.expand(B, n))
            _softplus_out(X[0], SP[0])
            torch.mul(SP[0], scale, out=R[0]).add_(baseline)
            for t in range(T):
                xc, xp = (X[t + 1], X[t]) if keep_x else (X[(t + 1) % 2], X[t % 2])
                sp = SP[t + 1] if need_backward else SP[0]
                if inv is not None:
                    d = torch.index_select(drive, 0, inv[t], out=tmp)
                    if xi is not None:
                        d.addcmul_(xi[:, t], coef)
                elif xi is not None:
                    d = torch.addcmul(drive[t], xi[:, t], coef, out=tmp)
                else:
                    d = drive[t]
                torch.addmm(d, R[t], w_t, out=xc)
                xc.addcmul_(decay, xp)
                _softplus_out(xc, sp)
                torch.mul(sp, scale, out=R[t + 1]).add_(baseline)
        if need_backward:
            ctx.save_for_backward(X, SP, R, w_t, decay, scale, baseline, inv, xi, coef)
            ctx.vjp_inputs = (drive, w_t, decay, scale, baseline, h0, coef)  # for output_vjp
        ctx.need_backward = need_backward
        ctx.h0_batched = h0.dim() == 2
        ctx.n_drive_rows = drive.shape[0] if inv is not None else None
        ctx.rates_storage = (R.untyped_storage().data_ptr(), R.storage_offset() + B * n, (T, B, n))
        ctx.set_materialize_grads(False)  # an unused output gets None, not a zero tensor
        return R[1:], (X[1:] if want_states else None)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_rates, g_states):
        if not ctx.need_backward:
            raise RuntimeError("FusedRecurrence was run with need_backward=False")
        if g_rates is None and g_states is None:
            return (None,) * 11
        needs = dict(zip(("drive", "inv", "xi", "coef", "w_t", "decay", "scale", "baseline", "h0"),
                         ctx.needs_input_grad[:9]))
        G = None if g_rates is None else g_rates.unsqueeze(2)  # [T, B, 1, n]
        Gs = None if g_states is None else g_states.unsqueeze(2)
        grads = _sweep(ctx, G, Gs, needs)
        one = {k: (None if v is None else v[0]) for k, v in grads.items()}
        return (one["drive"], None, None, one["coef"], one["w_t"], one["decay"], one["scale"], one["baseline"],
                one["h0"], None, None)


def _sweep(ctx, G: Tensor | None, Gs: Tensor | None, needs: dict) -> dict[str, Tensor | None]:
    """The backward through time for ``K`` cotangents: ``G`` ``[T, B, K, n]`` of the rates and/or
    ``Gs`` ``[T, B, K, n]`` of the states (time-major, any strides). Returns, per differentiable
    input, its gradient with a leading ``K`` axis (``None`` when not needed)."""
    X, SP, R, w_t, decay, scale, baseline, inv, xi, coef = ctx.saved_tensors
    Tp1, B, n = X.shape
    T = Tp1 - 1
    if isinstance(G, _ViewCotangents):
        G = G.dense(T, B, X)
    K = (G if G is not None else Gs).shape[2]
    if _lean(X):
        return _sweep_lean(ctx, G, Gs, needs, K)
    need_w, need_decay, need_scale, need_base = needs["w_t"], needs["decay"], needs["scale"], needs["baseline"]
    need_coef = needs["coef"] and xi is not None
    # GX[t] = dL/dx[t] for every cotangent; with a looked-up drive nothing returned is a view of it,
    # so the buffer is reused from call to call (a fresh one of > 32 MiB would page-fault every step)
    reuse = inv is not None or K > 1  # (a dense drive's gradient is then copied out of it)
    GX = _scratch("GX", (T, B, K, n), X) if reuse else X.new_empty((T, B, K, n))
    gr = X.new_empty((B, K, n))  # dL/dr[t] of the current step
    ssig = X.new_empty((B, n)) if K > 1 else None
    if K == 1:
        acc_sp = X.new_zeros((Tp1, K)) if need_scale else None  # <gr[t], softplus(x[t])>, index t+1
        acc_r = X.new_zeros((Tp1, K)) if need_base else None  # sum gr[t]
    else:  # element-wise sums over t (a strided dot per cotangent would copy)
        acc_sp = X.new_zeros((B, K, n)) if need_scale else None
        acc_r = X.new_zeros((B, K, n)) if need_base else None
    w_tt = w_t.t()
    BK = B * K
    for t in range(T - 1, -2, -1):
        # gr[t] = G[t] + gx[t+1] @ w_t^T   (G[-1] = 0, gx[T] = 0)
        g_rt = None if (G is None or t < 0) else G[t]
        if t == T - 1:
            if g_rt is None:
                gr.zero_()
            else:
                gr.copy_(g_rt)
        elif g_rt is not None and g_rt.is_contiguous():
            torch.addmm(g_rt.view(BK, n), GX[t + 1].view(BK, n), w_tt, out=gr.view(BK, n))
        else:
            torch.mm(GX[t + 1].view(BK, n), w_tt, out=gr.view(BK, n))
            if g_rt is not None:
                gr.add_(g_rt)
        if K == 1:
            if need_scale:
                torch.dot(gr.view(-1), SP[t + 1].view(-1), out=acc_sp[t + 1, 0])
            if need_base:
                torch.sum(gr.view(-1), 0, out=acc_r[t + 1, 0])
        else:
            if need_scale:
                acc_sp.addcmul_(gr, SP[t + 1].unsqueeze(1).expand(B, K, n))
            if need_base:
                acc_r.add_(gr)
        if t < 0:
            break
        # gx[t] = s * softplus'(x[t]) * gr[t] + decay * gx[t+1]
        g = GX[t]
        if K == 1:
            torch.ops.aten.softplus_backward.grad_input(gr.view(B, n), X[t + 1], 1.0, SOFTPLUS_THRESHOLD,
                                                        grad_input=g.view(B, n))
            g.mul_(scale)
        else:  # s * softplus'(x[t]) once for all cotangents
            torch.ops.aten.softplus_backward.grad_input(scale.expand(B, n), X[t + 1], 1.0, SOFTPLUS_THRESHOLD,
                                                        grad_input=ssig)
            torch.mul(gr, ssig.unsqueeze(1).expand(B, K, n), out=g)
        if t < T - 1:
            g.addcmul_(decay, GX[t + 1])
        if Gs is not None:
            g.add_(Gs[t])

    out: dict[str, Tensor | None] = dict.fromkeys(_DIFF_INPUTS)
    GXf = GX.view(T * B, K * n)
    if need_w:  # sum_t r[t-1]^T gx[t], all cotangents in one [n, T*B] @ [T*B, K*n] product
        out["w_t"] = (R[:T].reshape(T * B, n).t() @ GXf).view(n, K, n).transpose(0, 1)
    if need_decay:  # sum_{t,b} x[t-1] * gx[t]
        out["decay"] = (X[:T].unsqueeze(2) * GX).sum((0, 1))
    if need_coef:  # sum_{t,b} xi[:, t] * gx[t]
        out["coef"] = (xi.transpose(0, 1).unsqueeze(2) * GX).sum((0, 1))
    if need_scale:
        out["scale"] = acc_sp.sum(0) if K == 1 else acc_sp.sum((0, 2))
    if need_base:
        out["baseline"] = acc_r.sum(0) if K == 1 else acc_r.sum((0, 2))
    if needs["h0"]:  # gx[-1] = s * softplus'(h0) * gr[-1] + decay * gx[0]   (gr holds gr[-1])
        sig0 = torch.ops.aten.softplus_backward(scale.expand(B, n), X[0], 1.0, SOFTPLUS_THRESHOLD)
        gh = (gr * sig0.unsqueeze(1).expand(B, K, n)).addcmul_(decay, GX[0])  # [B, K, n]
        out["h0"] = gh.transpose(0, 1) if ctx.h0_batched else gh.sum(0)
    if needs["drive"]:
        if inv is not None:  # the rows' gradients summed into their distinct drive rows, all cotangents at once
            gd = X.new_zeros((ctx.n_drive_rows, K * n)).index_add_(0, inv.reshape(-1), GXf)
            out["drive"] = gd.view(-1, K, n).transpose(0, 1)
        else:
            out["drive"] = GX.permute(2, 0, 1, 3) if not reuse else GX.permute(2, 0, 1, 3).clone()
    return out


def _lean(t: Tensor) -> bool:
    """The GPU variant: on a GPU the time loop is bound by kernel launches (or, replayed as a CUDA
    graph, by the number of kernels), so it does per step what the CPU variant does in 6-8
    kernels in 3-4, and moves the per-step reductions after the loop. Same equations; the
    summation order differs (float round-off). The CPU keeps its variant (cache-friendly)."""
    return t.device.type != "cpu" or LEAN_ON_CPU


def _forward_lean(ctx, drive, inv, xi, coef, w_t, decay, scale, baseline, h0, want_states, need_backward,
                  T, B, n, keep_x):
    """:meth:`FusedRecurrence.forward`, GPU variant: the drive and noise of every step in one op before
    the loop; per step ``x = d + decay x_prev`` (one ``addcmul``), ``x += r w_t`` (one in-place
    ``addmm``), ``softplus`` and ``r = b + s softplus`` (one ``addcmul``)."""
    with torch.no_grad():
        D = drive.index_select(0, inv.reshape(-1)).view(T, B, n) if inv is not None else drive
        if xi is not None:
            D = torch.addcmul(D, xi.transpose(0, 1), coef)
        X = drive.new_empty((T + 1 if keep_x else 2, B, n))
        SP = drive.new_empty((T + 1 if need_backward else 1, B, n))
        R = drive.new_empty((T + 1, B, n))
        X[0].copy_(h0.expand(B, n))
        _softplus_out(X[0], SP[0])
        torch.addcmul(baseline, SP[0], scale, out=R[0])
        for t in range(T):
            xc, xp = (X[t + 1], X[t]) if keep_x else (X[(t + 1) % 2], X[t % 2])
            sp = SP[t + 1] if need_backward else SP[0]
            torch.addcmul(D[t], decay, xp, out=xc)
            xc.addmm_(R[t], w_t)
            _softplus_out(xc, sp)
            torch.addcmul(baseline, sp, scale, out=R[t + 1])
    if need_backward:
        ctx.save_for_backward(X, SP, R, w_t, decay, scale, baseline, inv, xi, coef)
        ctx.vjp_inputs = (drive, w_t, decay, scale, baseline, h0, coef)
    ctx.need_backward = need_backward
    ctx.h0_batched = h0.dim() == 2
    ctx.n_drive_rows = drive.shape[0] if inv is not None else None
    ctx.rates_storage = (R.untyped_storage().data_ptr(), R.storage_offset() + B * n, (T, B, n))
    ctx.set_materialize_grads(False)
    return R[1:], (X[1:] if want_states else None)


def _sweep_lean(ctx, G, Gs, needs: dict, K: int) -> dict:
    """:func:`_sweep`, GPU variant: ``dL/dr`` of every step kept (``GR`` ``[T+1, B, K, n]``, filled
    with ``G`` first, so that each step is one in-place ``addmm``), ``s softplus'(x)`` of every step
    evaluated before the loop, the ``dL/ds`` and ``dL/db`` sums after it. Per step: ``addmm``,
    ``mul``, ``addcmul``."""
    X, SP, R, w_t, decay, scale, baseline, inv, xi, coef = ctx.saved_tensors
    Tp1, B, n = X.shape
    T = Tp1 - 1
    need_coef = needs["coef"] and xi is not None
    GR = X.new_zeros((Tp1, B, K, n))  # GR[t + 1] = dL/dr[t], t = -1 .. T-1
    if G is not None:
        GR[1:].copy_(G)
    ssig = torch.ops.aten.softplus_backward(scale.expand(T, B, n), X[1:], 1.0, SOFTPLUS_THRESHOLD).unsqueeze(2)
    GX = X.new_empty((T, B, K, n))
    w_tt = w_t.t()
    BK = B * K
    for t in range(T - 1, -2, -1):
        gr = GR[t + 1]
        if t < T - 1:  # gr[t] = G[t] + gx[t+1] @ w_t^T
            gr.view(BK, n).addmm_(GX[t + 1].view(BK, n), w_tt)
        if t < 0:
            break
        g = GX[t]  # gx[t] = s softplus'(x[t]) gr[t] + decay gx[t+1]
        torch.mul(gr, ssig[t], out=g)
        if t < T - 1:
            g.addcmul_(decay, GX[t + 1])
        if Gs is not None:
            g.add_(Gs[t])
    out: dict[str, Tensor | None] = dict.fromkeys(_DIFF_INPUTS)
    GXf = GX.view(T * B, K * n)
    if needs["w_t"]:
        out["w_t"] = (R[:T].reshape(T * B, n).t() @ GXf).view(n, K, n).transpose(0, 1)
    if needs["decay"]:
        out["decay"] = (X[:T].unsqueeze(2) * GX).sum((0, 1))
    if need_coef:
        out["coef"] = (xi.transpose(0, 1).unsqueeze(2) * GX).sum((0, 1))
    if needs["scale"]:  # sum_t <gr[t], softplus(x[t])>, t = -1 .. T-1
        out["scale"] = (GR * SP.unsqueeze(2)).sum((0, 1, 3))
    if needs["baseline"]:
        out["baseline"] = GR.sum((0, 1, 3))
    if needs["h0"]:
        gr = GR[0]
        sig0 = torch.ops.aten.softplus_backward(scale.expand(B, n), X[0], 1.0, SOFTPLUS_THRESHOLD)
        gh = (gr * sig0.unsqueeze(1).expand(B, K, n)).addcmul_(decay, GX[0])
        out["h0"] = gh.transpose(0, 1) if ctx.h0_batched else gh.sum(0)
    if needs["drive"]:
        if inv is not None:
            gd = X.new_zeros((ctx.n_drive_rows, K * n)).index_add_(0, inv.reshape(-1), GXf)
            out["drive"] = gd.view(-1, K, n).transpose(0, 1)
        else:
            out["drive"] = GX.permute(2, 0, 1, 3)
    return out


_WORKSPACE: dict = {}


def _scratch(name: str, shape: tuple, like: Tensor) -> Tensor:
    """A buffer kept from call to call (one per name, dtype and device; reallocated when the shape changes)."""
    from eirnn.training.cuda_graph import capturing

    if capturing():  # a graph keeps its own buffers (a shared one could be freed under it)
        return like.new_empty(shape)
    key = (name, like.dtype, str(like.device))
    buf = _WORKSPACE.get(key)
    if buf is None or tuple(buf.shape) != tuple(shape):
        _WORKSPACE.pop(key, None)
        buf = _WORKSPACE[key] = like.new_empty(shape)
    return buf


def clear_workspace() -> None:
    """Free the buffers :func:`_sweep` keeps between calls."""
    _WORKSPACE.clear()


def _softplus_out(x: Tensor, out: Tensor) -> None:
    torch.ops.aten.softplus.out(x, 1.0, SOFTPLUS_THRESHOLD, out=out)


def _find_node(output: Tensor):
    """The :class:`FusedRecurrence` node whose rates ``output`` is a view of (through view ops only), else ``None``."""
    node = output.grad_fn
    while node is not None and type(node).__name__ in _VIEW_NODES:
        nxt = [f for f in node.next_functions if f[0] is not None]
        if len(nxt) != 1:
            return None
        node = nxt[0][0]
    if node is None or type(node).__name__ != "FusedRecurrenceBackward" or not getattr(node, "need_backward", False):
        return None
    if output.untyped_storage().data_ptr() != node.rates_storage[0]:
        return None  # e.g. a view of the states
    return node


class _ViewCotangents:
    """``K`` cotangents of a view of the time-major rates ``[T, B, n]``, written into a reused
    time-major buffer ``G`` ``[T, B, K, n]`` (zero elsewhere), the layout of the sweep."""

    def __init__(self, cotangents, size, strides, offset0, n, K):
        self.cots, self.size, self.strides, self.offset0, self.n, self.K = cotangents, size, strides, offset0, n, K

    def dense(self, T: int, B: int, like: Tensor) -> Tensor:
        G = _scratch("G", (T, B, self.K, self.n), like).zero_()
        for k, c in enumerate(self.cots):
            if c is not None:
                G.as_strided(self.size, self.strides, self.offset0 + k * self.n).copy_(c)
        return G


def _view_cotangents(output: Tensor, node, cotangents) -> _ViewCotangents | None:
    """``output`` (a view of the time-major rates ``[T, B, n]``) mapped onto the sweep's ``(t, b, k, j)``
    coordinates; ``None`` when its strides do not decompose into those axes (e.g. merged axes)."""
    _, base, (T, B, n) = node.rates_storage
    K = len(cotangents)
    rel = output.storage_offset() - base
    if rel < 0:
        return None  # touches R[0] (the rate of h0), which is not an output
    start = [rel // (B * n), (rel % (B * n)) // n, rel % n]
    unit_in, unit_g, sizes = (B * n, n, 1), (B * K * n, K * n, 1), (T, B, n)
    hi = list(start)
    strides = []
    for sz, st in zip(output.shape, output.stride()):
        if sz == 1:
            strides.append(0)
            continue
        if st <= 0:
            return None
        axis = 0 if st >= B * n else 1 if st >= n else 2
        if st % unit_in[axis]:
            return None
        step = st // unit_in[axis]
        hi[axis] += step * (sz - 1)
        strides.append(step * unit_g[axis])
    if any(h >= s for h, s in zip(hi, sizes)):
        return None
    offset0 = start[0] * unit_g[0] + start[1] * unit_g[1] + start[2]
    return _ViewCotangents(cotangents, tuple(output.shape), tuple(strides), offset0, n, K)


def supports_output_vjp(output: Tensor, K: int = 2) -> bool:
    """Whether :func:`output_vjp` applies to ``output`` (a view of the rates of a fused forward)."""
    node = _find_node(output) if output.requires_grad else None
    return node is not None and _view_cotangents(output, node, [None] * K) is not None


def output_vjp(output: Tensor, cotangents: Sequence[Tensor | None]):
    """Gradients w.r.t. the recurrence's inputs for ``K`` cotangents of ``output`` in ONE reverse sweep.

    ``output`` must be the rates of a :class:`FusedRecurrence` forward or a view of them (e.g.
    ``rates.transpose(0, 1)[..., :n_recorded]``); ``cotangents[k]`` has ``output``'s shape
    (``None``: zero). Returns ``(inputs, grads)``: the differentiable inputs of the recurrence
    that need a gradient (``drive``, ``w_t``, ``decay``, ...; tensors of the autograd graph
    upstream of the recurrence) and, per cotangent, the list of their gradients; or ``None``
    when ``output`` is not such a view (the caller then falls back to one autograd pass per
    cotangent). The same values as ``torch.autograd.grad(output, inputs, cotangents[k])`` up to
    float round-off (summation order).
    """
    node = _find_node(output)
    if node is None:
        return None
    K = len(cotangents)
    G = _view_cotangents(output, node, list(cotangents))
    if G is None:
        return None
    needs = dict(zip(("drive", "inv", "xi", "coef", "w_t", "decay", "scale", "baseline", "h0"),
                     node.needs_input_grad[:9]))
    with torch.no_grad():
        grads = _sweep(node, G, None, needs)
    names = [name for name, t in zip(_DIFF_INPUTS, node.vjp_inputs)
             if grads[name] is not None and t is not None and t.requires_grad]
    inputs = [node.vjp_inputs[_DIFF_INPUTS.index(name)] for name in names]
    per_k = [[grads[name][k] for name in names] for k in range(K)]
    if "drive" in names:  # an attention-pooled drive: its backward for all cotangents at once too
        from .fastops import attention_node, attention_pool_vjp

        att = attention_node(inputs[names.index("drive")])
        if att is not None:
            gd = grads["drive"]  # [K, U, n] or [K, T, B, n]
            ge = gd.transpose(0, 1) if gd.dim() == 3 else gd.permute(1, 2, 0, 3).reshape(-1, K, gd.shape[-1])
            with torch.no_grad():
                a_inputs, a_per_k = attention_pool_vjp(att, ge)
            i = names.index("drive")
            inputs = inputs[:i] + inputs[i + 1:] + a_inputs
            per_k = [g[:i] + g[i + 1:] + a for g, a in zip(per_k, a_per_k)]
    return inputs, per_k


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
    """Run the recurrence with the fused forward/backward (:class:`FusedRecurrence`), dense drive.

    Args:
        inp: drive ``[B, T, n]`` (``[T, B, n]`` when ``time_major``).
        w_t: ``(alpha * W_rec)^T`` ``[n, n]`` (``r @ w_t == alpha * W_rec r``).
        decay: ``1 - alpha`` ``[n]``.
        scale, baseline: 0-d tensors ``s``, ``b`` of ``r = s * softplus(x) + b``.
        h0: ``x[-1]``, ``[n]`` or ``[B, n]``.
        return_states: also return the states ``x``.
        time_major: ``inp`` and the results are ``[T, B, n]``.

    Returns:
        ``(rates, states or None)`` with the layout of ``inp`` (views where the storage has the
        other layout).
    """
    if inp.dim() != 3:
        raise ValueError(f"inp must be 3-D, got shape {tuple(inp.shape)}")
    x = (inp if time_major else inp.transpose(0, 1)).contiguous()
    dtype = x.dtype
    args = [t.to(dtype) for t in (w_t, decay, scale, baseline, h0)]
    need = torch.is_grad_enabled() and any(t.requires_grad for t in [x, *args])
    rates, states = FusedRecurrence.apply(x, None, None, None, *args, bool(return_states), need)
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
