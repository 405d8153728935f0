"""System A: the network, the task generator, the analysis quantities, training and the sweep analysis."""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO, train_run
from eirnn.analysis.common import cosine, eig_cov, overlap, participation_ratio, pca
from eirnn.data import system_a as sa
from eirnn.models.system_a import SystemARNN


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matmuls: no OpenMP contention on a shared machine


# ------------------------------------------------------------------ model
def test_fixed_matrix_and_h0_are_buffers_that_stay_fixed():
    m = SystemARNN(n_units=30, dt=1.0, tau=10.0, seed=2)
    assert {"G", "h0"} <= set(m.state_dict()) and set(dict(m.named_parameters())) == {"I", "w"}
    assert m.n_parameters() == {"trainable": 60, "fixed": 30 * 30 + 30}
    assert torch.equal(m.h0, torch.zeros(30))
    G0, I0 = m.G.clone(), m.I.detach().clone()
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    u = torch.ones(2, 20, 1)
    for _ in range(3):
        opt.zero_grad()
        m(u).output.pow(2).sum().backward()
        opt.step()
    assert torch.equal(m.G, G0) and not torch.equal(m.I.detach(), I0)
    r = SystemARNN(n_units=30, h0="random", h0_std=2.0, seed=2)
    assert float(r.h0.std()) > 1.0
    with pytest.raises(ValueError, match="must equal"):
        SystemARNN(dt=2.0, input_dt=1.0)
    with pytest.raises(ValueError, match="h0"):
        SystemARNN(h0="ones")


def test_recurrence_matches_the_readme_update_rule():
    """h(t+dt) = h + dt/tau (-h + g_G tanh(h) G^T + u I^T); output = tanh(h) w, step by step."""
    m = SystemARNN(n_units=12, dt=1.0, tau=5.0, g_G=1.5, h0="random", seed=4).double()
    u = torch.from_numpy(np.random.default_rng(0).normal(size=(2, 15, 1)))
    out = m(u, return_states=True)
    h = m.h0.expand(2, 12).clone()
    ys, hs = [], []
    for t in range(15):
        h = h + (1.0 / 5.0) * (-h + 1.5 * torch.tanh(h) @ m.G.T + u[:, t] @ m.I.T)
        hs.append(h)
        ys.append(torch.tanh(h) @ m.w)
    torch.testing.assert_close(out.states, torch.stack(hs, 1))
    torch.testing.assert_close(out.output, torch.stack(ys, 1).detach())
    assert out.output.shape == (2, 15, 1)


def test_fused_recurrence_matches_the_autograd_loop_values_and_gradients():
    """impl=fused (hand-written backward) vs impl=autograd (plain loop): outputs, states, dL/dI, dL/dw."""
    torch.manual_seed(0)
    u = torch.zeros(3, 40, 1, dtype=torch.float64)
    u[:, 5:12] = 2.0                                   # a pulse: the input term is skipped elsewhere
    u[1, 20:23] = -1.0
    res = {}
    for impl in ("fused", "autograd"):
        m = SystemARNN(n_units=16, tau=5.0, h0="random", seed=7, impl=impl).double()
        out = m(u, return_states=True)
        (out.output * torch.linspace(-1, 1, 40, dtype=torch.float64)[None, :, None]).sum().backward()
        res[impl] = (out.output.detach(), out.states, m.I.grad, m.w.grad)
    for a, b in zip(res["fused"], res["autograd"]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert res["fused"][1].requires_grad is False      # states come back without gradient


@pytest.mark.parametrize("batched", [False, True])
def test_tanh_rnn_gradcheck_all_inputs(batched):
    from eirnn.models.tanh_recurrence import tanh_rnn

    g = torch.Generator().manual_seed(1)
    lead, wl = ((2, 3), (2,)) if batched else ((3,), ())
    kw = dict(dtype=torch.float64)
    u = torch.randn(6, *lead, 2, generator=g, **kw)
    u[1:3] = 0.0
    args = (u, torch.randn(*wl, 2, 5, generator=g, **kw), 0.4 * torch.randn(*wl, 5, 5, generator=g, **kw),
            torch.randn(*wl, 5, 2, generator=g, **kw), torch.randn(*((2, 1, 5) if batched else (5,)), generator=g, **kw))
    args = tuple(a.requires_grad_() for a in args)
    assert torch.autograd.gradcheck(lambda *a: tanh_rnn(*a, 0.75)[0], args)


@pytest.mark.parametrize("strategy", ["bmm", "loop"])
def test_ensemble_model_runs_each_member_as_its_single_model(strategy):
    from eirnn.models.system_a import SystemAEnsembleRNN

    members = [SystemARNN(n_units=12, tau=5.0, h0="random", seed=s) for s in (3, 4, 5)]
    ens = SystemAEnsembleRNN(members, strategy)
    assert ens.G.shape == (3, 12, 12) and ens.I.shape == (3, 12, 1) and ens.seeds == [3, 4, 5]
    x = torch.randn(3, 2, 30, 1)
    x[:, :, :10] = 0.0
    out = ens(x, return_states=True)
    out.output.pow(2).sum().backward()
    for k, m in enumerate(members):
        ref = m(x[k], return_states=True)
        ref.output.pow(2).sum().backward()
        torch.testing.assert_close(out.output[k], ref.output.detach())
        torch.testing.assert_close(out.states[k], ref.states)
        torch.testing.assert_close(ens.I.grad[k], m.I.grad)
        torch.testing.assert_close(ens.w.grad[k], m.w.grad)
        assert torch.equal(ens.member(k).I, m.I) and torch.equal(ens.member_state_dict(k)["G"], m.G)
    assert ens.resolved_strategy(torch.device("cpu")) == strategy
    assert SystemAEnsembleRNN(members).resolved_strategy(torch.device("cpu")) == "bmm"     # N < 256
    big = [SystemARNN(n_units=256, tau=5.0, seed=s) for s in (1, 2)]
    assert SystemAEnsembleRNN(big).resolved_strategy(torch.device("cpu")) == "loop"
    with pytest.raises(ValueError, match="share n_units"):
        SystemAEnsembleRNN([SystemARNN(n_units=12, seed=1), SystemARNN(n_units=13, seed=2)])
    with pytest.raises(ValueError, match="strategy"):
        SystemAEnsembleRNN(members, "threads")


def test_zero_state_stays_silent_without_input():
    m = SystemARNN(n_units=20, tau=10.0, seed=1)
    assert float(m(torch.zeros(1, 50, 1)).output.detach().abs().max()) == 0.0


# ------------------------------------------------------------------ task
def test_hand_checkable_trial():
    d = sa.make_trials([3000.0], [150.0])
    x, tgt, mask = d["inputs"][0, :, 0].numpy(), d["target"][0, :, 0].numpy(), d["mask"][0, :, 0].numpy()
    assert x.shape == (7000,)
    assert np.all(x[3000:3150] == 2.0) and x[:3000].sum() == 0 and x[3150:].sum() == 0
    assert not mask[:4500].any() and mask[4500:].all()
    np.testing.assert_allclose(tgt[4500:], 0.007 * 150)       # 1.05
    assert np.all(tgt[:4500] == 0)
    d2 = sa.make_trials([10.4], [2.6], dt=1.0, n_steps=40, cost_onset=30.0, thresh_rate=0.5)
    x2 = d2["inputs"][0, :, 0].numpy()
    assert np.flatnonzero(x2).tolist() == [10, 11, 12]                # rounded to whole steps
    assert d2["duration"].item() == 3.0
    np.testing.assert_allclose(d2["target"][0, 30:, 0].numpy(), 1.5)  # 0.5 * 3 ms


def test_sampled_timing_stays_within_the_jitter_and_is_deterministic():
    dm = sa.SystemADataModule(n_train=300, n_val=20, seed=3)
    dm.setup()
    tr = dm.tensors("train")
    on, du = tr["onset"].numpy(), tr["duration"].numpy()
    assert on.min() >= 2000 and on.max() <= 4000 and on.std() > 400
    assert du.min() >= 50 and du.max() <= 250
    x = tr["inputs"][..., 0].numpy()
    np.testing.assert_array_equal((x > 0).sum(1), du.astype(int))
    np.testing.assert_array_equal(np.argmax(x > 0, 1), on.astype(int))
    np.testing.assert_allclose(tr["target"][:, -1, 0].numpy(), 0.007 * du, rtol=1e-6)
    again = sa.SystemADataModule(n_train=300, n_val=20, seed=3)
    assert torch.equal(again.tensors("train")["inputs"], tr["inputs"])
    assert not torch.equal(sa.SystemADataModule(n_train=300, n_val=20, seed=4).tensors("train")["onset"], tr["onset"])
    assert dm.model_kwargs()["dt"] == 1.0
    with pytest.raises(ValueError, match="cost_onset"):
        sa.SystemADataModule(onset=4000.0)


# --------------------------------------------------------------- analysis
def test_participation_ratio_hand_checked_cases():
    rng = np.random.default_rng(0)
    E = np.linalg.qr(rng.normal(size=(6, 6)))[0]
    for kind in ("readme", "squared"):
        assert participation_ratio(3.0 * E[:, 2], E, kind) == pytest.approx(1.0)          # one eigenvector
        assert participation_ratio(E[:, 0] + E[:, 1] + E[:, 4], E, kind) == pytest.approx(3.0)
        assert participation_ratio(-5 * (E[:, 0] + E[:, 1]), E, kind) == pytest.approx(2.0)  # scale-invariant
    v = E[:, 0] - E[:, 1]
    assert participation_ratio(v, E, "readme") == pytest.approx(0.0, abs=1e-12)   # signed projections cancel
    assert participation_ratio(v, E, "squared") == pytest.approx(2.0)
    w = 2 * E[:, 0] + E[:, 1]
    assert participation_ratio(w, E, "readme") == pytest.approx(9 / 5)
    assert participation_ratio(w, E, "squared") == pytest.approx(25 / 17)
    assert participation_ratio(E[:, 0] + E[:, 5], E, "squared", n_components=3) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        participation_ratio(v, E, "other")


def test_participation_ratio_ignores_the_arbitrary_zero_variance_basis():
    """Rates in a 2-D subspace of R^6: the 4 zero-variance eigenvectors can be rotated freely.
    A PR over all 6 components changes with that rotation; over the 2 kept by
    n_variance_components it does not."""
    from eirnn.analysis.system_a import n_variance_components

    rng = np.random.default_rng(3)
    basis = np.linalg.qr(rng.normal(size=(6, 6)))[0]
    rates = rng.normal(size=(400, 2)) * [2.0, 0.5] @ basis[:, :2].T
    vals, vecs = pca(rates)
    assert n_variance_components(vals) == 2
    assert n_variance_components(np.array([4.0, 1.0, 1e-9, 1e-17])) == 2
    assert n_variance_components(np.array([4.0, 1.0, 1e-9, 1e-17]), rtol=0) == 4
    assert n_variance_components(vals, n_max=1) == 1
    rot = np.linalg.qr(rng.normal(size=(4, 4)))[0]
    other = vecs.copy()
    other[:, 2:] = vecs[:, 2:] @ rot                     # another valid eigenbasis of the same covariance
    v = rng.normal(size=6)
    for kind in ("readme", "squared"):
        assert participation_ratio(v, vecs, kind, 2) == pytest.approx(participation_ratio(v, other, kind, 2))
    assert participation_ratio(v, vecs, "squared") != pytest.approx(participation_ratio(v, other, "squared"))


def test_pca_sign_rule_order_and_alignment():
    rng = np.random.default_rng(1)
    d = np.array([3.0, -4.0, 0.0]) / 5.0
    rates = rng.normal(size=(500, 1)) * 2.0 * d + 0.01 * rng.normal(size=(500, 3))
    vals, vecs = pca(rates)
    assert np.all(np.diff(vals) <= 0)
    assert abs(vecs[:, 0] @ d) > 0.999
    assert np.all(vecs[np.argmax(np.abs(vecs), 0), range(3)] > 0)   # largest entry positive
    np.testing.assert_allclose(vecs.T @ vecs, np.eye(3), atol=1e-10)
    _, v2 = eig_cov(np.diag([1.0, 3.0, 2.0]))
    np.testing.assert_allclose(np.abs(v2), np.eye(3)[:, [1, 2, 0]])
    assert cosine([1, 0], [1, 1]) == pytest.approx(1 / math.sqrt(2))
    assert cosine([1, 2], [-2, 1]) == pytest.approx(0.0)
    assert overlap([1, 2], [3, 4]) == pytest.approx(5.5)   # (1*3 + 2*4) / N


def test_precision_of_a_silent_readout_is_the_target_squared():
    from eirnn.analysis.system_a import model_quantities, precision

    dm = sa.SystemADataModule(n_train=4, n_val=2, n_steps=700, onset=300, onset_jitter=100, duration=15,
                              duration_jitter=10, cost_onset=450, thresh_rate=0.07, eval_durations=[5, 15, 30])
    m = SystemARNN(n_units=20, tau=10.0, seed=0)
    with torch.no_grad():
        m.w.zero_()
    prec, arrays = precision(m, dm)
    assert prec == pytest.approx({5.0: 0.35 ** 2, 15.0: 1.05 ** 2, 30.0: 2.1 ** 2})
    assert arrays["rates"].shape == (3, 700, 20)
    q = model_quantities(m, dm)
    assert q["precision_mean"] == pytest.approx(np.mean([0.35 ** 2, 1.05 ** 2, 2.1 ** 2]))
    assert math.isnan(q["weight_corr"])                    # w = 0
    assert q["spont_rate_std"] > 0.05                      # random start: the chaotic network is active
    assert 1.0 <= q["I_PR_squared"] <= 20.0


# ------------------------------------------------------------- end to end
SANITY = ["experiment=system_a_sanity", "data.n_train=48", "data.n_val=16", "model.n_units=40"]


@pytest.mark.slow
def test_sanity_training_through_hydra_and_sweep_analysis(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from eirnn.analysis.system_a import analyze_sweep

    sweep = tmp_path / "sweep"
    for job, seed in enumerate((1, 2)):
        train_run(SANITY + [f"seed={seed}", "trainer.max_epochs=3"], sweep / str(job))
    run0 = sweep / "0"
    metrics = json.loads((run0 / "metrics.json").read_text())
    assert metrics["epochs_trained"] == 3
    for key in ("val/loss", "val/rmse", "train/loss", "grad_norm/I", "grad_norm/w"):
        assert key in metrics["final"], key
    history = json.loads((run0 / "training_log.json").read_text())
    assert history[-1]["train/loss"] < history[0]["train/loss"]
    for f in ("loss.png", "grad_norms.png", "checkpoints/last.ckpt", "checkpoints/best.ckpt"):
        assert (run0 / f).is_file(), f
    acc = EventAccumulator(str(run0 / "tensorboard"))
    acc.Reload()
    for tag in ("grad_norm/I", "grad_norm/w", "train/loss", "val/loss"):
        assert tag in acc.Tags()["scalars"], tag
    assert [e.step for e in acc.Scalars("grad_norm/I")] == [1, 2, 3]  # epoch means at step = epoch, like every scalar
    rows = analyze_sweep(sweep)
    assert [r["seed"] for r in rows] == [1, 2]
    with open(sweep / "system_a_summary.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 2
    for col in ("precision_5", "precision_15", "precision_30", "precision_mean", "weight_corr",
                "I_PR_readme", "w_PR_readme", "I_PR_squared", "w_PR_squared", "n_pcs_spont", "n_pcs_memory"):
        assert col in table[0] and math.isfinite(float(table[0][col])), col
    assert (sweep / "performance.png").is_file() and (sweep / "evaluation" / "seed_2.png").is_file()
    assert rows[0]["precision_mean"] != rows[1]["precision_mean"]   # independent models


@pytest.mark.slow
def test_multirun_cli_and_analysis_cli(tmp_path):
    """The documented commands: a --multirun sweep over seeds, then the analysis (subprocesses).

    (The joblib launcher of the documented command is left out here: its worker start-up
    costs a minute on a loaded 2-core machine; it only changes how jobs are dispatched.)"""
    sweep = tmp_path / "sweep"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "MPLBACKEND": "Agg"}
    cmd = [sys.executable, "-m", "eirnn.train", "--multirun", "experiment=system_a_sanity", "seed=1,2",
           "data.n_train=16", "data.n_val=8", "model.n_units=30", "trainer.max_epochs=1", "logger=none",
           f"hydra.sweep.dir={sweep}"]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (sweep / "0" / "checkpoints" / "last.ckpt").is_file() and (sweep / "1" / "loss.png").is_file()
    res = subprocess.run([sys.executable, "-m", "eirnn.analysis.system_a", str(sweep), "--pr", "squared"], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "2 models" in res.stdout and (sweep / "system_a_summary.csv").is_file()


def test_analysis_cli_reports_a_bad_folder(tmp_path, capsys):
    from eirnn.analysis.common import cli_main
    from eirnn.analysis.system_a import run

    assert cli_main(run, [str(tmp_path / "missing")]) == 2
    assert cli_main(run, [str(tmp_path)]) == 2   # exists, but holds no runs
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "not found" in err[0] and "no run folders" in err[1]


@pytest.mark.slow
def test_ensemble_member_equals_the_single_run_and_is_analysed(tmp_path):
    """ensemble.size=2 with seed=1: member 1 is the single run with seed=2 (own trials, batch order,
    weights), up to float round-off; the analysis reads the members like a --multirun."""
    from eirnn.analysis.system_a import analyze_sweep

    extra = ["trainer.max_epochs=2", "logger=none"]
    train_run(SANITY + ["seed=1", "ensemble.size=2"] + extra, tmp_path / "ens")
    train_run(SANITY + ["seed=2"] + extra, tmp_path / "single")
    a = torch.load(tmp_path / "ens" / "members" / "m1" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "single" / "checkpoints" / "last.ckpt", weights_only=True)
    assert torch.equal(a["state_dict"]["model.G"], b["state_dict"]["model.G"])
    for name in ("model.I", "model.w"):
        torch.testing.assert_close(a["state_dict"][name], b["state_dict"][name], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(a["state_dict"]["model.I"],
                              torch.load(tmp_path / "ens" / "members" / "m0" / "checkpoints" / "last.ckpt",
                                         weights_only=True)["state_dict"]["model.I"])
    ha, hb = a["eirnn_task"]["history"], b["eirnn_task"]["history"]
    assert len(ha) == len(hb) == 2
    for x, y in zip(ha, hb):
        for key in ("val/loss", "train/loss", "grad_norm/I", "grad_norm/w"):
            assert x[key] == pytest.approx(y[key], rel=1e-5), key
    assert len(a["eirnn_task"]["step_log"]) == len(b["eirnn_task"]["step_log"]) == 4
    summary = json.loads((tmp_path / "ens" / "ensemble_metrics.json").read_text())
    assert summary["seeds"] == [1, 2] and summary["members"][1]["final_val/loss"] == pytest.approx(hb[-1]["val/loss"], rel=1e-5)
    for f in ("loss.png", "grad_norms.png", "metrics.json", "training_log.json", "checkpoints/best.ckpt"):
        assert (tmp_path / "ens" / "members" / "m1" / f).is_file(), f
    assert (tmp_path / "ens" / "members_loss.png").is_file()
    rows = analyze_sweep(tmp_path / "ens")
    assert [r["seed"] for r in rows] == [1, 2] and rows[1]["run_dir"].endswith("m1")


@pytest.mark.slow
def test_ensemble_refuses_what_it_cannot_do_per_member(compose, tmp_path):
    from eirnn.train import UserError

    with pytest.raises(UserError, match="early stopping"):
        train_run(SANITY + ["ensemble.size=2", "logger=none", "+callbacks.early_stopping._target_="
                            "lightning.pytorch.callbacks.EarlyStopping", "+callbacks.early_stopping.monitor=val/loss"],
                  tmp_path / "a")
    with pytest.raises(UserError, match="plateau"):
        train_run(SANITY + ["ensemble.size=2", "logger=none", "scheduler=plateau"], tmp_path / "b")
    with pytest.raises(UserError, match="System A"):
        from eirnn.train import train

        train(compose(["experiment=context_switch_sanity", "ensemble.size=2", "logger=none"], tmp_path / "c"))


def test_batch_timing_command_runs(capsys):
    from benchmarks.system_a import main

    main(["small", "--k", "2", "--steps", "20", "--reps", "1"])
    main(["full", "--k", "2", "--steps", "10", "--reps", "1"])
    out = capsys.readouterr().out
    assert "impl=fused" in out and "strategy=bmm" in out and "strategy=loop" in out and "500 units" in out
