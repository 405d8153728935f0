"""The balancer's arithmetic against gradients computed by hand."""
import pytest
import torch

from eirnn.training.balancer import GradientBalancer


def _setup():
    torch.manual_seed(0)
    w1 = torch.nn.Parameter(torch.randn(3, 4))
    w2 = torch.nn.Parameter(torch.randn(4))
    x = torch.randn(5, 3)
    out = torch.tanh(x @ w1) * w2  # [5, 4] "model output"
    main = (out ** 2).mean()
    aux = 100.0 * (out.sum(0) - 1.0).pow(2).sum()  # much larger scale than main
    extra = 0.01 * (w1 ** 2).sum()
    return [w1, w2], out, main, aux, extra


def _grads(loss, params):
    gs = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, gs)]


def _norm(gs):
    return torch.sqrt(sum((g ** 2).sum() for g in gs))


def test_param_mode_matches_formula():
    params, out, main, aux, extra = _setup()
    gm, ga, ge = _grads(main, params), _grads(aux, params), _grads(extra, params)
    w = 0.5 * _norm(gm) / _norm(ga)
    stats = GradientBalancer("param", scale=0.5).backward(params, main, aux, extra)
    assert stats["weight"].item() == pytest.approx(w.item(), rel=1e-6)
    for p, a, b, c in zip(params, gm, ga, ge):
        torch.testing.assert_close(p.grad, a + w * b + c)
    # the balanced auxiliary gradient has exactly `scale` times the main gradient's norm
    assert _norm([w * b for b in ga]).item() == pytest.approx(0.5 * _norm(gm).item(), rel=1e-6)


def test_output_mode_balances_output_gradients_and_backprops_once():
    params, out, main, aux, extra = _setup()
    go_m = torch.autograd.grad(main, out, retain_graph=True)[0]
    go_a = torch.autograd.grad(aux, out, retain_graph=True)[0]
    w = 0.25 * go_m.norm() / go_a.norm()
    expected = torch.autograd.grad((out * (go_m + w * go_a)).sum() + extra, params, retain_graph=True)
    stats = GradientBalancer("output", scale=0.25).backward(params, main, aux, extra, outputs=out)
    assert stats["weight"].item() == pytest.approx(w.item(), rel=1e-6)
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.grad, e)


def test_fixed_and_off_modes():
    params, out, main, aux, extra = _setup()
    expected = _grads(main + 0.3 * aux + extra, params)
    GradientBalancer("fixed", lambda_fixed=0.3).backward(params, main, aux, extra)
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.grad, e)
    params, out, main, aux, extra = _setup()
    expected = _grads(main + extra, params)
    stats = GradientBalancer("param").backward(params, main, None, extra)  # aux None -> off
    assert stats["weight"].item() == 0.0
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.grad, e)


def test_vanishing_aux_gradient_gives_zero_weight():
    params, out, main, aux, extra = _setup()
    zero_aux = (out * 0.0).sum()
    stats = GradientBalancer("param").backward(params, main, zero_aux, None)
    assert stats["weight"].item() == 0.0
    assert all(torch.isfinite(p.grad).all() for p in params)


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="balance.mode"):
        GradientBalancer("sometimes")


# ------------------------------------------------ param mode: one reverse sweep, two cotangents

def _rnn_losses(model, u, seed=1):
    import numpy as np  # noqa: F401

    from eirnn.training.objective import FitObjective

    g = torch.Generator().manual_seed(seed)
    out = model(u, generator=g)
    rec = out.rates[..., : model.n_recorded]
    target = torch.rand(rec.shape, generator=torch.Generator().manual_seed(2)) * 20
    mask = torch.ones(rec.shape, dtype=torch.bool)
    mask[1, 25:] = False
    obj = FitObjective()
    main, aux = obj.neuron_term(rec, target, mask), obj.trial_term(rec, target, mask)
    extra = sum(obj.extra_term(model, out.rates, mask).values())
    return rec, main, aux, extra


@pytest.mark.parametrize("kw", [dict(input_embedding="attention", learnable_h0=True),
                                dict(input_embedding="linear", learnable_tau="neuron"),
                                dict(input_embedding="linear", rank=3, learnable_alpha="population")])
def test_param_mode_one_sweep_equals_two_backward_passes(kw):
    """With `outputs` the rates of the fused recurrence, param mode computes both parameter
    gradients in one reverse sweep: the same gradients, norms and weight as two autograd passes."""
    import numpy as np

    from eirnn.models import EIRNN
    from eirnn.models.recurrence import supports_output_vjp

    model = EIRNN(14, np.array([True] * 7 + [False] * 3), n_hidden=6, seed=3, embed_dim=8, n_heads=2, **kw)
    u = torch.rand(12, 30, 14, generator=torch.Generator().manual_seed(0))
    u[:, 12:, :6] = 0.0  # repeated rows: the second call looks the drive up per distinct row
    params = [p for p in model.parameters() if p.requires_grad]
    for call in range(2):
        results = []
        for one_sweep in (True, False):
            rec, main, aux, extra = _rnn_losses(model, u)
            assert supports_output_vjp(rec)
            stats = GradientBalancer("param", scale=0.5).backward(params, main, aux, extra,
                                                                  outputs=rec if one_sweep else None)
            results.append((stats, [None if p.grad is None else p.grad.clone() for p in params]))
        (s1, g1), (s2, g2) = results
        for key in ("weight", "grad_norm_main", "grad_norm_aux"):
            torch.testing.assert_close(s1[key], s2[key], rtol=1e-5, atol=0)
        for a, b in zip(g1, g2):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6 * float(b.abs().max()) + 1e-12)


def test_output_vjp_float64_matches_autograd_and_rejects_other_tensors():
    import numpy as np

    from eirnn.models import EIRNN
    from eirnn.models.recurrence import output_vjp, supports_output_vjp

    model = EIRNN(14, np.array([True] * 5 + [False] * 2), n_hidden=4, seed=1, embed_dim=8, n_heads=2,
                  input_embedding="attention", learnable_h0=True).double()
    u = torch.rand(5, 9, 14, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = model(u, generator=torch.Generator().manual_seed(1), return_states=True)
    views = {"recorded": out.rates[..., :7], "strided": out.rates[1:, ::2, 2:6], "all": out.rates}
    params = [p for p in model.parameters() if p.requires_grad]
    g = torch.Generator().manual_seed(3)
    for name, view in views.items():
        cots = [torch.randn(view.shape, dtype=torch.float64, generator=g) for _ in range(3)]
        inputs, per_k = output_vjp(view, cots)
        for c, grads in zip(cots, per_k):
            ours = torch.autograd.grad(inputs, params, grads, retain_graph=True, allow_unused=True)
            ref = torch.autograd.grad(view, params, c, retain_graph=True, allow_unused=True)
            for a, b in zip(ours, ref):
                assert (a is None) == (b is None), name
                if a is not None:
                    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert not supports_output_vjp(out.rates * 1.0)  # not a view of the rates
    assert not supports_output_vjp(out.states)  # the states are another output
    assert not supports_output_vjp(out.rates.detach())
