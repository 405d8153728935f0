"""Issue 15: training options that ask for conditions (batches, L_neuron, L_trial, reward-context
input, monitor), each checked against a hand computation or the option being off."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from eirnn.data.datamodule import TrialBatchLoader, add_input_channels, condition_grouped_order
from eirnn.losses import condition_neuron_loss_terms, neuron_loss_terms, trial_loss
from eirnn.training.objective import FitObjective


def test_condition_grouped_order_keeps_conditions_together():
    cond = np.array([2, 0, 1, 2, 0, 1, 2, 0, 2])
    order = condition_grouped_order(cond, seed=3)
    assert sorted(order.tolist()) == list(range(cond.size))
    runs = [cond[order][0]] + [c for a, c in zip(cond[order][:-1], cond[order][1:]) if c != a]
    assert sorted(runs) == [0, 1, 2]  # each condition is one contiguous run
    np.testing.assert_array_equal(order, condition_grouped_order(cond, seed=3))
    loader = TrialBatchLoader({"x": torch.arange(9), "condition": torch.as_tensor(cond)}, 4, shuffle=True,
                              mode="condition")
    seen = torch.cat([b["x"] for b in loader])
    assert sorted(seen.tolist()) == list(range(9)) and len(loader) == 3
    with pytest.raises(ValueError):
        TrialBatchLoader({"x": torch.arange(3)}, 2, mode="condition")
    with pytest.raises(ValueError):
        TrialBatchLoader({"x": torch.arange(3)}, 2, mode="nope")


def test_reward_context_channel_off_is_exact_and_on_appends_reward():
    from eirnn.data import make_synthetic_session, session_to_tensors

    s = make_synthetic_session(n_trials=12, n_time=20, n_exc=3, n_inh=2, seed=1)
    base = session_to_tensors(s)
    off = add_input_channels(session_to_tensors(s), s, {"reward_context": False})
    assert off["inputs"].shape[-1] == 14 and torch.equal(off["inputs"], base["inputs"])
    on = add_input_channels(session_to_tensors(s), s, {"reward_context": True})
    assert on["inputs"].shape[-1] == 15 and torch.equal(on["inputs"][..., :14], base["inputs"])
    want = torch.as_tensor(s.trial_reward, dtype=torch.float32)[:, None].expand(12, 20)
    assert torch.equal(on["inputs"][..., 14], want)


def test_reward_context_auto_follows_the_session_reward_factor():
    import dataclasses

    from eirnn.data import make_synthetic_session, session_to_tensors
    from eirnn.data.datamodule import resolve_inputs

    s = make_synthetic_session(n_trials=12, n_time=20, n_exc=3, n_inh=2, seed=1)
    assert resolve_inputs({"reward_context": "auto"}, s) == {"reward_context": True}
    auto = add_input_channels(session_to_tensors(s), s, {"reward_context": "auto"})
    on = add_input_channels(session_to_tensors(s), s, {"reward_context": True})
    assert torch.equal(auto["inputs"], on["inputs"])
    for rew in (None, np.full(12, 2.0)):  # no reward factor, or codes other than 0/1: off
        t = dataclasses.replace(s, trial_reward=rew)
        assert resolve_inputs({"reward_context": "auto"}, t) == {"reward_context": False}
        assert add_input_channels(session_to_tensors(t), t, {"reward_context": "auto"})["inputs"].shape[-1] == 14
    with pytest.raises(ValueError, match="needs a session with a reward factor"):
        add_input_channels(session_to_tensors(s), dataclasses.replace(s, trial_reward=None), {"reward_context": True})
    from eirnn.data import SessionDataModule

    with pytest.raises(ValueError, match="true, false or auto"):
        SessionDataModule(inputs={"reward_context": "maybe"})


def _batch(seed=0, b=8, t=12, n=3):
    g = torch.Generator().manual_seed(seed)
    rates = torch.rand(b, t, n, generator=g) * 20
    target = torch.poisson(torch.rand(b, t, n, generator=g) * 2, generator=g) * 40  # not the global RNG: order-independent
    mask = torch.rand(b, t, n, generator=g) > 0.1
    return rates, target, mask


def test_condition_neuron_loss_equals_the_lab_terms_per_condition_by_hand():
    rates, target, mask = _batch()
    one = torch.zeros(8, dtype=torch.long)
    got = condition_neuron_loss_terms(rates, target, mask, one, lambda_var=0.05, var_noise_correction=True)
    lab = neuron_loss_terms(rates, target, mask, lambda_scale=0.0, lambda_var=0.05, var_noise_correction=True)
    assert float(got["corr"]) == pytest.approx(float(lab["corr"]), rel=1e-5)
    assert float(got["var"]) == pytest.approx(float(lab["var"]), rel=1e-4)
    # two conditions (4 and 3 trials) + a singleton left out (min_trials 2): trial-count weights
    cond = torch.tensor([0, 1, 0, 0, 1, 0, 1, 2])
    got = condition_neuron_loss_terms(rates, target, mask, cond, lambda_var=0.05, var_noise_correction=False)
    parts = [neuron_loss_terms(rates[cond == c], target[cond == c], mask[cond == c], lambda_scale=0.0,
                               lambda_var=0.05) for c in (0, 1)]
    want_corr = (4 * float(parts[0]["corr"]) + 3 * float(parts[1]["corr"])) / 7
    want_var = (4 * float(parts[0]["var"]) + 3 * float(parts[1]["var"])) / 7
    assert float(got["corr"]) == pytest.approx(want_corr, rel=1e-5)
    assert float(got["var"]) == pytest.approx(want_var, rel=1e-4)
    # gradients flow, and only through the model's rates
    r = rates.clone().requires_grad_(True)
    condition_neuron_loss_terms(r, target, mask, cond)["total"].backward()
    assert torch.isfinite(r.grad).all() and r.grad.abs().sum() > 0


def test_trial_loss_within_condition_blocks_the_plan():
    rates, target, mask = _batch(1)
    same = torch.zeros(8, dtype=torch.long)
    a = trial_loss(rates, target, mask)
    b = trial_loss(rates, target, mask, conditions=same)
    assert float(a) == pytest.approx(float(b), rel=1e-6)
    cond = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    loss, plan = trial_loss(rates, target, mask, conditions=cond, return_plan=True)
    cross = plan[cond[:, None] != cond[None, :]].sum()
    assert float(cross) < 1e-8 and float(plan.sum()) == pytest.approx(1.0, rel=1e-4)
    assert float(loss) >= float(a) - 1e-6  # a restricted plan can only cost more


def test_objective_condition_weight_mixes_the_lab_and_condition_terms():
    rates, target, mask = _batch(2)
    cond = torch.tensor([0, 1, 0, 0, 1, 0, 1, 1])
    base = FitObjective(neuron={"kind": "correlation"})
    off = FitObjective(neuron={"kind": "correlation", "condition_weight": 0.0})
    assert float(off.neuron_term(rates, target, mask, cond)) == pytest.approx(float(base.neuron_term(rates, target, mask)))
    full = FitObjective(neuron={"kind": "correlation", "condition_weight": 1.0})
    want = condition_neuron_loss_terms(rates, target, mask, cond, lambda_var=0.05)["total"]
    assert float(full.neuron_term(rates, target, mask, cond)) == pytest.approx(float(want), rel=1e-6)
    assert float(full.neuron_term(rates, target, mask)) == pytest.approx(float(base.neuron_term(rates, target, mask)))
    with pytest.raises(ValueError):
        FitObjective(neuron={"condition_weight": 1.5})


@pytest.mark.slow
def test_training_with_every_condition_option(tmp_path):
    """A tiny run with all options on: it trains, logs the condition monitor, and the 15-input model
    is scored by the evaluation (extra channel carried to every predictor)."""
    from conftest import train_run
    from eirnn.evaluate import evaluate_run

    over = ["debug=fast", "data.synthetic.n_trials=120", "+data.synthetic.n_time=60", "+data.synthetic.n_exc=4",
            "+data.synthetic.n_inh=2", "model.n_hidden=6", "trainer.max_epochs=2", "callbacks.figures=null",
            "data.batch_size=16", "data.batch_mode=condition", "data.inputs.reward_context=true",
            "loss.neuron.condition_weight=0.5", "loss.trial.within_condition=true",
            "optimized_metric=val/psth_cond_score"]
    summary = train_run(over, tmp_path, save_config=True)
    assert summary is not None
    import json

    hist = json.loads((tmp_path / "metrics.json").read_text())
    best = hist["best"]
    assert "val/psth_cond_score" in best and "val/condition_psth_corr" in best
    assert best["val/psth_cond_score"] == pytest.approx(0.5 * (best["val/psth_corr"] + best["val/condition_psth_corr"]))
    res = evaluate_run(tmp_path, baselines=("condition_mean_shrunk",), ceiling_splits=2, write=False)
    assert np.isfinite(res["sets"]["val"]["scores"]["model"]["psth_corr"])
