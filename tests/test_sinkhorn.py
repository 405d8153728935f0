"""Log-domain Sinkhorn against POT's ``ot.sinkhorn(..., method="sinkhorn_log")``."""

import numpy as np
import pytest
import torch

ot = pytest.importorskip("ot")

from eirnn.losses.sinkhorn import sinkhorn_log  # noqa: E402

SHAPES = [(5, 5), (7, 4), (3, 9), (12, 10)]
EPSILONS = [0.05, 0.2, 1.0]


def _pot(cost, eps, n_iter, stop, a=None, b=None, log=False):
    n, m = cost.shape
    a = np.full(n, 1.0 / n) if a is None else a
    b = np.full(m, 1.0 / m) if b is None else b
    return ot.sinkhorn(
        a, b, cost, eps, method="sinkhorn_log", numItermax=n_iter, stopThr=stop, warn=False, log=log
    )


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("eps", EPSILONS)
def test_matches_pot_at_convergence(shape, eps):
    rng = np.random.default_rng(hash((shape, eps)) % 2**32)
    cost = rng.random(shape)
    ref = _pot(cost, eps, 100_000, 1e-12)
    plan = sinkhorn_log(torch.tensor(cost), eps, n_iters=100_000, tol=1e-12).numpy()
    np.testing.assert_allclose(plan, ref, atol=1e-6, rtol=0)
    np.testing.assert_allclose(plan.sum(1), np.full(shape[0], 1 / shape[0]), atol=1e-12)
    np.testing.assert_allclose(plan.sum(0), np.full(shape[1], 1 / shape[1]), atol=1e-10)


def test_matches_pot_nonuniform_marginals():
    rng = np.random.default_rng(3)
    cost = rng.random((6, 8))
    a = rng.random(6) + 0.1
    b = rng.random(8) + 0.1
    a, b = a / a.sum(), b / b.sum()
    ref = _pot(cost, 0.1, 100_000, 1e-13, a, b)
    plan = sinkhorn_log(torch.tensor(cost), 0.1, 100_000, torch.tensor(a), torch.tensor(b), tol=1e-13)
    np.testing.assert_allclose(plan.numpy(), ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("n_iters", [1, 7, 20])
@pytest.mark.parametrize("shape", [(5, 5), (4, 9)])
def test_fixed_iterations_match_pot(n_iters, shape):
    # With stopThr=0 POT performs exactly numItermax (v, u) updates.
    rng = np.random.default_rng(n_iters)
    cost = rng.random(shape) * 3.0
    ref = _pot(cost, 0.1, n_iters, 0.0)
    plan = sinkhorn_log(torch.tensor(cost), 0.1, n_iters=n_iters).numpy()
    np.testing.assert_allclose(plan, ref, atol=1e-12, rtol=1e-10)


def test_tol_stops_at_same_iteration_as_pot():
    rng = np.random.default_rng(11)
    cost = rng.random((6, 5))
    ref, log = _pot(cost, 0.05, 10_000, 1e-4, log=True)
    assert log["niter"] < 10_000 - 1  # POT stopped early
    plan = sinkhorn_log(torch.tensor(cost), 0.05, n_iters=10_000, tol=1e-4).numpy()
    np.testing.assert_allclose(plan, ref, atol=1e-12, rtol=1e-10)


def test_batched_equals_loop():
    torch.manual_seed(0)
    cost = torch.rand(3, 4, 6, dtype=torch.float64)
    plan = sinkhorn_log(cost, 0.2, n_iters=15)
    assert plan.shape == (3, 4, 6)
    for k in range(3):
        torch.testing.assert_close(plan[k], sinkhorn_log(cost[k], 0.2, n_iters=15))


def test_zero_mass_row_is_empty():
    cost = torch.rand(4, 4, dtype=torch.float64)
    a = torch.tensor([1 / 3, 1 / 3, 0.0, 1 / 3], dtype=torch.float64)
    plan = sinkhorn_log(cost, 0.1, n_iters=50, a=a, b=torch.full((4,), 0.25, dtype=torch.float64))
    assert torch.all(plan[2] == 0)
    assert torch.isfinite(plan).all()


def test_gradcheck_unrolled():
    torch.manual_seed(1)
    cost = torch.rand(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda c: sinkhorn_log(c, 0.3, n_iters=10), (cost,))
    assert torch.autograd.gradcheck(lambda c: (sinkhorn_log(c, 0.3, n_iters=10) * c).sum(), (cost,))


def test_gradient_finite_small_epsilon_float32():
    torch.manual_seed(2)
    cost = (torch.rand(16, 16) * 20).requires_grad_()
    (sinkhorn_log(cost, 0.01, n_iters=20) * cost).sum().backward()
    assert torch.isfinite(cost.grad).all()


def test_input_errors():
    with pytest.raises(ValueError):
        sinkhorn_log(torch.rand(5), 0.1)
    with pytest.raises(ValueError):
        sinkhorn_log(torch.rand(3, 3), 0.0)
    with pytest.raises(ValueError):
        sinkhorn_log(torch.rand(3, 3), 0.1, n_iters=0)
    with pytest.raises(ValueError):
        sinkhorn_log(torch.rand(3, 4), 0.1, a=torch.full((4,), 0.25))
