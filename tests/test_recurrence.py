"""The fused kernels of the speed work: recurrence (BPTT by hand), attention pooling,
unrolled Sinkhorn, the E-only readout and the bits/spike factorial table.

Each fused path is checked against the plain autograd computation it replaces:
``torch.autograd.gradcheck`` in float64 on small sizes, and equal values/gradients at
float32 tolerance on realistic sizes.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from eirnn.models import EIRNN
from eirnn.models.embedding import AttentionEmbedding
from eirnn.models.fastops import AttentionPool, attention_pool
from eirnn.models.recurrence import FusedRecurrence, recurrence, recurrence_reference

REC = np.array([True] * 30 + [False] * 11)


def _rec_args(B, T, n, dtype=torch.float64, h0_batched=False, seed=0, gain=0.2):
    g = torch.Generator().manual_seed(seed)
    inp = torch.randn(B, T, n, generator=g, dtype=dtype)
    w_t = torch.randn(n, n, generator=g, dtype=dtype) * (gain / math.sqrt(n))
    decay = torch.rand(n, generator=g, dtype=dtype) * 0.4 + 0.2  # contracting: decay + s * gain < 1
    scale = torch.tensor(1.7, dtype=dtype)
    base = torch.tensor(0.3, dtype=dtype)
    h0 = torch.randn((B, n) if h0_batched else (n,), generator=g, dtype=dtype)
    return [t.requires_grad_() for t in (inp, w_t, decay, scale, base, h0)]


# ------------------------------------------------------------------------- recurrence


@pytest.mark.parametrize("h0_batched, states", [(False, False), (True, True)])
def test_fused_recurrence_gradcheck(h0_batched, states):
    args = _rec_args(2, 4, 3, h0_batched=h0_batched)
    if states:
        fn = lambda *a: recurrence(*a, return_states=True)  # noqa: E731
    else:
        fn = lambda *a: recurrence(*a)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, args)


def test_fused_recurrence_gradcheck_time_major_and_above_softplus_threshold():
    # drive large enough that some states exceed softplus' linear threshold (20)
    args = _rec_args(2, 3, 3, seed=4)
    with torch.no_grad():
        args[0].mul_(15.0).add_(10.0)
    fn = lambda *a: recurrence(*a, time_major=True)[0]  # noqa: E731
    x = recurrence(*args, time_major=True, return_states=True)[1]
    assert (x > 20).any() and (x < 20).any()
    assert torch.autograd.gradcheck(fn, args)


def test_fused_matches_autograd_loop_float32_realistic():
    B, T, n = 32, 60, 80
    args32 = [a.detach().float().requires_grad_() for a in _rec_args(B, T, n, seed=1)]
    g = torch.Generator().manual_seed(2)
    g_rates = torch.randn(B, T, n, generator=g)
    g_states = torch.randn(B, T, n, generator=g) * 0.1
    r1, x1 = recurrence(*args32, return_states=True)
    r2, x2 = recurrence_reference(*args32, return_states=True)
    torch.testing.assert_close(r1, r2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x1, x2, rtol=1e-5, atol=1e-5)
    gr1 = torch.autograd.grad((r1 * g_rates).sum() + (x1 * g_states).sum(), args32)
    gr2 = torch.autograd.grad((r2 * g_rates).sum() + (x2 * g_states).sum(), args32)
    for a, b in zip(gr1, gr2):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))


def test_fused_recurrence_only_requested_gradients():
    inp, w_t, decay, scale, base, h0 = _rec_args(2, 4, 3)
    decay = decay.detach()
    h0 = h0.detach()
    r, _ = recurrence(inp, w_t, decay, scale, base, h0)
    gi, gw = torch.autograd.grad(r.sum(), (inp, w_t))
    r2, _ = recurrence_reference(inp, w_t, decay, scale, base, h0)
    gi2, gw2 = torch.autograd.grad(r2.sum(), (inp, w_t))
    torch.testing.assert_close(gi, gi2)
    torch.testing.assert_close(gw, gw2)
    # states requested but only the rates used: the unused output gets no zero tensor
    r3, _ = recurrence(inp, w_t, decay, scale, base, h0, return_states=True)
    torch.testing.assert_close(torch.autograd.grad(r3.sum(), inp)[0], gi)


def test_fused_recurrence_is_one_autograd_node():
    inp, w_t, decay, scale, base, h0 = _rec_args(2, 50, 3)
    r, _ = recurrence(inp, w_t, decay, scale, base, h0, time_major=True)  # the node's own output
    assert type(r.grad_fn).__name__ == "FusedRecurrenceBackward"
    assert FusedRecurrence is not None


@pytest.mark.parametrize(
    "kw",
    [
        dict(input_embedding="attention", learnable_h0=True),
        dict(input_embedding="linear", learnable_tau="neuron"),
        dict(input_embedding="linear", rank=4, learnable_alpha="population"),
    ],
)
def test_model_fused_equals_autograd_impl(kw):
    models = [EIRNN(14, REC, n_hidden=39, seed=3, recurrence_impl=impl, **kw) for impl in ("autograd", "fused")]
    u = torch.rand(8, 30, 14, generator=torch.Generator().manual_seed(0))
    results = []
    for m in models:
        out = m(u, generator=torch.Generator().manual_seed(5), return_states=True)
        loss = out.rates[..., :41].pow(2).mean() + out.outputs.pow(2).mean() + out.states.mean()
        params = [p for p in m.parameters() if p.requires_grad]
        results.append((out, torch.autograd.grad(loss, params)))
    (o1, g1), (o2, g2) = results
    torch.testing.assert_close(o2.rates, o1.rates, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(o2.outputs, o1.outputs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(o2.states, o1.states, rtol=1e-5, atol=1e-5)
    for a, b in zip(g2, g1):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4 * float(b.abs().max()) + 1e-9)


def test_model_noise_follows_the_generator_in_both_impls():
    m = EIRNN(14, REC, n_hidden=5, seed=1)
    u = torch.rand(4, 30, 14)
    a = m(u, generator=torch.Generator().manual_seed(9)).rates
    b = m(u, generator=torch.Generator().manual_seed(9)).rates
    c = m(u, generator=torch.Generator().manual_seed(10)).rates
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_bad_recurrence_impl_is_rejected():
    with pytest.raises(ValueError, match="recurrence_impl"):
        EIRNN(14, REC, recurrence_impl="cuda_magic")


def test_readout_is_from_excitatory_units_only():
    m = EIRNN(14, REC, n_hidden=9, seed=2)
    out = m(torch.rand(3, 20, 14), noise=False)
    exc = m.is_excitatory
    expected = out.rates[..., exc] @ m.W_out.T + m.b_out
    torch.testing.assert_close(out.outputs, expected)


# ------------------------------------------------------------------ attention pooling


def _attention_einsum(emb: AttentionEmbedding, u: torch.Tensor) -> torch.Tensor:
    """The embedding written with einsum (the formulation the fused kernel replaces)."""
    weights, (va, vb) = emb.attention(u)
    h, dh = emb.n_heads, emb.d_head
    va, vb = va.view(-1, h, dh), vb.view(-1, h, dh)
    o = torch.einsum("...hc,chd->...hd", weights * u.unsqueeze(-2), va) + torch.einsum("...hc,chd->...hd", weights, vb)
    return o.reshape(*o.shape[:-2], h * dh) @ emb.W_O.T


def test_attention_pool_gradcheck_including_inputs_and_bias():
    g = torch.Generator().manual_seed(0)
    u = torch.rand(5, 4, generator=g, dtype=torch.float64).requires_grad_()
    qa = torch.randn(2, 4, generator=g, dtype=torch.float64).requires_grad_()
    qb = torch.randn(2, 4, generator=g, dtype=torch.float64).requires_grad_()
    vab = torch.randn(16, 3, generator=g, dtype=torch.float64).requires_grad_()
    bias = torch.randn(3, generator=g, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(AttentionPool.apply, (u, qa, qb, vab))
    assert torch.autograd.gradcheck(AttentionPool.apply, (u, qa, qb, vab, bias))


def test_repeated_input_rows_give_identical_rates_and_gradients():
    """Second and later calls on the same input tensor evaluate the drive once per distinct row."""
    import copy

    m = EIRNN(14, REC, n_hidden=9, seed=4, input_embedding="attention", learnable_h0=True)
    m_plain = copy.deepcopy(m)
    u = torch.rand(6, 40, 14)
    u[:, 10:] = u[:, 10:11]  # long constant stretches: many repeated rows
    params = [p for p in m.parameters() if p.requires_grad]
    params_plain = [p for p in m_plain.parameters() if p.requires_grad]
    for call in range(3):
        out = m(u, generator=torch.Generator().manual_seed(1))
        ref = m_plain(u.clone(), generator=torch.Generator().manual_seed(1))  # a new tensor each call: no reuse
        assert torch.equal(out.rates, ref.rates)
        g1 = torch.autograd.grad(out.rates.square().mean() + out.outputs.square().mean(), params)
        g2 = torch.autograd.grad(ref.rates.square().mean() + ref.outputs.square().mean(), params_plain)
        for a, b in zip(g1, g2):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))
    result = m._repeated_inputs._seen[0][2]
    assert result and result[0].shape[0] < 0.6 * u.shape[0] * u.shape[1]
    u.add_(0.0)  # in-place change: the cache entry no longer applies
    assert m._repeated_inputs.lookup(u.transpose(0, 1).reshape(-1, 14), u) is None


def test_attention_embedding_matches_einsum_formulation():
    emb = AttentionEmbedding(14, 56, 4, generator=torch.Generator().manual_seed(1))
    u = torch.rand(30, 11, 14, generator=torch.Generator().manual_seed(2)) * 3.0
    g_out = torch.randn(30, 11, 56)
    params = list(emb.parameters())
    e1, e2 = emb(u), _attention_einsum(emb, u)
    torch.testing.assert_close(e1, e2, rtol=1e-5, atol=1e-6)
    for a, b in zip(torch.autograd.grad(e1, params, g_out), torch.autograd.grad(e2, params, g_out)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))
    assert attention_pool is not None


# -------------------------------------------------------------------------- Sinkhorn


def _sinkhorn_autograd(cost, eps, n_iters, a=None, b=None):
    """The unrolled log-domain iterations recorded by autograd (the replaced formulation)."""
    n, m = cost.shape[-2:]
    log_a = torch.full((n,), -math.log(n), dtype=cost.dtype) if a is None else torch.log(a)
    log_b = torch.full((m,), -math.log(m), dtype=cost.dtype) if b is None else torch.log(b)
    log_k = -cost / eps
    f = torch.zeros(cost.shape[:-1], dtype=cost.dtype)
    g = torch.zeros(cost.shape[:-2] + (m,), dtype=cost.dtype)
    for _ in range(n_iters):
        g = log_b - torch.logsumexp(log_k + f.unsqueeze(-1), dim=-2)
        f = log_a - torch.logsumexp(log_k + g.unsqueeze(-2), dim=-1)
    return torch.exp(log_k + f.unsqueeze(-1) + g.unsqueeze(-2))


def test_sinkhorn_unrolled_matches_autograd_float32_wide_costs():
    from eirnn.losses.sinkhorn import sinkhorn_log

    # costs / eps spread over hundreds: most kernel entries underflow in float32
    cost = (torch.rand(120, 100, generator=torch.Generator().manual_seed(0)) * 30 + 10).requires_grad_()
    p1, p2 = sinkhorn_log(cost, 0.1, 20), _sinkhorn_autograd(cost, 0.1, 20)
    assert type(p1.grad_fn).__name__ == "SinkhornUnrolledBackward"
    torch.testing.assert_close(p1, p2, rtol=1e-5, atol=1e-9)
    g1 = torch.autograd.grad((p1 * cost).sum(), cost)[0]
    g2 = torch.autograd.grad((p2 * cost).sum(), cost)[0]
    torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-5 * float(g2.abs().max()))
    # both float32 gradients are as close to the float64 one (round-off of the unrolled iterations)
    c64 = cost.detach().double().requires_grad_()
    g64 = torch.autograd.grad((_sinkhorn_autograd(c64, 0.1, 20) * c64).sum(), c64)[0]
    err_fused, err_autograd = (g1.double() - g64).abs().max(), (g2.double() - g64).abs().max()
    assert err_fused <= 1.5 * err_autograd + 1e-9 * float(g64.abs().max())


def test_sinkhorn_unrolled_matches_autograd_float64_batched_zero_mass():
    from eirnn.losses.sinkhorn import sinkhorn_log

    cost = torch.rand(2, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3)).requires_grad_()
    a = torch.tensor([0.25, 0.25, 0.0, 0.25, 0.25], dtype=torch.float64)
    b = torch.full((6,), 1 / 6, dtype=torch.float64)
    p1, p2 = sinkhorn_log(cost, 0.2, 9, a=a, b=b), _sinkhorn_autograd(cost, 0.2, 9, a=a, b=b)
    assert torch.all(p1[:, 2] == 0)
    torch.testing.assert_close(p1, p2, rtol=1e-12, atol=1e-14)
    w = torch.randn(2, 5, 6, dtype=torch.float64)
    g1 = torch.autograd.grad((p1 * w).sum(), cost)[0]
    g2 = torch.autograd.grad((p2 * w).sum(), cost)[0]
    torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-12)


def test_trial_loss_gradient_matches_autograd_sinkhorn(monkeypatch):
    from eirnn.losses import trial as trial_mod

    g = torch.Generator().manual_seed(4)
    rates = (torch.rand(40, 30, 6, generator=g) * 20).requires_grad_()
    target = torch.rand(40, 30, 6, generator=g) * 20
    mask = torch.ones(40, 30, 6, dtype=torch.bool)
    mask[3, 20:] = False
    l1 = trial_mod.trial_loss(rates, target, mask)
    g1 = torch.autograd.grad(l1, rates)[0]
    monkeypatch.setattr(trial_mod, "sinkhorn_log", lambda c, e, n, a=None, b=None: _sinkhorn_autograd(c, e, n, a, b))
    l2 = trial_mod.trial_loss(rates, target, mask)
    g2 = torch.autograd.grad(l2, rates)[0]
    torch.testing.assert_close(l1, l2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-5 * float(g2.abs().max()))


# ------------------------------------------------------------------------ bits/spike


def test_bits_per_spike_equals_the_full_log_likelihood_difference():
    """The lgamma(k+1) terms cancel in LL - LL0: the metric equals the formula with them."""
    from scipy.special import gammaln

    from eirnn.metrics import bits_per_spike, bits_per_spike_per_neuron

    rng = np.random.default_rng(0)
    model, target = rng.random((9, 13, 5)) * 40, rng.random((9, 13, 5)) * 40
    mask = rng.random((9, 13, 5)) > 0.2
    k = np.where(mask, np.round(target * 0.025), 0.0)
    lam = np.maximum(model * 0.025, 1e-9)
    lam0 = np.maximum(k.sum((0, 1)) / np.maximum(mask.sum((0, 1)), 1), 1e-9)
    ll = np.where(mask, k * np.log(lam) - lam - gammaln(k + 1), 0).sum((0, 1))
    ll0 = np.where(mask, k * np.log(lam0) - lam0 - gammaln(k + 1), 0).sum((0, 1))
    expected = (ll - ll0) / (k.sum((0, 1)) * np.log(2))
    np.testing.assert_allclose(bits_per_spike_per_neuron(model, target, mask), expected, rtol=1e-10)
    np.testing.assert_allclose(bits_per_spike(model, target, mask), (ll - ll0).sum() / (k.sum() * np.log(2)), rtol=1e-10)
