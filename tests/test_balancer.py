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
