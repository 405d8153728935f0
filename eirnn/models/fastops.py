"""Fused kernels (autograd Functions with hand-written backward) for hot spots of the fit.

:class:`AttentionPool` -- the core of :class:`~eirnn.models.embedding.AttentionEmbedding`
for ``N`` time points at once. With inputs ``u`` ``[N, C]``, per-head score coefficients
``qa``, ``qb`` ``[H, C]`` and the stacked value maps ``vab`` ``[2 H C, d]``::

    s[n, h, c]  = u[n, c] * qa[h, c] + qb[h, c]
    w[n, h, :]  = softmax_c(s[n, h, :])
    e[n]        = [w[n] * u[n] | w[n]] @ vab (+ bias)  # ([N, 2 H C] @ [2 H C, d])

Backward (``ge = dL/de``)::

    [g_wu | g_w'] = ge @ vab^T;   g_w = g_w' + g_wu * u
    g_s  = w * (g_w - sum_c(g_w * w))
    dqa  = sum_n g_s * u,   dqb = sum_n g_s,   dvab = [w * u | w]^T @ ge
    du   = sum_h (g_s * qa + g_wu * w)

The element-wise work is done channel-major, on ``[H, C, N]`` arrays with the ``N`` time
points contiguous: PyTorch's softmax and reductions over a last dimension of ~14 channels
are slow on CPU (a few times slower than ``exp`` of the same tensor), whereas reductions
over ``C`` of ``[H, C, N]`` run along contiguous rows of ``N`` values. The two value
products are one matrix product ``[2HC, N]^T @ [2HC, d]``. :func:`attention_pool_vjp` runs
the backward for several cotangents of the same forward at once (``dvab`` for all of them
in one product; used by the parameter-space balancer, see
:func:`eirnn.models.recurrence.output_vjp`).
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["AttentionPool", "attention_pool", "attention_pool_vjp", "attention_node"]


def _bc(t: Tensor, shape) -> Tensor:
    return t.expand(shape)  # explicit expand: faster element-wise kernels than implicit broadcasting


def _sum_channels(x: Tensor) -> Tensor:
    """``x.sum(1, keepdim=True)`` for ``[H, C, N]``, summed in channel order for every ``n`` (so a
    time point's value does not depend on ``N`` or its position: the drive of a repeated input row
    is bitwise the same whether evaluated once or in place)."""
    out = x[:, 0].clone()
    for c in range(1, x.shape[1]):
        out.add_(x[:, c])
    return out.unsqueeze(1)


class AttentionPool(torch.autograd.Function):
    """``(u [N, C], qa [H, C], qb [H, C], vab [2HC, d], bias [d] or None) -> e [N, d]``; see the module docstring."""

    @staticmethod
    def forward(ctx, u, qa, qb, vab, bias=None):
        N, C = u.shape
        H = qa.shape[0]
        shp = (H, C, N)
        with torch.no_grad():
            ut = u.t().contiguous()  # [C, N]
            ww = u.new_empty((2, H, C, N))  # [0] = w * u, [1] = w (channel-major)
            w = ww[1]
            torch.mul(_bc(ut.unsqueeze(0), shp), _bc(qa.unsqueeze(-1), shp), out=w)
            w.add_(_bc(qb.unsqueeze(-1), shp))
            w.sub_(_bc(w.amax(1, keepdim=True), shp))
            w.exp_()
            w.div_(_bc(_sum_channels(w), shp))
            torch.mul(w, _bc(ut.unsqueeze(0), shp), out=ww[0])
            wwf = ww.view(2 * H * C, N)
            e = wwf.t() @ vab if bias is None else torch.addmm(bias, wwf.t(), vab)
        ctx.save_for_backward(ut, ww, vab, qa)
        ctx.has_bias = bias is not None
        ctx.vjp_inputs = (u, qa, qb, vab, bias)  # for attention_pool_vjp
        return e

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, ge):
        needs = tuple(ctx.needs_input_grad[:4]) + (ctx.has_bias and ctx.needs_input_grad[4],)
        grads = _backward(ctx.saved_tensors, ge.unsqueeze(1), needs)
        out = tuple(None if g is None else g[0] for g in grads)
        return out[: len(ctx.needs_input_grad)]


def _backward(saved, ge: Tensor, needs) -> list[Tensor | None]:
    """Gradients for ``K`` cotangents ``ge`` ``[N, K, d]`` (any strides): per input of the forward,
    a tensor with a leading ``K`` axis (``None`` when not needed)."""
    ut, ww, vab, qa = saved
    _, H, C, N = ww.shape
    K, d = ge.shape[1], ge.shape[2]
    need_u, need_qa, need_qb, need_vab, need_bias = needs
    shp = (H, C, N)
    wwf = ww.view(2 * H * C, N)
    g_u = g_qa = g_qb = g_vab = g_bias = None
    if need_vab:  # [2HC, N] @ [N, K d]: every cotangent in one product
        gef = ge.reshape(N, K * d)
        g_vab = (wwf @ gef).view(2 * H * C, K, d).transpose(0, 1)
    if need_bias:
        g_bias = ge.sum(0)
    if need_u or need_qa or need_qb:
        w = ww[1]
        ub = _bc(ut.unsqueeze(0), shp)
        lists = {"u": [], "qa": [], "qb": []}
        for k in range(K):
            gww = torch.mm(vab, ge[:, k].t()).view(2, H, C, N)
            g_wu = gww[0]
            g_w = gww[1].addcmul_(g_wu, ub)  # dL/dw
            g_s = g_w.sub_(_bc((g_w * w).sum(1, keepdim=True), shp)).mul_(w)
            if need_qb:
                lists["qb"].append(g_s.sum(-1))
            if need_qa:
                lists["qa"].append(torch.bmm(g_s.transpose(0, 1), ut.unsqueeze(-1)).squeeze(-1).t())  # sum_n g_s * u
            if need_u:  # sum_h (g_s * qa + g_wu * w); g_wu still holds dL/d(w u)
                gu = (g_wu.mul_(w).add_(g_s.mul_(_bc(qa.unsqueeze(-1), shp)))).sum(0)  # [C, N]
                lists["u"].append(gu.t())
        g_u = torch.stack(lists["u"]) if need_u else None
        g_qa = torch.stack(lists["qa"]) if need_qa else None
        g_qb = torch.stack(lists["qb"]) if need_qb else None
    return [g_u, g_qa, g_qb, g_vab, g_bias]


def attention_node(e: Tensor):
    """The :class:`AttentionPool` node whose output ``e`` is (directly or through one ``view``), else ``None``."""
    node = e.grad_fn
    if node is not None and type(node).__name__ == "ViewBackward0":
        node = node.next_functions[0][0]
    if node is None or type(node).__name__ != "AttentionPoolBackward" or not hasattr(node, "vjp_inputs"):
        return None
    return node


def attention_pool_vjp(node, ge: Tensor):
    """Backward of :class:`AttentionPool` for ``K`` cotangents at once.

    ``node``: the forward's autograd node (:func:`attention_node`); ``ge`` ``[N, K, d]`` (any
    strides). Returns ``(inputs, grads)``: the forward's inputs that need a gradient and, per
    cotangent, the list of their gradients.
    """
    tensors = node.vjp_inputs
    needs = tuple(bool(t is not None and t.requires_grad) for t in tensors)
    with torch.no_grad():
        grads = _backward(node.saved_tensors, ge, needs)
    names = [i for i, g in enumerate(grads) if g is not None]
    return [tensors[i] for i in names], [[grads[i][k] for i in names] for k in range(ge.shape[1])]


def attention_pool(u: Tensor, qa: Tensor, qb: Tensor, vab: Tensor, bias: Tensor | None = None) -> Tensor:
    """``e = [softmax(u*qa+qb) * u | softmax(u*qa+qb)] @ vab (+ bias)`` for ``u`` ``[..., C]`` -> ``[..., d]``."""
    lead = u.shape[:-1]
    e = AttentionPool.apply(u.reshape(-1, u.shape[-1]), qa, qb, vab, bias)
    return e.view(*lead, e.shape[-1])


class RepeatedRows:
    """Unique rows of a repeatedly seen input tensor, for computing a row-wise map once per row.

    The input drive of a fit depends on the task inputs ``u[b, t]`` (``C`` channels) only,
    and the same ``[B, T, C]`` tensor is fed at every epoch (full-batch training, fixed
    validation set) while many of its rows repeat (a fixation-only input is the same vector
    in thousands of bins). :meth:`lookup` returns ``(unique_rows [U, C], inverse [N])`` with
    ``rows == unique_rows[inverse]`` for a tensor seen before (the *same* tensor object,
    unmodified: its version counter is checked), so a row-wise function ``f`` can be
    evaluated as ``f(unique_rows)[inverse]``: identical values, ``U / N`` of the work.

    Policy: a tensor is only recorded the first time it is seen; the unique rows are computed
    (one ``torch.unique``) the second time, and kept only when ``U <= max_fraction * N``.
    At most ``capacity`` tensors are remembered (strong references, so an ``id`` cannot be
    reused while cached). CPU tensors only: on a GPU ``torch.unique`` would synchronise the
    host with the device.
    """

    def __init__(self, capacity: int = 4, max_fraction: float = 0.6):
        self.capacity, self.max_fraction = int(capacity), float(max_fraction)
        self._seen: list[tuple] = []  # (tensor, version, result or None or False)

    def lookup(self, rows: Tensor, key: Tensor) -> tuple[Tensor, Tensor] | None:
        """``rows`` ``[N, C]`` derived from ``key`` (the tensor whose identity is cached)."""
        if key.requires_grad:  # gradients w.r.t. the inputs need every row
            return None
        if rows.device.type != "cpu":  # torch.unique waits for the device (a data-dependent size); on a
            return None  # GPU the drive of every row costs less than that synchronisation
        for i, (t, version, result) in enumerate(self._seen):
            if t is key and version == key._version:
                if result is None:  # second sighting: compute
                    uniq, inv = torch.unique(rows, dim=0, return_inverse=True)
                    result = (uniq, inv) if uniq.shape[0] <= self.max_fraction * rows.shape[0] else False
                    self._seen[i] = (t, version, result)
                return result or None
        self._seen.append((key, key._version, None))
        if len(self._seen) > self.capacity:
            self._seen.pop(0)
        return None

    def clear(self) -> None:
        self._seen.clear()
