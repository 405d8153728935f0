"""Learning-rate warmup and the non-finite step guard (eirnn/training/lr_warmup.py, FitModule)."""
from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import tiny_overrides
from eirnn.training.lr_warmup import grads_finite, scaled_lr, step_unless_nonfinite, warmup_factor

# one full-batch optimiser step per epoch (debug=fast), tiny network
TINY = tiny_overrides("data.synthetic.n_trials=60", "model.n_hidden=6", "callbacks.figures=null",
                      drop=("data.synthetic.n_time", "trainer.max_epochs"))


def test_warmup_factor_is_a_linear_ramp():
    assert [warmup_factor(k, 4) for k in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_factor(0, 0) == 1.0 and warmup_factor(7, -1) == 1.0


def test_scaled_lr_restores_the_learning_rate_even_on_error():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([p], lr=0.5)
    p.grad = torch.ones(2)
    with scaled_lr(opt, 0.1):
        assert opt.param_groups[0]["lr"] == pytest.approx(0.05)
        opt.step()
    assert opt.param_groups[0]["lr"] == 0.5
    assert torch.allclose(p.detach(), torch.full((2,), -0.05))
    with pytest.raises(RuntimeError):
        with scaled_lr(opt, 0.2):
            raise RuntimeError("boom")
    assert opt.param_groups[0]["lr"] == 0.5


def test_grads_finite():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    a.grad = torch.ones(2)
    assert grads_finite([a, b])  # b has no gradient
    b.grad = torch.tensor([0.0, math.inf, 1.0])
    assert not grads_finite([a, b])


def test_a_non_finite_step_is_undone_and_a_finite_one_is_plain_adam():
    torch.manual_seed(0)
    a, b = torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(2, 2))
    ref = [torch.nn.Parameter(a.detach().clone()), torch.nn.Parameter(b.detach().clone())]
    opt, opt_ref = torch.optim.Adam([a, b], lr=0.1), torch.optim.Adam(ref, lr=0.1)
    grads = [torch.randn(3), torch.randn(2, 2)]
    for p, g in zip([a, b], grads):
        p.grad = g.clone()
    for p, g in zip(ref, grads):
        p.grad = g.clone()
    assert bool(step_unless_nonfinite(opt, [a, b], opt.step))
    opt_ref.step()
    assert torch.equal(a, ref[0]) and torch.equal(b, ref[1])
    before = [a.detach().clone(), b.detach().clone()]
    moments = [opt.state[p]["exp_avg_sq"].clone() for p in (a, b)]
    a.grad, b.grad = torch.randn(3), torch.tensor([[1.0, math.nan], [0.0, 1.0]])
    assert not bool(step_unless_nonfinite(opt, [a, b], opt.step))
    assert torch.equal(a, before[0]) and torch.equal(b, before[1])  # both undone, not only b
    assert all(torch.equal(opt.state[p]["exp_avg_sq"], m) for p, m in zip((a, b), moments))
    fresh = torch.nn.Parameter(torch.ones(2))  # a state created by an undone step goes back to zeros
    opt2 = torch.optim.Adam([fresh], lr=0.1)
    fresh.grad = torch.tensor([math.inf, 1.0])
    step_unless_nonfinite(opt2, [fresh], opt2.step)
    assert torch.equal(fresh, torch.ones(2)) and not opt2.state[fresh]["exp_avg"].any()


def _initial_and_trained(compose, tmp_path, overrides):
    """Weights as built (same seed) and after training, plus the run's summary."""
    from eirnn.train import build_datamodule, build_model, train

    cfg = compose(TINY + overrides, tmp_path)
    init = {k: v.detach().clone() for k, v in build_model(cfg, build_datamodule(cfg)).state_dict().items()}
    summary = train(cfg)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    trained = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}
    # the spike readout is fitted after training (eirnn/models/readout.py), not moved by the optimiser
    init = {k: v for k, v in init.items() if not k.startswith("spike_readout.")}
    trained = {k: v for k, v in trained.items() if not k.startswith("spike_readout.")}
    return init, trained, summary


@pytest.mark.slow
@pytest.mark.parametrize("warmup,expected", [(10, 0.1), (0, 1.0)])
def test_first_adam_step_is_scaled_by_the_warmup(compose, tmp_path, warmup, expected):
    """Adam's first step moves a parameter by lr * g / (|g| + eps), i.e. by ~lr: with a
    10-step warmup the largest move of the first step is lr / 10."""
    lr = 5e-3
    init, trained, _ = _initial_and_trained(
        compose, tmp_path, [f"optim.lr={lr}", f"optim.warmup_steps={warmup}", "optim.grad_clip=0",
                            "trainer.max_epochs=1"])
    moves = [(trained[k] - v).abs().max().item() for k, v in init.items() if v.is_floating_point()]
    assert max(moves) == pytest.approx(lr * expected, rel=1e-3)


@pytest.mark.slow
def test_non_finite_gradients_skip_the_step_and_stop_as_diverged(compose, tmp_path, monkeypatch):
    from eirnn.training.objective import FitObjective

    real = FitObjective.neuron_term

    def poisoned(self, rates, target, mask):  # training steps get NaN gradients; validation is untouched
        value = real(self, rates, target, mask)
        return value + rates.sum() * float("nan") if torch.is_grad_enabled() else value

    from eirnn.train import build_datamodule, build_model, train
    from eirnn.training.module import FitModule

    monkeypatch.setattr(FitObjective, "neuron_term", poisoned)
    trained = {}
    monkeypatch.setattr(FitModule, "on_fit_end", lambda self: trained.update(
        {k: v.detach().clone() for k, v in self.model.state_dict().items()}), raising=False)
    cfg = compose(TINY + ["optim.max_skipped_steps=2", "trainer.max_epochs=3", "callbacks.early_stopping.patience=10"],
                  tmp_path)
    init = {k: v.detach().clone() for k, v in build_model(cfg, build_datamodule(cfg)).state_dict().items()}
    summary = train(cfg)
    assert trained
    for k, v in init.items():  # no update was applied
        assert torch.equal(trained[k], v), k
    assert summary["skipped_steps"] == 2
    assert "2 optimiser steps in a row had a non-finite gradient" in summary["diverged"]
    assert summary["epochs_trained"] == 2  # stopped after the second skipped step, not at max_epochs
    assert json.loads((tmp_path / "metrics.json").read_text())["diverged"] == summary["diverged"]
