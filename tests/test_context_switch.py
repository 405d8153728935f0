"""Low-rank RNN and the contextual switch task: model, integrators, trials, analysis, training."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from eirnn.data import context_switch as cs
from eirnn.models.ctx_lowrank import LowRankRNN


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matmuls: no OpenMP contention on a shared machine


def _model(**kw):
    args = dict(n_units=24, rank=2, n_inputs=4, n_outputs=1, dt=0.5, input_dt=0.5, seed=3)
    args.update(kw)
    return LowRankRNN(**args)


# ------------------------------------------------------------------ model
def test_bulk_is_a_fixed_buffer_and_stays_fixed_after_optimizer_steps():
    m = _model()
    assert "C" in m.state_dict() and "C" in dict(m.named_buffers())
    assert "C" not in dict(m.named_parameters())
    assert set(dict(m.named_parameters())) == {"M", "N", "B", "w", "b"}
    counts = m.n_parameters()
    assert counts == {"trainable": 2 * 24 * 2 + 24 * 4 + 24 + 1, "fixed": 24 * 24}
    assert LowRankRNN(n_units=500, rank=2, n_inputs=4).n_parameters() == {"trainable": 4501, "fixed": 250000}
    C0, M0 = m.C.clone(), m.M.detach().clone()
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    u = torch.randn(4, 10, 4)
    for _ in range(3):
        opt.zero_grad()
        m(u).output.pow(2).sum().backward()
        opt.step()
    assert torch.equal(m.C, C0)
    assert not torch.allclose(m.M, M0)
    # the bulk is restored from the state_dict, not from the seed
    other = _model(seed=99)
    other.load_state_dict(m.state_dict())
    assert torch.equal(other.C, C0)


def test_bulk_statistics_and_seed():
    m = LowRankRNN(n_units=400, rank=1, n_inputs=1, seed=5)
    assert abs(float(m.C.mean())) < 0.01
    assert abs(float(m.C.var()) * 400 - 1.0) < 0.05  # entries ~ N(0, 1/N)
    assert torch.equal(m.C, LowRankRNN(n_units=400, rank=1, n_inputs=1, seed=5).C)
    assert not torch.equal(m.C, LowRankRNN(n_units=400, rank=1, n_inputs=1, seed=6).C)


def test_shapes_readout_and_recurrent_term():
    m = _model()
    u = torch.randn(3, 7, 4)
    out = m(u, return_states=True)
    assert out.output.shape == (3, 7, 1) and out.states.shape == (3, 7, 24)
    expected = torch.tanh(out.states) @ m.w / 24 + m.b
    torch.testing.assert_close(out.output, expected)
    phi = torch.randn(5, 24)
    torch.testing.assert_close(m.recurrent(phi), phi @ m.connectivity().t(), atol=1e-5, rtol=1e-5)
    assert m(u).states is None


def test_linear_case_matches_closed_form_for_every_integrator():
    """g = 0 and M = N = 0: tau dx/dt = -x + B u, so x(t) = B u (1 - exp(-t / tau)) from x = 0."""
    m = _model(g=0.0, tau=2.0).double()
    with torch.no_grad():
        m.M.zero_()
        m.N.zero_()
    u = torch.zeros(2, 6, 4, dtype=torch.float64)
    u[:, :, 0] = torch.tensor([1.0, -0.5]).view(2, 1)
    t = (torch.arange(6, dtype=torch.float64) + 1) * 0.5
    exact = (u[:, :, None, 0] * m.B[:, 0].detach()) * (1 - torch.exp(-t / 2.0)).view(1, 6, 1)
    m.rtol, m.atol = 1e-10, 1e-12
    for method, tol in (("rk4", 1e-4), ("adaptive", 1e-7)):
        x = m(u, return_states=True, integrator=method).states
        assert (x - exact).abs().max() < tol, method
    m.dt = 0.05
    x = m(u, return_states=True, integrator="euler").states
    assert (x - exact).abs().max() < 0.02 * exact.abs().max()


@torch.no_grad()
def test_integrators_agree_on_the_same_trajectory():
    m = _model(n_units=20, init_std_mn=2.0).double()
    u = torch.from_numpy(np.random.default_rng(0).normal(0, 0.5, (2, 12, 4)))
    m.rtol, m.atol = 1e-9, 1e-11
    ref = m(u, return_states=True, integrator="adaptive").states
    m.dt = 0.05
    rk = m(u, return_states=True, integrator="rk4").states
    assert (rk - ref).abs().max() < 1e-6
    errs = []
    for dt in (0.1, 0.05, 0.025):
        m.dt = dt
        errs.append(float((m(u, return_states=True, integrator="euler").states - ref).abs().max()))
    assert errs[0] > errs[1] > errs[2] > 0
    for a, b in zip(errs, errs[1:]):  # first order: halving dt roughly halves the error
        assert 1.6 < a / b < 2.4
    m.dt = 0.25
    e1 = float((m(u, return_states=True, integrator="rk4").states - ref).abs().max())
    m.dt = 0.125
    e2 = float((m(u, return_states=True, integrator="rk4").states - ref).abs().max())
    assert e1 / e2 > 8  # fourth order (16 asymptotically)


@pytest.mark.slow
def test_gradients_through_the_adaptive_solve_and_the_adjoint():
    m = _model(n_units=16).double()
    u = torch.from_numpy(np.random.default_rng(1).normal(0, 0.5, (2, 6, 4)))
    m.rtol, m.atol = 1e-9, 1e-11

    def grads(**kw):
        m.zero_grad()
        m(u, **kw).output.pow(2).sum().backward()
        return torch.cat([p.grad.reshape(-1) for p in m.parameters()])

    g_direct = grads(integrator="adaptive")
    m.adjoint = True
    g_adjoint = grads(integrator="adaptive")
    m.adjoint = False
    m.dt = 0.025
    g_rk4 = grads(integrator="rk4")
    scale = float(g_direct.abs().max())
    assert scale > 0
    assert float((g_direct - g_adjoint).abs().max()) < 1e-6 * max(scale, 1.0)
    assert float((g_direct - g_rk4).abs().max()) < 1e-5 * max(scale, 1.0)


def test_bad_model_options():
    with pytest.raises(ValueError, match="integrator"):
        _model(integrator="leapfrog")
    with pytest.raises(ValueError, match="must divide"):
        _model(dt=0.3, input_dt=0.5)
    assert _model(dt=0.1, input_dt=0.5).n_sub == 5


# ------------------------------------------------------------------ task
def test_hand_checkable_trials():
    d = cs.make_trials([1, 2], [[1.0, -1.0], [1.0, -1.0]], dt=0.5, noise_std=0.4)  # no rng: noise-free
    x, tgt, mask = d["inputs"].numpy(), d["target"].numpy(), d["mask"].numpy()
    assert x.shape == (2, 200, 4) and tgt.shape == (2, 200, 1)
    stim0 = 30  # T_burn 15 / dt 0.5
    assert np.all(x[:, :stim0, :2] == 0)
    np.testing.assert_allclose(x[:, stim0:, 0], 1.2)
    np.testing.assert_allclose(x[:, stim0:, 1], -1.2)
    np.testing.assert_allclose(x[0, :, 2], 0.08)   # context 1: ctx1 on
    np.testing.assert_allclose(x[0, :, 3], -0.14)
    np.testing.assert_allclose(x[1, :, 2], -0.14)  # context 2: ctx2 on
    np.testing.assert_allclose(x[1, :, 3], 0.08)
    dec0 = 200 - 40                                # last 20 time units
    assert mask[:, dec0:].all() and not mask[:, :dec0].any()
    assert np.all(tgt[0, dec0:] == 1.0) and np.all(tgt[1, dec0:] == -1.0)  # sign of s1 / sign of s2
    assert np.all(tgt[:, :dec0] == 0)
    assert d["label"].tolist() == [1.0, -1.0] and d["context"].tolist() == [1, 2]


def test_noise_statistics_and_random_conditions():
    d = cs.random_trials(2000, np.random.default_rng(0), dt=0.5, noise_std=0.4)
    x, signs = d["inputs"].numpy(), d["signs"].numpy()
    resid = x[:, 30:, :2] - 1.2 * signs[:, None, :]
    assert abs(resid.std() - 0.4) < 0.01 and abs(resid.mean()) < 0.01
    assert np.all(x[:, :30, :2] == 0)
    ctx = d["context"].numpy()
    assert set(np.unique(ctx)) == {1, 2} and abs((ctx == 1).mean() - 0.5) < 0.05
    assert abs((signs > 0).mean() - 0.5) < 0.05
    np.testing.assert_array_equal(d["label"].numpy(), signs[np.arange(2000), ctx - 1])


def test_datamodule_is_deterministic_and_splits_differ():
    kw = dict(n_train=64, n_val=32, batch_size=16, seed=7)
    a, b = cs.ContextSwitchDataModule(**kw), cs.ContextSwitchDataModule(**kw)
    a.setup(), b.setup()
    for split in ("train", "val"):
        for k, v in a.tensors(split).items():
            assert torch.equal(v, b.tensors(split)[k]), (split, k)
    c = cs.ContextSwitchDataModule(**dict(kw, seed=8))
    assert not torch.equal(a.tensors("train")["inputs"], c.tensors("train")["inputs"])
    assert not torch.equal(a.tensors("train")["inputs"][:32], a.tensors("val")["inputs"])
    assert a.model_kwargs() == {"n_inputs": 4, "n_outputs": 1, "dt": 0.5, "input_dt": 0.5}
    assert len(a.train_dataloader()) == 4
    batch = next(iter(a.train_dataloader()))
    assert batch["inputs"].shape == (16, 200, 4) and batch["mask"].dtype == torch.bool


def test_choices_and_bad_task_parameters():
    out = torch.zeros(3, 4, 1)
    out[0, 2:] = 0.3
    out[1, 2:] = -0.1
    out[2, :2] = 5.0   # outside the window: ignored
    out[2, 2:] = -0.2
    mask = torch.zeros(3, 4, 1, dtype=torch.bool)
    mask[:, 2:] = True
    assert cs.choices(out, mask).tolist() == [1.0, -1.0, -1.0]
    with pytest.raises(ValueError, match="decision_window"):
        cs.ContextSwitchDataModule(decision_window=90.0)
    with pytest.raises(ValueError, match="context"):
        cs.make_trials([3], [[1.0, 1.0]])


# --------------------------------------------------------------- analysis
def test_overlap_quantities_on_a_hand_built_model():
    from eirnn.analysis.context_switch import overlap_quantities

    n = 4
    m = LowRankRNN(n_units=n, rank=2, n_inputs=4, seed=0)
    with torch.no_grad():
        m.M.copy_(torch.tensor([[1.0, 0], [1, 0], [0, 2], [0, 2]]))
        m.N.copy_(torch.tensor([[2.0, 0], [2, 0], [0, 1], [0, -1]]))
        m.B.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]))
        m.w.copy_(torch.tensor([[1.0], [-1], [1], [-1]]))
    gain = np.array([1.0, 0.0, 1.0, 1.0])
    ov = overlap_quantities(m, {1: np.ones(n), 2: gain})
    # sigma_mn[r, s] = m_r . n_s / N
    np.testing.assert_allclose(ov["sigma_mn"], [[1.0, 0.0], [0.0, 0.0]])
    assert ov["pairs"]["m1.n1"] == pytest.approx(1.0) and ov["pairs"]["n1.B_stim1"] == pytest.approx(0.5)
    assert ov["pairs"]["m1.w"] == pytest.approx(0.0) and ov["pairs"]["n2.w"] == pytest.approx(0.5)
    eig = sorted(abs(z) for z in ov["structured_eigenvalues"])
    np.testing.assert_allclose(eig, [0.0, 1.0], atol=1e-12)
    g1, g2 = ov["gain_modulated"]["ctx1"], ov["gain_modulated"]["ctx2"]
    assert g1["n1.stim1"] == pytest.approx(0.5) and g1["n1.stim2"] == pytest.approx(0.5)
    assert g2["n1.stim1"] == pytest.approx(0.5) and g2["n1.stim2"] == pytest.approx(0.0)  # unit 2 silenced
    assert g2["relevant_norm"] == pytest.approx(0.0) and g2["irrelevant_norm"] == pytest.approx(0.5)
    assert g2["mean_gain"] == pytest.approx(0.75)


# ------------------------------------------------------------- end to end
SANITY = ["experiment=context_switch_sanity", "data.n_train=128", "data.n_val=64", "logger=tensorboard"]


@pytest.mark.slow
def test_sanity_training_through_hydra_writes_the_run_folder(compose, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from eirnn.analysis.common import find_checkpoint, load_checkpoint
    from eirnn.analysis.context_switch import run as analysis_cli
    from eirnn.train import train

    cfg = compose(SANITY + ["trainer.max_epochs=4"], tmp_path)
    summary = train(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("val/accuracy", "val/acc_ctx1", "val/acc_ctx2", "val/loss", "val/loss_ctx1", "train/loss",
                "grad_norm/M", "grad_norm/N", "grad_norm/B", "grad_norm/w"):
        assert key in metrics["final"], key
    assert 0.0 <= metrics["best"]["val/accuracy"] <= 1.0
    assert summary["best"]["val/accuracy"] == metrics["best"]["val/accuracy"]
    history = json.loads((tmp_path / "training_log.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1, 2, 3]
    assert history[-1]["val/loss"] < history[0]["val/loss"]  # it learns
    for f in ("loss.png", "grad_norms.png", "checkpoints/best.ckpt", "checkpoints/last.ckpt",
              "analysis/analysis.json", "analysis/trajectories.png", "analysis/overlaps.png",
              "analysis/proj_M.npy", "analysis/proj_N.npy", "analysis/overlap_matrix.npy"):
        assert (tmp_path / f).is_file(), f
    proj = np.load(tmp_path / "analysis" / "proj_M.npy")
    assert proj.shape == (8, 100, 2)
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    for tag in ("val/accuracy", "val/acc_ctx1", "val/acc_ctx2", "train/loss", "grad_norm/M", "lr"):
        assert tag in acc.Tags()["scalars"], tag
    # the bulk saved in the checkpoint is the untouched initial bulk
    model, task = load_checkpoint(find_checkpoint(tmp_path))
    fresh = LowRankRNN(**dict(model.config))
    assert torch.equal(model.C, fresh.C) and not torch.equal(model.M, fresh.M)
    assert task["kwargs"]["n_train"] == 128
    out = analysis_cli([str(tmp_path), "--out", str(tmp_path / "again"), "--n-test", "64"])
    assert (tmp_path / "again" / "trajectories.png").is_file()
    assert set(out) >= {"accuracy", "acc_ctx1", "acc_ctx2", "sigma_mn", "gain_modulated_overlaps"}
    assert math.isfinite(out["accuracy"])


def test_analysis_cli_reports_a_bad_folder(tmp_path, capsys):
    from eirnn.analysis.common import cli_main
    from eirnn.analysis.context_switch import run

    assert cli_main(run, [str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run folder not found" in err[0]


def test_old_task_import_paths_resolve_to_the_moved_modules():
    """eirnn.tasks.* (the task code before it moved into models/, data/, training/) still imports,
    as the moved module itself, so old task checkpoints that name a class by that path still build."""
    import importlib

    from eirnn.analysis.common import _build

    moved = {"lowrank": "eirnn.models.ctx_lowrank", "system_a_model": "eirnn.models.system_a",
             "integrators": "eirnn.models.integrators", "tanh_recurrence": "eirnn.models.tanh_recurrence",
             "datamodule": "eirnn.data.task_base", "context_switch": "eirnn.data.context_switch",
             "system_a": "eirnn.data.system_a", "module": "eirnn.training.task_module",
             "callbacks": "eirnn.training.task_callbacks", "ensemble": "eirnn.training.ensemble.task"}
    for old, new in moved.items():
        assert importlib.import_module(f"eirnn.tasks.{old}") is importlib.import_module(new), old
    net = _build({"target": "eirnn.tasks.system_a_model.SystemARNN",
                  "kwargs": {"n_units": 8, "n_inputs": 1, "n_outputs": 1, "seed": 3}})
    assert type(net).__module__ == "eirnn.models.system_a"
