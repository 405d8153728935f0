"""K independent E-I RNNs (one per seed) run as ONE batched model (``ensemble.size=K``).

Every parameter of :class:`~eirnn.models.EIRNN` is stacked along a leading *member*
dimension (``W_rec`` raw ``[K, n, n]``, ``W_in`` ``[K, n, d]``, ...). One forward runs all
members: the per-member factors (``W_rec`` with Dale's law and zero diagonal, ``alpha``,
rate scale / baseline, ``h0``, attention factors) are evaluated by ``torch.func.vmap`` of
the single model's own code over the stacked parameters, and the recurrence

    x[t, k] = inp[t, k] + r[t-1, k] @ w_t[k] + decay[k] * x[t-1, k]        (k = 0 .. K-1)
    r[t, k] = s[k] * softplus(x[t, k]) + b[k]

runs as one batched matrix product per time step (:class:`FusedEnsembleRecurrence`,
``torch.baddbmm`` over ``[K, B, n] x [K, n, n]``) with the same hand-written backward
through time as :class:`~eirnn.models.recurrence.FusedRecurrence`, batched over ``K``.
Members never mix: the gradient of member ``j``'s loss is zero on member ``i``'s slice of
every stacked parameter.

Member ``k`` is built by the single-model code with seed ``seed + k``
(:meth:`EnsembleEIRNN.from_members`), so its initial weights are exactly those of a
single ``EIRNN(..., seed=seed + k)``; :meth:`EnsembleEIRNN.member_state_dict` extracts a
member as a normal ``EIRNN`` state dict (and :meth:`member` as an ``EIRNN``).

Noise: ``generator`` may be a list of ``K`` generators; member ``k`` then draws its
``[B, T, n]`` noise from generator ``k`` exactly as a single model draws it, so a member
fed the generator of the single run sees the same noise.

Shapes: inputs ``u`` ``[B, T, C]`` (shared by all members); rates ``[K, B, T, n]`` (a
view of time-major ``[T, K, B, n]`` storage); outputs ``[K, B, T, n_outputs]``.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .eirnn import EIRNN, RNNOutput
from .fastops import RepeatedRows, attention_pool
from .recurrence import SOFTPLUS_THRESHOLD, _lean

__all__ = ["EnsembleEIRNN", "FusedEnsembleRecurrence", "MemberRecordedRates", "ensemble_recurrence_reference",
           "ensemble_drive"]


# ----------------------------------------------------------------------------- recurrence


def _buffer(ws: dict | None, name: str, shape: tuple, like: Tensor) -> Tensor:
    """``like.new_empty(shape)``, or the workspace's buffer of that name, shape, dtype and device
    (reused; a mini-batch epoch has two batch sizes, the last batch being smaller)."""
    if ws is None:
        return like.new_empty(shape)
    key = (name, tuple(shape), like.dtype, str(like.device))
    buf = ws.get(key)
    if buf is None:
        buf = ws[key] = like.new_empty(shape)
    return buf


class FusedEnsembleRecurrence(torch.autograd.Function):
    """The recurrence of ``K`` members in one autograd node, with the input drive folded in.

    ``apply(ws, u, w_in, table, inv, bias, xi, coef, w_t, decay, scale, baseline, h0, want_states, need_backward)``
    with ``K`` members, ``T`` steps, batch ``B``, ``n`` units (every drive term optional)::

        x[t, k] = r[t-1, k] @ w_t[k] + decay[k] * x[t-1, k]
                  + bias[k] + u[t] @ w_in[k] + table[k, inv[t]] + coef[k] * xi[k, :, t]
        r[t, k] = scale[k] * softplus(x[t, k]) + baseline[k]

    ``u`` ``[T, B, C]`` are inputs shared by the members (linear embedding: ``w_in =
    (alpha W_in)^T`` ``[K, C, n]``); ``table`` ``[K, U, n]`` with ``inv`` ``[T, B]`` is a
    per-member drive looked up by input row (attention embedding, evaluated once per
    distinct input row; ``inv=None``: ``table`` is ``[K, T, B, n]``, one row per step and trial);
    ``xi`` ``[K, B, T, n]`` is the state noise, ``coef = sigma
    sqrt(alpha)`` ``[K, n]``; ``decay`` ``[K, n]``, ``scale``, ``baseline`` ``[K]``, ``h0``
    ``[K, n]``. Returns ``(rates [T, K, B, n], states [T, K, B, n] or None)``.

    Same forward and backward through time as
    :class:`~eirnn.models.recurrence.FusedRecurrence`, one ``baddbmm`` per step instead of
    ``addmm``; the drive is never materialised as a ``[T, K, B, n]`` tensor and every
    parameter gradient (``dL/dw_t``, ``dL/dw_in``, ``dL/dtable``, ...) is accumulated
    during the reverse loop, so only two ``[K, B, n]`` slices of ``dL/dx`` are alive at a
    time. Saved for the backward: states ``X`` and rates ``R`` (``[T+1, K, B, n]`` each;
    ``softplus(x) = (r - b) / s`` where ``dL/ds`` needs it).

    ``ws``: a dict owned by the caller in which ``X``, ``R`` and the step buffers are kept
    and reused from call to call (a fresh half-gigabyte allocation costs ~0.2 s of page
    faults on CPU). The returned rates are then views of the workspace and are
    overwritten by the next call with the same ``ws``; a backward through an overwritten
    graph raises autograd's in-place modification error. ``None``: fresh buffers.
    ``need_backward=False`` (no gradient will be asked for: validation) keeps two states
    instead of ``T + 1``. No gradient w.r.t. ``u``, ``inv`` or ``xi``; not twice differentiable.
    """

    @staticmethod
    def forward(ctx, ws, u, w_in, table, inv, bias, xi, coef, w_t, decay, scale, baseline, h0, want_states: bool,
                need_backward: bool = True):
        K, n = w_t.shape[0], w_t.shape[-1]
        if u is not None:
            T, B = u.shape[0], u.shape[1]
        elif inv is not None:
            T, B = inv.shape
        else:  # table [K, T, B, n]: one row per step and trial
            T, B = table.shape[1], table.shape[2]
        like = w_t
        if _lean(w_t):
            return _ens_forward_lean(ctx, ws, u, w_in, table, inv, bias, xi, coef, w_t, decay, scale, baseline, h0,
                                     want_states, need_backward, T, B, K, n)
        with torch.no_grad():
            dec = decay.view(K, 1, n)
            s, b = scale.view(K, 1, 1), baseline.view(K, 1, 1)
            b_in = None if bias is None else bias.view(K, 1, n)
            c_xi = None if xi is None else coef.view(K, 1, n)
            # X[t+1] = x[t], X[0] = h0; without a backward only the last state is needed (a ring of 2)
            ring = not (need_backward or want_states)
            X = _buffer(ws, "X2" if ring else "X", (2 if ring else T + 1, K, B, n), like)
            R = _buffer(ws, "R", (T + 1, K, B, n), like)
            tmp = _buffer(ws, "tmp", (K, B, n), like) if inv is not None else None
            X[0].copy_(h0.view(K, 1, n).expand(K, B, n))
            for t in range(-1, T):
                x, x_prev = (X[(t + 1) % 2], X[t % 2]) if ring else (X[t + 1], X[t])
                if t >= 0:
                    if b_in is None:
                        torch.bmm(R[t], w_t, out=x)
                    else:
                        torch.baddbmm(b_in, R[t], w_t, out=x)
                    if u is not None:
                        x.baddbmm_(u[t].expand(K, B, u.shape[-1]), w_in)
                    if inv is not None:
                        torch.index_select(table, 1, inv[t], out=tmp)
                        x.add_(tmp)
                    elif table is not None:
                        x.add_(table[:, t])
                    if xi is not None:
                        x.addcmul_(xi[:, :, t], c_xi)
                    x.addcmul_(dec, x_prev)
                r = R[t + 1]
                torch.ops.aten.softplus.out(x, 1.0, SOFTPLUS_THRESHOLD, out=r)
                r.mul_(s).add_(b)
        ctx.save_for_backward(X, R, u, w_in, table, inv, xi, coef, w_t, decay, scale, baseline)
        ctx.ws = ws
        ctx.set_materialize_grads(False)
        return R[1:], (X[1:] if want_states else None)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_rates, g_states):
        X, R, u, w_in, table, inv, xi, coef, w_t, decay, scale, baseline = ctx.saved_tensors
        if X.shape[0] != R.shape[0]:
            raise RuntimeError("FusedEnsembleRecurrence was run with need_backward=False")
        Tp1, K, B, n = X.shape
        T = Tp1 - 1
        needs = ctx.needs_input_grad
        if _lean(X):
            return _ens_backward_lean(ctx, g_rates, g_states)
        need_w_in, need_table, need_bias, need_coef = needs[2], needs[3], needs[5], needs[7]
        need_w, need_decay, need_scale, need_base, need_h0 = needs[8:13]
        ws = ctx.ws
        dec = decay.view(K, 1, n)
        s = scale.view(K, 1, 1)
        if g_rates is None:
            g_rates = X.new_zeros((T, K, B, n))
        if g_states is not None and g_states.shape != (T, K, B, n):
            g_states = g_states.expand(T, K, B, n)
        gx_a, gx_b = _buffer(ws, "gx_a", (K, B, n), X), _buffer(ws, "gx_b", (K, B, n), X)  # dL/dx[t], dL/dx[t+1]
        gr = _buffer(ws, "gr", (K, B, n), X)
        need_acc = need_scale or need_base
        acc_dot = X.new_zeros((Tp1, K, 1, 1))  # <gr[t], r[t]> per member
        acc_sum = X.new_zeros((Tp1, K))  # sum gr[t] per member
        z = X.new_zeros
        grad_w = z((K, n, n)) if need_w else None
        grad_decay = z((K, n)) if need_decay else None
        grad_w_in = z(w_in.shape) if need_w_in else None
        grad_table = None
        if need_table:  # every [K, t, B, n] slice is written once when there is no lookup
            grad_table = z(table.shape) if inv is not None else _buffer(ws, "g_table", tuple(table.shape), X)
        grad_bias = z((K, n)) if need_bias else None
        grad_coef = z((K, n)) if need_coef else None
        w_tt = w_t.transpose(1, 2)
        g_next = None  # dL/dx[t+1]
        for t in range(T - 1, -2, -1):
            if t == T - 1:
                gr.copy_(g_rates[t])
            elif t >= 0:
                torch.baddbmm(g_rates[t], g_next, w_tt, out=gr)
            else:
                torch.bmm(g_next, w_tt, out=gr)
            if need_acc:
                torch.bmm(gr.view(K, 1, B * n), R[t + 1].view(K, B * n, 1), out=acc_dot[t + 1])
                torch.sum(gr.view(K, B * n), 1, out=acc_sum[t + 1])
            if t < 0:
                break
            g = gx_a if g_next is not gx_a else gx_b
            torch.ops.aten.softplus_backward.grad_input(gr, X[t + 1], 1.0, SOFTPLUS_THRESHOLD, grad_input=g)
            g.mul_(s)
            if g_next is not None:
                g.addcmul_(dec, g_next)
            if g_states is not None:
                g.add_(g_states[t])
            # dL/dx[t] is the gradient of every drive term of step t
            if need_w:  # sum_t r[t-1]^T gx[t]
                grad_w.baddbmm_(R[t].transpose(1, 2), g)
            if need_decay:  # sum_{t,b} x[t-1] * gx[t]
                grad_decay.add_((X[t] * g).sum(1))
            if need_w_in:
                grad_w_in.baddbmm_(u[t].t().expand(K, u.shape[-1], B), g)
            if need_table:
                if inv is not None:
                    grad_table.index_add_(1, inv[t], g)
                else:
                    grad_table[:, t].copy_(g)
            if need_bias:
                grad_bias.add_(g.sum(1))
            if need_coef:
                grad_coef.add_((xi[:, :, t] * g).sum(1))
            g_next = g
        grad_scale = grad_base = grad_h0 = None
        if need_acc:
            dot = acc_dot.view(Tp1, K).sum(0)  # sum_t <gr, s sp + b>
            tot = acc_sum.sum(0)  # sum_t sum gr
            if need_scale:  # sum_t <gr[t], softplus(x[t])> = (<gr, r> - b sum gr) / s
                grad_scale = (dot - baseline * tot) / scale
            if need_base:
                grad_base = tot
        if need_h0:  # gx[-1] = s * softplus'(h0) * gr[-1] + decay * gx[0], summed over the batch
            gh = torch.ops.aten.softplus_backward(gr, X[0], 1.0, SOFTPLUS_THRESHOLD).mul_(s)
            if g_next is not None:
                gh.addcmul_(dec, g_next)
            grad_h0 = gh.sum(1)
        return (None, None, grad_w_in, grad_table, None, grad_bias, None, grad_coef,
                grad_w, grad_decay, grad_scale, grad_base, grad_h0, None, None)


def _ens_forward_lean(ctx, ws, u, w_in, table, inv, bias, xi, coef, w_t, decay, scale, baseline, h0, want_states,
                      need_backward, T, B, K, n):
    """:meth:`FusedEnsembleRecurrence.forward`, GPU variant (as
    :func:`eirnn.models.recurrence._forward_lean`): the drive of every step materialised first
    (:func:`ensemble_drive`, a few ops), then per step ``addcmul`` (drive + decay x),
    ``baddbmm_`` (+ r w_t), ``softplus`` and ``addcmul`` (b + s softplus)."""
    with torch.no_grad():
        D = ensemble_drive(u, w_in, table, inv, bias, xi, coef, K, n)  # [T, K, B, n]
        dec = decay.view(K, 1, n)
        s, b = scale.view(K, 1, 1), baseline.view(K, 1, 1)
        ring = not (need_backward or want_states)
        X = _buffer(ws, "X2" if ring else "X", (2 if ring else T + 1, K, B, n), w_t)
        R = _buffer(ws, "R", (T + 1, K, B, n), w_t)
        sp = _buffer(ws, "sp", (K, B, n), w_t)
        X[0].copy_(h0.view(K, 1, n).expand(K, B, n))
        torch.ops.aten.softplus.out(X[0], 1.0, SOFTPLUS_THRESHOLD, out=sp)
        torch.addcmul(b, sp, s, out=R[0])
        for t in range(T):
            x, x_prev = (X[(t + 1) % 2], X[t % 2]) if ring else (X[t + 1], X[t])
            torch.addcmul(D[t], dec, x_prev, out=x)
            x.baddbmm_(R[t], w_t)
            torch.ops.aten.softplus.out(x, 1.0, SOFTPLUS_THRESHOLD, out=sp)
            torch.addcmul(b, sp, s, out=R[t + 1])
    ctx.save_for_backward(X, R, u, w_in, table, inv, xi, coef, w_t, decay, scale, baseline)
    ctx.ws = ws
    ctx.set_materialize_grads(False)
    return R[1:], (X[1:] if want_states else None)


def _ens_backward_lean(ctx, g_rates, g_states):
    """:meth:`FusedEnsembleRecurrence.backward`, GPU variant: ``dL/dr`` and ``dL/dx`` of every step
    kept (``[T+1, K, B, n]``, ``[T, K, B, n]``), three kernels per step, every parameter gradient
    one product or reduction after the loop."""
    X, R, u, w_in, table, inv, xi, coef, w_t, decay, scale, baseline = ctx.saved_tensors
    Tp1, K, B, n = X.shape
    T = Tp1 - 1
    needs = ctx.needs_input_grad
    need_w_in, need_table, need_bias, need_coef = needs[2], needs[3], needs[5], needs[7]
    need_w, need_decay, need_scale, need_base, need_h0 = needs[8:13]
    dec = decay.view(K, 1, n)
    s = scale.view(K, 1, 1)
    GR = X.new_zeros((Tp1, K, B, n))  # GR[t + 1] = dL/dr[t]
    if g_rates is not None:
        GR[1:].copy_(g_rates)
    ssig = torch.ops.aten.softplus_backward(s.expand(K, B, n).expand(T, K, B, n), X[1:], 1.0, SOFTPLUS_THRESHOLD)
    GX = X.new_empty((T, K, B, n))
    w_tt = w_t.transpose(1, 2)
    for t in range(T - 1, -2, -1):
        gr = GR[t + 1]
        if t < T - 1:
            gr.baddbmm_(GX[t + 1], w_tt)
        if t < 0:
            break
        torch.mul(gr, ssig[t], out=GX[t])
        if t < T - 1:
            GX[t].addcmul_(dec, GX[t + 1])
        if g_states is not None:
            GX[t].add_(g_states[t])
    grad_w = torch.einsum("tkbi,tkbj->kij", R[:T], GX) if need_w else None
    grad_decay = (X[:T] * GX).sum((0, 2)) if need_decay else None
    grad_w_in = torch.einsum("tbc,tkbn->kcn", u, GX) if need_w_in else None
    grad_table = None
    if need_table:
        gk = GX.permute(1, 0, 2, 3)  # [K, T, B, n]
        grad_table = (X.new_zeros(table.shape).index_add_(1, inv.reshape(-1), gk.reshape(K, T * B, n))
                      if inv is not None else gk.contiguous())
    grad_bias = GX.sum((0, 2)) if need_bias else None
    grad_coef = (xi.permute(2, 0, 1, 3) * GX).sum((0, 2)) if need_coef else None
    grad_scale = grad_base = grad_h0 = None
    if need_scale or need_base:
        tot = GR.sum((0, 2, 3))  # sum_t sum gr
        if need_scale:  # sum_t <gr[t], softplus(x[t])> = (<gr, r> - b sum gr) / s
            grad_scale = ((GR * R).sum((0, 2, 3)) - baseline * tot) / scale
        if need_base:
            grad_base = tot
    if need_h0:
        gh = torch.ops.aten.softplus_backward(GR[0], X[0], 1.0, SOFTPLUS_THRESHOLD).mul_(s)
        if T > 0:
            gh.addcmul_(dec, GX[0])
        grad_h0 = gh.sum(1)
    return (None, None, grad_w_in, grad_table, None, grad_bias, None, grad_coef,
            grad_w, grad_decay, grad_scale, grad_base, grad_h0, None, None)


def ensemble_drive(u, w_in, table, inv, bias, xi, coef, K: int, n: int) -> Tensor:
    """The drive of :class:`FusedEnsembleRecurrence` materialised as ``[T, K, B, n]`` (reference path)."""
    T, B = (u.shape[0], u.shape[1]) if u is not None else inv.shape if inv is not None else table.shape[1:3]
    inp = None
    if u is not None:
        inp = torch.einsum("tbc,kcn->tkbn", u, w_in)
    if table is not None:
        tab = table if inv is None else table.index_select(1, inv.reshape(-1)).view(K, T, B, n)
        inp = tab.transpose(0, 1) if inp is None else inp + tab.transpose(0, 1)
    if bias is not None:
        inp = inp + bias[None, :, None, :]
    if xi is not None:
        inp = inp + xi.permute(2, 0, 1, 3) * coef[None, :, None, :]
    return inp


def ensemble_recurrence_reference(u, w_in, table, inv, bias, xi, coef, w_t, decay, scale, baseline, h0,
                                  return_states: bool = False):
    """The computation of :class:`FusedEnsembleRecurrence` as a plain autograd step loop with
    batched products (tests, and ``model.recurrence_impl=autograd``); same arguments, less ``ws``."""
    K, n = w_t.shape[0], w_t.shape[-1]
    inp = ensemble_drive(u, w_in, table, inv, bias, xi, coef, K, n)
    B = inp.shape[2]
    dec = decay.view(K, 1, n)
    s, b = scale.view(K, 1, 1), baseline.view(K, 1, 1)
    x = h0.view(K, 1, n).expand(K, B, n)
    r = F.softplus(x) * s + b
    rates, states = [], []
    for inp_t in inp.unbind(0):
        x = torch.baddbmm(inp_t, r, w_t) + dec * x
        r = F.softplus(x) * s + b
        rates.append(r)
        if return_states:
            states.append(x)
    return torch.stack(rates, 0), (torch.stack(states, 0) if return_states else None)


class MemberRecordedRates(torch.autograd.Function):
    """``(rates_tm [T, K, B, n], n_rec, ws) -> [K, B, T, n_rec]``: the members' recorded units,
    contiguous (member ``k``'s slice is a single-model rate tensor, the losses' layout).

    The backward writes the gradient straight into one ``[T, K, B, n]`` buffer (zero on the
    hidden units), the layout the recurrence's backward reads, instead of autograd's
    full-size zero tensor of a slice. ``ws`` as in :class:`FusedEnsembleRecurrence`
    (buffers reused from call to call).
    """

    @staticmethod
    def forward(ctx, rates_tm, n_rec: int, ws):
        T, K, B, n = rates_tm.shape
        buf = _buffer(ws, "rec", (K, B, T, n_rec), rates_tm)
        buf.copy_(rates_tm[..., :n_rec].permute(1, 2, 0, 3))
        ctx.dims, ctx.ws = (T, K, B, n, n_rec), ws
        return buf

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        T, K, B, n, n_rec = ctx.dims
        gbuf = _buffer(ctx.ws, "g_rates", (T, K, B, n), g)
        if n_rec < n:
            gbuf[..., n_rec:].zero_()
        gbuf[..., :n_rec].copy_(g.permute(2, 0, 1, 3))
        return gbuf, None, None


# ----------------------------------------------------------------------------- the model


class _Factors(nn.Module):
    """The state-independent quantities of one member, computed by the single model's code."""

    def __init__(self, net: EIRNN):
        super().__init__()
        self.net = net

    def forward(self) -> dict[str, Tensor]:
        net = self.net
        alpha = net.alpha()
        out = {
            "W_rec": net.W_rec, "alpha": alpha, "scale": net.rate_scale, "base": net.rate_baseline,
            "h0": net.h0, "W_in": net.W_in, "bias": net.bias,
        }
        if hasattr(net.embedding, "pool_factors"):
            out["qa"], out["qb"], out["vab"] = net.embedding.pool_factors()
        if net.n_outputs > 0:
            out["W_out"], out["b_out"] = net.W_out, net.b_out
        return out


def _strip_parameters(module: nn.Module) -> list[str]:
    """Turn every parameter of ``module`` into a non-persistent buffer (same name); return the names."""
    names = [name for name, _ in module.named_parameters()]
    for mod in module.modules():
        for pname, p in list(mod._parameters.items()):
            if p is None:
                continue
            del mod._parameters[pname]
            mod.register_buffer(pname, p.detach().clone(), persistent=False)
    return names


def _key(name: str) -> str:
    return name.replace(".", "__")


class EnsembleEIRNN(nn.Module):
    """``K`` :class:`~eirnn.models.EIRNN` members with stacked parameters; see the module docstring.

    Build it with :meth:`from_members` (members of identical architecture, e.g. the same
    config with seeds ``seed + k``). ``stacked[<name with '.' -> '__'>]`` holds the
    ``[K, ...]`` parameter of the single model's ``<name>``.
    """

    def __init__(self, members: Sequence[EIRNN], seeds: Sequence[int] | None = None):
        super().__init__()
        members = list(members)
        if not members:
            raise ValueError("an ensemble needs at least one member")
        template = members[0]
        if not isinstance(template, EIRNN):
            raise TypeError(f"ensemble members must be EIRNN models, got {type(template).__name__}")
        ref_state = template.state_dict()
        for i, m in enumerate(members[1:], start=1):
            st = m.state_dict()
            if type(m) is not type(template) or st.keys() != ref_state.keys() or any(
                    st[k].shape != ref_state[k].shape for k in st):
                raise ValueError(f"ensemble member {i} does not have the architecture of member 0")
            names = {n for n, _ in m.named_parameters()}
            for k, v in st.items():  # buffers (E/I labels, fixed alpha, h0 when not learned) must agree
                if k not in names and not torch.equal(v, ref_state[k]):
                    raise ValueError(f"ensemble member {i} differs from member 0 in buffer {k!r}")
            if m.noise_scale != template.noise_scale:
                raise ValueError(f"ensemble member {i} has another noise_scale")
        self.size = len(members)
        self.seeds = [int(s) for s in seeds] if seeds is not None else list(range(self.size))
        self.param_names = [n for n, _ in template.named_parameters()]
        requires = {n: p.requires_grad for n, p in template.named_parameters()}
        self.stacked = nn.ParameterDict({
            _key(n): nn.Parameter(torch.stack([dict(m.named_parameters())[n].detach() for m in members]).clone(),
                                  requires_grad=requires[n])
            for n in self.param_names
        })
        net = copy.deepcopy(template)
        _strip_parameters(net)
        self.factors = _Factors(net)
        self.n_inputs, self.n_recorded, self.n_units = net.n_inputs, net.n_recorded, net.n_units
        self.n_outputs, self.noise_scale, self.dt = net.n_outputs, net.noise_scale, net.dt
        self.recurrence_impl = net.recurrence_impl
        self._repeated_inputs = RepeatedRows()
        self._state_keys = list(ref_state.keys())
        # a CPU copy of member 0 (not a submodule): the class and layout of :meth:`member`
        object.__setattr__(self, "_template", copy.deepcopy(template).cpu())

    @classmethod
    def from_members(cls, members: Sequence[EIRNN], seeds: Sequence[int] | None = None) -> "EnsembleEIRNN":
        return cls(members, seeds)

    # ------------------------------------------------------------------ members
    @property
    def net(self) -> EIRNN:
        """The parameter-less single-model skeleton (buffers, config, methods)."""
        return self.factors.net

    @property
    def is_excitatory(self) -> Tensor:
        return self.net.is_excitatory

    @property
    def time_constants(self):
        return self.net.time_constants

    def _member_factors(self, params: dict[str, Tensor]) -> dict[str, Tensor]:
        return torch.func.functional_call(self.factors, {f"net.{n}": params[n] for n in self.param_names}, ())

    def member_factors(self) -> dict[str, Tensor]:
        """Every per-member factor (``W_rec`` ``[K, n, n]``, ``alpha`` ``[K, n]``, ...), differentiable."""
        return torch.func.vmap(self._member_factors)({n: self.stacked[_key(n)] for n in self.param_names})

    @property
    def W_rec(self) -> Tensor:
        """``[K, n, n]`` effective recurrent matrices (Dale's law and zero diagonal applied)."""
        return self.member_factors()["W_rec"]

    def alpha(self) -> Tensor:
        """``[K, n]``."""
        return self.member_factors()["alpha"]

    def member_regularized_weights(self) -> list[list[Tensor]]:
        """Per member, the weights penalised by ``L_reg`` (``W_rec``, ``W_in``), as for a single model."""
        f = self.member_factors()
        return [[w, v] for w, v in zip(f["W_rec"].unbind(0), f["W_in"].unbind(0))]

    def member_recorded(self, rates: Tensor, workspace: dict | None = None) -> Tensor:
        """The members' recorded units, contiguous ``[K, B, T, n_recorded]``, from the ``rates``
        ``[K, B, T, n]`` of :meth:`forward` (see :class:`MemberRecordedRates`)."""
        return MemberRecordedRates.apply(rates.permute(2, 0, 1, 3), self.n_recorded, workspace)

    @torch.no_grad()
    def member_state_dict(self, k: int) -> dict[str, Tensor]:
        """Member ``k`` as a normal single-model ``EIRNN`` state dict (CPU copies, the usual key order)."""
        if not 0 <= k < self.size:
            raise IndexError(f"member {k} out of range (ensemble of {self.size})")
        state = {name: value.detach().cpu().clone() for name, value in self.net.state_dict().items()}
        for n in self.param_names:  # persistent buffers above are shared by the members
            state[n] = self.stacked[_key(n)][k].detach().cpu().clone()
        return {key: state[key] for key in self._state_keys}

    def member(self, k: int) -> EIRNN:
        """Member ``k`` as a standalone :class:`EIRNN` (a copy, on the CPU)."""
        m = copy.deepcopy(self._template)
        m.load_state_dict(self.member_state_dict(k))
        return m

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def describe(self) -> str:
        one = self.member(0).describe()
        return f"ensemble of {self.size} independent members (seeds {self.seeds[0]}..{self.seeds[-1]}), each: {one}"

    # ------------------------------------------------------------------ forward
    def _noise(self, noise_sample, generator, shape, like, workspace=None) -> Tensor:
        """``[K, B, T, n]`` standard normal noise; member ``k`` from ``generator[k]`` when a list."""
        K = self.size
        if noise_sample is not None:
            if tuple(noise_sample.shape) != (K, *shape):
                raise ValueError(f"noise_sample must be {(K, *shape)}, got {tuple(noise_sample.shape)}")
            return noise_sample.to(device=like.device, dtype=like.dtype)
        xi = _buffer(workspace, "xi", (K, *shape), like.detach())
        if isinstance(generator, (list, tuple)):
            if len(generator) != K:
                raise ValueError(f"need one generator per member ({K}), got {len(generator)}")
            for k, g in enumerate(generator):  # the draw of a single model with generator g
                torch.randn(shape, generator=g, device=like.device, dtype=like.dtype, out=xi[k])
            return xi
        return torch.randn((K, *shape), generator=generator, device=like.device, dtype=like.dtype, out=xi)

    def forward(
        self,
        u: Tensor,
        noise: bool = True,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        return_states: bool = False,
        noise_sample: Tensor | None = None,
        workspace: dict | None = None,
    ) -> RNNOutput:
        """Run every member on the shared inputs ``u`` ``[B, T, C]``; rates ``[K, B, T, n]``.

        ``noise_sample``: ``[K, B, T, n]`` (member ``k``'s is what a single model takes);
        ``workspace``: a dict in which the large buffers are kept from call to call (see
        :class:`FusedEnsembleRecurrence`: the results are then overwritten by the next call).
        """
        if u.dim() != 3 or u.shape[-1] != self.n_inputs:
            raise ValueError(f"inputs must be [batch, time, {self.n_inputs}], got {tuple(u.shape)}")
        K, n = self.size, self.n_units
        B, T = u.shape[0], u.shape[1]
        f = self.member_factors()
        alpha = f["alpha"]  # [K, n]
        w_in_t = (f["W_in"] * alpha[..., None]).transpose(1, 2)  # [K, d, n]
        a_bias = alpha * f["bias"]  # [K, n]
        u_tm = u.transpose(0, 1)  # [T, B, C]
        lin = tab = inv = bias = None
        if "qa" in f:  # attention: W_in folded into the value maps; evaluated once per distinct input row
            rows = u_tm.reshape(T * B, -1)
            seen = self._repeated_inputs.lookup(rows, u)
            uniq = rows if seen is None else seen[0]
            tab = torch.stack([
                attention_pool(uniq, f["qa"][k], f["qb"][k], f["vab"][k] @ w_in_t[k], a_bias[k]) for k in range(K)
            ])  # [K, U, n]: the distinct rows (looked up by inv), or every row ([K, T, B, n])
            if seen is None:
                tab = tab.view(K, T, B, n)
            else:
                inv = seen[1].view(T, B)
        else:  # linear: u[t] @ (alpha W_in)^T + alpha b, inside the recurrence
            lin, bias = u_tm.contiguous(), a_bias
        xi = coef = None
        if noise and self.noise_scale > 0:
            xi = self._noise(noise_sample, generator, (B, T, n), alpha, workspace)  # [K, B, T, n]
            coef = self.noise_scale * alpha.sqrt()
        decay = 1.0 - alpha
        w_t = (f["W_rec"] * alpha[..., None]).transpose(1, 2)  # r @ w_t[k] == alpha_k * (W_rec_k r)
        h0 = f["h0"].to(alpha.dtype).expand(K, n)
        args = (lin, None if lin is None else w_in_t, tab, inv, bias, xi, coef, w_t, decay, f["scale"], f["base"], h0)
        if self.recurrence_impl == "fused":
            need_backward = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
            rates_tm, states_tm = FusedEnsembleRecurrence.apply(workspace, *args, bool(return_states), need_backward)
        else:
            rates_tm, states_tm = ensemble_recurrence_reference(*args, return_states=bool(return_states))
        rates = rates_tm.permute(1, 2, 0, 3)  # [K, B, T, n] view
        states = None if states_tm is None else states_tm.permute(1, 2, 0, 3)
        outputs = None
        if self.n_outputs > 0:
            exc = self.net.exc_index
            w_full = f["W_out"].new_zeros((K, self.n_outputs, n)).index_copy(2, exc, f["W_out"])
            outputs = torch.einsum("tkbn,kon->kbto", rates_tm, w_full) + f["b_out"][:, None, None, :]
        return RNNOutput(rates, outputs, states)
