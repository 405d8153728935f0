"""`python -m eirnn.export RUN_DIR` and the functions behind it (arrays, PCA, report)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import REPO, compose_config, tiny_overrides
from eirnn import metrics as M
from eirnn.export import ExportError, find_checkpoint, main
from eirnn.report import artifacts as A
from eirnn.report.report import format_duration, render_report

# the tiny config without debug=fast (the default batches and early stopping), 40 trials of the default length
PLAIN = tiny_overrides("data.synthetic.n_trials=40", "model.n_hidden=4", "trainer.max_epochs=2", "optim.lr=2e-4",
                       drop=("debug", "data.synthetic.n_time"))
pytestmark = pytest.mark.usefixtures("one_thread")


def write_hydra_config(cfg, run: Path) -> None:
    """Save the job config the way Hydra does (``.hydra/config.yaml``, interpolations kept)."""
    c = OmegaConf.to_container(cfg, resolve=False)
    c.pop("hydra", None)
    c["paths"]["output_dir"] = "${hydra:runtime.output_dir}"
    (run / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(c), run / ".hydra" / "config.yaml")


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    """A finished run of the default config (linear input, fixed h0), no export at its end."""
    from eirnn.train import train

    run = tmp_path_factory.mktemp("plain_run")
    cfg = compose_config(PLAIN, run)
    train(cfg)
    write_hydra_config(cfg, run)
    return run


# ------------------------------------------------------------------ CLI
@pytest.mark.slow
def test_export_cli_writes_the_artifacts_of_a_finished_run(plain_run, capsys):
    assert not (plain_run / "weights").exists()
    assert main([str(plain_run), "--no-figures"]) == 0
    out = capsys.readouterr().out
    metrics = json.loads((plain_run / "metrics.json").read_text())
    best = metrics["best"]["val/psth_corr"]
    assert f"val PSTH corr {best:.4f}" in out and "checkpoints/best.ckpt" in out
    corr = np.load(plain_run / "metrics" / "per_neuron_correlation.npy")
    assert np.isclose(np.nanmean(corr), best, atol=1e-6)  # best.ckpt re-run gives its validation metric
    w = np.load(plain_run / "weights" / "W_in.npy")
    assert w.shape[1] == 14  # linear embedding: W_in acts on the 14 channels
    assert not (plain_run / "weights" / "attention_W_K.npy").exists()
    assert not (plain_run / "outputs" / "val_attention_mean.npy").exists()
    h0 = np.load(plain_run / "weights" / "h0.npy")
    assert np.all(h0 == 0)  # not learnable in the default model
    # the spike readout fitted at the end of training (eirnn/models/readout.py), one value per recorded neuron
    gain = np.load(plain_run / "weights" / "spike_readout_gain.npy")
    offset = np.load(plain_run / "weights" / "spike_readout_offset.npy")
    n_rec = int(np.load(plain_run / "weights" / "recorded_mask.npy").sum())
    assert gain.shape == offset.shape == (n_rec,) and np.all(gain >= 0) and not np.allclose(gain, 1.0)
    manifest = json.loads((plain_run / "artifacts.json").read_text())
    assert manifest["checkpoint"] == "checkpoints/best.ckpt" and manifest["files"]["figures"] == []
    for folder in ("weights", "outputs", "metrics", "population"):
        for f in manifest["files"][folder]:
            assert np.load(plain_run / f["path"]).shape == tuple(f["shape"]), f
    report = (plain_run / "training_report.md").read_text()
    assert "max_epochs = 2 reached" in report and "| `model.input_embedding` | `linear` |" in report


@pytest.mark.slow
def test_export_of_the_last_checkpoint(plain_run, capsys):
    assert main([str(plain_run), "--checkpoint", "last", "--no-figures", "--n-pcs", "3"]) == 0
    manifest = json.loads((plain_run / "artifacts.json").read_text())
    assert manifest["checkpoint"] == "checkpoints/last.ckpt"
    final = json.loads((plain_run / "metrics.json").read_text())["final"]["val/psth_corr"]
    assert np.isclose(manifest["final_metrics"]["psth_corr"], final, atol=1e-6)
    assert np.load(plain_run / "population" / "pca_components.npy").shape[0] == 3


@pytest.mark.parametrize("case,needle", [
    ("missing", "not a directory"),
    ("empty", "config.yaml: not found"),
    ("no_data", "data.path"),
    ("no_ckpt", "best.ckpt: not found"),
    ("bad_ckpt", "checkpoint"),
])
def test_bad_input_gives_one_line_and_exit_2(tmp_path, capsys, case, needle):
    run = tmp_path / "run"
    args = [str(run)]
    if case != "missing":
        run.mkdir()
    if case in ("no_data", "no_ckpt", "bad_ckpt"):
        over = PLAIN if case != "no_data" else ["data=sc_mat", "data.path=/nonexistent/session.mat",
                                                      *(o for o in PLAIN if not o.startswith("data.synthetic."))]
        write_hydra_config(compose_config(over, run), run)
    if case == "bad_ckpt":
        args += ["--checkpoint", str(tmp_path / "nope.ckpt")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and needle in err and len(err.splitlines()) == 1, err


@pytest.mark.slow
def test_train_then_export_from_the_command_line(tmp_path):
    """Through the real entry points: Hydra writes .hydra/config.yaml, the export reads it."""
    run = tmp_path / "run"
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-m", "eirnn.train", *PLAIN, f"hydra.run.dir={run}"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    res = subprocess.run([sys.executable, "-m", "eirnn.export", str(run)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "exported checkpoints/best.ckpt" in res.stdout
    figs = sorted(p.stem for p in (run / "figures").glob("*.png"))
    assert len(figs) == 11 and "attention_patterns" not in figs  # no attention in the default model
    assert "condition_psth_grid" in figs and "selectivity_scatter" in figs  # issue 15


# ---------------------------------------------------------------- arrays
def test_pca_projects_data_and_model_on_the_same_components():
    rng = np.random.default_rng(0)
    T, N = 60, 12
    latent = np.stack([np.sin(np.linspace(0, 3, T)), np.cos(np.linspace(0, 5, T))], 1)
    D = 10 + latent @ rng.normal(size=(2, N)) * 5 + rng.normal(size=(T, N)) * 0.1
    out = A.population_arrays(D, D, n_pcs=4)
    V = out["pca_components"]
    np.testing.assert_allclose(V @ V.T, np.eye(4), atol=1e-10)
    np.testing.assert_allclose(out["pca_real"], (D - D.mean(0)) @ V.T, atol=1e-10)
    np.testing.assert_allclose(out["pca_model"], out["pca_real"])
    r = out["pca_explained_variance_ratio"]
    assert r[0] + r[1] > 0.99 and np.all(np.diff(r) <= 1e-12)  # two latents carry the variance
    np.testing.assert_allclose(out["pca_explained_variance"], np.var(out["pca_real"], 0, ddof=1), rtol=1e-8)
    shift = np.arange(N, dtype=float)
    moved = A.population_arrays(D, D + shift, n_pcs=4)
    np.testing.assert_allclose(moved["pca_model"] - moved["pca_real"], np.tile(shift @ V.T, (T, 1)), atol=1e-9)
    D2 = D.copy()
    D2[5] = np.nan  # a bin with no valid trial
    gapped = A.population_arrays(D2, D2, n_pcs=2)
    assert np.isnan(gapped["pca_real"][5]).all() and np.isfinite(np.delete(gapped["pca_real"], 5, 0)).all()


def test_neuron_metrics_agree_with_eirnn_metrics():
    rng = np.random.default_rng(1)
    K, T, N = 30, 40, 5
    target = rng.poisson(3.0, size=(K, T, N)) / 0.025
    model = np.abs(target + rng.normal(0, 20, size=(K, T, N)))
    mask = np.ones((K, T, N), bool)
    mask[:5, 30:] = False
    val = {"model_rates": model, "target_rates": np.where(mask, target, np.nan), "mask": mask}
    out = A.neuron_metrics(val, np.array([True, True, False, True, False]), 25.0)
    np.testing.assert_allclose(out["per_neuron_correlation"], M.psth_correlation(model, target, mask))
    np.testing.assert_allclose(out["per_neuron_fano_target"], M.fano_factor(target, mask, bin_size_ms=25.0))
    np.testing.assert_allclose(out["per_neuron_fano_model"], M.model_fano_factor(model, mask, bin_size_ms=25.0))
    np.testing.assert_allclose(out["per_neuron_mean_rate_target"], [target[..., n][mask[..., n]].mean() for n in range(N)])
    psth = np.stack([target[..., n][:, :].mean(0) for n in range(N)], 1)
    psth[30:] = np.stack([target[5:, 30:, n].mean(0) for n in range(N)], 1)
    np.testing.assert_allclose(out["per_neuron_variance_target"], psth.var(0))
    assert out["neuron_ei_labels"].tolist() == [0, 0, 1, 0, 1]


@pytest.mark.parametrize("kwargs", [{"input_embedding": "attention", "embed_dim": 8, "n_heads": 2, "learnable_h0": True},
                                    {"rank": 3}])
def test_weight_arrays_are_the_effective_weights(kwargs):
    from eirnn.models import EIRNN

    model = EIRNN(14, np.array([True] * 6 + [False] * 3), n_hidden=5, seed=3, **kwargs)
    w = A.weight_arrays(model)
    n = model.n_units
    np.testing.assert_array_equal(w["W_rec"], model.W_rec.detach().numpy())
    assert w["W_rec"].shape == (n, n) and np.all(w["W_rec"][:, w["E_mask"]] >= 0) and np.all(w["W_rec"][:, w["I_mask"]] <= 0)
    np.testing.assert_allclose(w["tau_ms"], 50.0, rtol=1e-5)
    assert w["recorded_mask"].sum() == 9 and w["W_out"].shape == (2, int(w["E_mask"].sum()))
    assert ("attention_W_K" in w) == (kwargs.get("input_embedding") == "attention")
    assert ("W_rec_U" in w) == ("rank" in kwargs)


def test_find_checkpoint_falls_back_from_best_to_last(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(ExportError, match="best.ckpt"):
        find_checkpoint(tmp_path)
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert find_checkpoint(tmp_path).name == "last.ckpt"
    with pytest.raises(ExportError, match="interrupted.ckpt"):
        find_checkpoint(tmp_path, "interrupted")


def test_report_renders_summary_metrics_config_and_files(tmp_path):
    summary = {"best": {"epoch": 9, "val/psth_corr": 0.41}, "final": {"epoch": 19, "val/psth_corr": 0.40},
               "epochs_trained": 20, "early_stopped": True, "train_time_s": 9252}
    fm = {"checkpoint": "checkpoints/best.ckpt", "checkpoint_epoch": 9, "psth_corr": 0.41, "psth_corr_E": 0.45,
          "psth_corr_I": 0.3, "n_E": 2, "n_I": 1, "n_val_trials": 7}
    per = {"neuron_ei_labels": np.array([0, 0, 1]), "per_neuron_fano_model": np.array([1.0, 2.0, 4.0]),
           "per_neuron_fano_target": np.array([2.0, 2.0, 2.0]), "per_neuron_mean_rate_model": np.ones(3),
           "per_neuron_mean_rate_target": np.ones(3)}
    cfg = {"seed": 1, "trainer": {"max_epochs": 50}, "callbacks": {"early_stopping": {"patience": 10}},
           "model": {"tau": 50.0}}
    files = {"weights": [{"path": "weights/W_rec.npy", "shape": [3, 3], "dtype": "float32"}]}
    history = [{"epoch": e, "epoch_time_s": 462.6} for e in range(20)]
    text = render_report(tmp_path, summary, fm, cfg, files, per_neuron=per, history=history)
    assert "| best val/psth_corr | 0.4100 at epoch 10 |" in text
    assert "early stopping (no improvement of the monitored metric for 10 epochs)" in text
    assert "| Fano factor, model (mean) | 2.33 | 1.50 | 4.00 |" in text
    assert "| `model.tau` | `50.0` |" in text and "| `W_rec.npy` | (3, 3) | float32 |" in text
    assert "2h 34m 12s (this training call); sum of epoch times over all 20 logged epochs 2h 34m 12s" in text
    assert format_duration(75) == "1m 15s"


# ---------------------------------------------------------------- figures
def test_training_curves_leave_a_blow_up_epoch_off_scale():
    """One diverging first epoch (seen on the real session: train loss 3e11) must not flatten the curves."""
    from eirnn.report import figures as F

    history = [{"epoch": e, "train/loss": 3.1e11 if e == 0 else 2.0 - 0.01 * e, "train/L_neuron": 0.9 - 0.002 * e,
                "val/L_neuron": 0.8 - 0.001 * e, "val/psth_corr": 0.1 + 0.01 * e, "lr": 5e-3} for e in range(30)]
    fig = F.training_curves(history)
    ax = fig.axes[0]
    assert ax.get_yscale() == "linear" and ax.get_ylim()[1] < 3.0
    assert any("off scale: train total: 3.1e+11 at epoch 1" in t.get_text() for t in ax.texts)
    calm = F.training_curves(history[1:])  # nothing off scale: no note
    assert not calm.axes[0].texts and calm.axes[0].get_ylim()[1] < 3.0


@pytest.mark.slow
def test_figures_name_e_and_i():
    from eirnn.report import figures as F

    rng = np.random.default_rng(0)
    exc = np.array([True] * 6 + [False] * 3)
    T = 20
    fig = F.best_worst_neurons(rng.random((T, 9)), rng.random((T, 9)), rng.random(9), exc, time_ms=np.arange(T) * 25.0)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["data", "model, E neuron", "model, I neuron"]
    W = np.abs(rng.normal(size=(12, 12))) * np.where(np.r_[exc, [True] * 2, [False]], 1, -1)
    fig = F.weight_matrices(W, rng.normal(size=(12, 5)), np.r_[exc, [True] * 2, [False]])
    fig.canvas.draw()
    axes = [c for a in fig.axes for c in (a, *a.child_axes)]  # the E/I labels sit on secondary axes
    labels = {t.get_text(): t.get_color() for a in axes for t in a.get_xticklabels() + a.get_yticklabels()}
    assert labels["E (8)"] == F.E_COLOR and labels["I (4)"] == F.I_COLOR


def test_report_descriptions_follow_the_session():
    """A non-SC session's files are described with its own factors, event and inputs; SC keeps its wording."""
    from eirnn.report.report import DESCRIPTIONS, session_descriptions

    d, fig = session_descriptions({"factors": ["side", "contrast"], "alignment_event": "cue_time",
                                   "input_names": ["stim", "go"]})
    assert d["val_trial_factors"].startswith("side, contrast") and d["condition_table"].startswith("side, contrast")
    assert d["time_ms"] == "bin centres, ms from cue_time" and "(stim, go)" in d["val_inputs"]
    assert "side" in d["location_labels"] and "location" not in fig["pca_state_space"]
    sc, _ = session_descriptions({"factors": ["location", "identity", "reward", "salience"],
                                  "alignment_event": "fixation_on"})
    assert sc["time_ms"] == DESCRIPTIONS["time_ms"] and sc["location_labels"] == DESCRIPTIONS["location_labels"]
    assert session_descriptions(None)[0] == DESCRIPTIONS


def test_report_resume_line_names_the_checkpoint_that_exists():
    from eirnn.report.report import _stopped_line

    line = _stopped_line({"interrupted": "SIGTERM", "run_dir": "/r", "interrupted_checkpoint": "/r/checkpoints/last.ckpt"}, {})
    assert "ckpt_path=/r/checkpoints/last.ckpt hydra.run.dir=/r" in line and "interrupted.ckpt" not in line
    assert "ckpt_path=/r/checkpoints/interrupted.ckpt hydra.run.dir=/r" in _stopped_line(
        {"interrupted": "SIGINT", "run_dir": "/r"}, {})


def test_time_axis_label_names_the_sessions_alignment_event():
    import numpy as np

    from eirnn.report import figures as F

    assert F.time_label(np.arange(3.0), "fixation_on") == "time from fixation onset (ms)"
    assert F.time_label(np.arange(3.0), "cue_time") == "time from cue_time (ms)"
    assert F.time_label(None, "cue_time") == "time bin"
    fig = F.best_worst_neurons(np.ones((5, 2)), np.ones((5, 2)), np.array([0.5, 0.1]), np.array([True, False]),
                               time_ms=np.arange(5.0), n=1, align_event="cue_time")
    assert fig.axes[0].get_xlabel() == "time from cue_time (ms)"


def test_cli_summary_metric_is_n_a_when_missing():
    from eirnn.export import _f4

    assert _f4(float("nan")) == "n/a" and _f4(None) == "n/a" and _f4(0.12345) == "0.1235"
