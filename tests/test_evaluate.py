"""python -m eirnn.evaluate: reproduces the logged metric, scores baselines and the ceiling, writes outputs."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, SMALL, train_run
from eirnn.baselines import TrialSet
from eirnn.evaluate import evaluate_run, format_markdown, main, score_prediction


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train_run(SMALL, out, save_config=True)  # with .hydra/config.yaml, what Hydra writes for a CLI run
    return out


@pytest.mark.slow
def test_evaluate_reproduces_the_logged_validation_metric(run_dir):
    res = evaluate_run(run_dir, baselines=("train_mean", "condition_mean", "glm"), ceiling_splits=5,
                       baseline_kwargs={"glm": {"inner_folds": 0, "max_iter": 20, "n_basis": 3}})
    logged = json.loads((run_dir / "metrics.json").read_text())["best"]
    val = res["sets"]["val"]
    model = val["scores"]["model"]
    # same trials, same checkpoint, same validation noise seed -> the same number for the sample
    assert model["psth_corr_sample"] == pytest.approx(logged["val/psth_corr"], abs=1e-5)
    assert model["bits_per_spike_sample"] == pytest.approx(logged["val/bits_per_spike"], abs=1e-4)
    # the predicted rate is the mean over noise draws: close to, but not the same as, one draw
    assert model["psth_corr"] == pytest.approx(logged["val/psth_corr"], abs=0.05)
    assert model["psth_corr"] != model["psth_corr_sample"]
    assert res["noise_draws"] == 10 and res["calibrated"]
    # calibration (fitted on the training trials) changes bits/spike only
    raw = evaluate_run(run_dir, baselines=(), ceiling_splits=2, write=False, calibrate=False)["sets"]["val"]["scores"]
    for k in ("psth_corr", "condition_psth_r2_raw", "condition_psth_r2_fixaligned", "fano_within_2x", "L_trial"):
        assert raw["model"][k] == pytest.approx(model[k], abs=1e-9, nan_ok=True), k
    # issue 15: the condition metrics score the calibrated rates (here: the spike readout's), *_raw the network's
    for k in ("marginal_corr_location", "selectivity_r_reward", "selectivity_auc_r_identity",
              "condition_psth_corr_fixaligned"):
        assert k in model and k in val["ceiling"], k
    assert raw["model"]["bits_per_spike"] == pytest.approx(model["bits_per_spike_uncal"], abs=1e-9)
    # the run's fitted spike readout (eirnn/models/readout.py) is the model's single-trial
    # prediction; calibrating it again on the same training trials changes little
    assert model["bits_per_spike_uncal"] != model["bits_per_spike_network"]
    assert model["bits_per_spike"] == pytest.approx(model["bits_per_spike_uncal"], abs=2e-3)
    assert model["L_trial"] == pytest.approx(logged["val/L_trial"], rel=1e-3)  # the logged draw
    cal = res["calibration"]["model"]
    assert len(cal["gain"]) == len(res["is_excitatory"]) and min(cal["gain"]) >= 0
    assert set(val["scores"]) == {"model", "train_mean", "condition_mean", "glm"}
    for name, s in val["scores"].items():
        for k in ("psth_corr", "psth_corr_E", "psth_corr_I", "condition_psth_corr", "condition_psth_r2",
                  "bits_per_spike", "bits_per_spike_E", "bits_per_spike_uncal", "fano_within_2x", "L_trial"):
            assert k in s, (name, k)
    assert 0.0 < val["ceiling"]["psth_corr"] <= 1.0
    assert val["n_trials"] == res["data"]["n_val"] == 32
    assert "val_all" not in res["sets"]  # not a CV fold
    assert res["train_fit"]["model"]["psth_corr"] is not None
    # outputs: JSON (NaN -> null), markdown table, TensorBoard scalars
    saved = json.loads((run_dir / "evaluation.json").read_text())
    assert saved["sets"]["val"]["scores"]["model"]["psth_corr"] == pytest.approx(model["psth_corr"])
    md = (run_dir / "evaluation.md").read_text()
    assert "| model |" in md and "noise ceiling" in md and "selected on these validation trials" in md
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "eval/val/model/psth_corr" in tags and "eval/val/ceiling/psth_corr" in tags
    assert "eval/val/glm/bits_per_spike" in tags


@pytest.mark.slow
def test_last_checkpoint_and_compare(run_dir):
    res = evaluate_run(run_dir, checkpoint="last", baselines=(), extra_runs={"again": (run_dir, "best")},
                       ceiling_splits=2, write=False)
    s = res["sets"]["val"]["scores"]
    assert set(s) == {"model", "again"}
    assert res["checkpoints"]["model"]["path"].endswith("last.ckpt")
    assert res["checkpoints"]["again"]["path"].endswith("best.ckpt")


@pytest.mark.slow
def test_predicted_rate_is_the_mean_over_noise_draws(run_dir):
    """predict_expected_rates: S draws with seeds val_seed + s, averaged; S = 0 is the noise-free
    pass; the sample is the val_seed draw."""
    from eirnn.evaluate import load_config, load_module, predict_expected_rates, predict_rates
    from eirnn.train import build_datamodule

    cfg = load_config(run_dir)
    dm = build_datamodule(cfg)
    module, _ = load_module(cfg, dm, run_dir / "checkpoints" / "last.ckpt")
    val = dm.tensors("val")
    draws = [predict_rates(module, val, seed=module.val_seed + k) for k in range(3)]
    mean, sample = predict_expected_rates(module, val, noise_draws=3)
    np.testing.assert_allclose(mean, np.mean(draws, axis=0), rtol=1e-12)
    np.testing.assert_array_equal(sample, draws[0])
    assert not np.allclose(draws[0], draws[1])  # the noise is real
    free, _ = predict_expected_rates(module, val, noise_draws=0)
    np.testing.assert_array_equal(free, predict_rates(module, val, noise=False))
    with pytest.raises(ValueError):
        predict_expected_rates(module, val, noise_draws=-1)


def test_score_prediction_perfect_and_by_type():
    rng = np.random.default_rng(0)
    T, N = 30, 4
    mu = 20 + 15 * np.sin(np.arange(T)[:, None] / 4 + np.arange(N))
    lam = np.broadcast_to(mu, (40, T, N)).copy()
    data = rng.poisson(lam * 0.025) / 0.025
    cond = np.arange(40) % 4
    trials = TrialSet(np.zeros((40, T, 1)), data, np.ones(data.shape, bool), cond, 25.0)
    exc = np.array([True, True, False, False])
    pred = lam.copy()
    pred[..., 2:] = 40 - lam[..., 2:]  # I neurons anti-correlated
    s, per = score_prediction(pred, trials, exc)
    assert s["psth_corr_E"] > 0.9 and s["psth_corr_I"] < -0.9
    assert s["psth_corr"] == pytest.approx(np.mean(per["psth_corr"]))
    # a rate model emitting Poisson spikes vs Poisson data: Fano factors agree
    assert s["fano_within_2x"] == 1.0 and s["fano_model_median"] == pytest.approx(1.0)
    assert s["bits_per_spike_E"] > 0 and np.isnan(s["L_trial"])
    with pytest.raises(ValueError):
        score_prediction(pred[:3], trials, exc)
    md = format_markdown({"sets": {"val": {"n_trials": 40, "scores": {"m": s}, "ceiling": {}}}})
    assert "| m |" in md


@pytest.mark.slow
def test_cli_bad_input_one_line_exit_2(tmp_path, capsys):
    r = subprocess.run([sys.executable, "-m", "eirnn.evaluate", str(tmp_path / "nope")], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "no such run folder" in r.stderr
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and ".hydra/config.yaml" in err
    assert main([str(tmp_path), "--baselines", "bogus"]) == 2
    assert "unknown" in capsys.readouterr().err


@pytest.mark.slow
def test_real_data_defaults_come_with_data_sc_mat(compose, tmp_path):
    """data=sc_mat alone selects the real-data training defaults (conf/loss/sc_mat.yaml,
    conf/budget/real_data.yaml, on top of any trainer: trainer=gpu keeps 700 epochs; Adam lr
    conf/budget/real_data_lr.yaml, on top of any optimiser);
    experiment=sc_default is the same configuration; the command line still wins; the
    synthetic default keeps the package defaults."""
    import yaml
    from omegaconf import OmegaConf

    want = yaml.safe_load((REPO / "conf" / "loss" / "sc_mat.yaml").read_text())["neuron"]
    epochs = yaml.safe_load((REPO / "conf" / "budget" / "real_data.yaml").read_text())["max_epochs"]
    assert epochs == yaml.safe_load((REPO / "conf" / "trainer" / "sc_mat.yaml").read_text())["max_epochs"]
    real = compose(["data=sc_mat", "data.path=/x.mat"], tmp_path)
    for key, value in want.items():
        assert real.loss.neuron[key] == value, key
    assert real.trainer.max_epochs == epochs and real.loss.trial.enabled
    lr = yaml.safe_load((REPO / "conf" / "budget" / "real_data_lr.yaml").read_text())["lr"]
    package_lr = yaml.safe_load((REPO / "conf" / "optim" / "adam.yaml").read_text())["lr"]
    assert real.optim.lr == lr != package_lr  # the real-data step size, on top of any optimiser:
    assert compose(["data=sc_mat", "data.path=/x.mat", "optim=adamw"], tmp_path).optim.lr == lr
    assert compose(["data=sc_mat", "data.path=/x.mat", "optim.lr=3e-3"], tmp_path).optim.lr == 3e-3
    assert real.loss.neuron.var_noise_correction is False  # measured, not adopted (conf/loss/sc_mat.yaml)
    alias = compose(["experiment=sc_default", "data.path=/x.mat"], tmp_path)
    drop = ("task_name", "hydra", "paths")
    plain = lambda c: {k: v for k, v in OmegaConf.to_container(c).items() if k not in drop}  # noqa: E731
    assert plain(alias) == plain(real)
    cond = compose(["experiment=sc_conditions", "data.path=/x.mat"], tmp_path)  # the default + two changes
    assert (cond.data.batch_mode, cond.callbacks.early_stopping.patience) == ("condition", 200)
    assert (real.data.batch_mode, real.callbacks.early_stopping.patience) == ("random", 100)
    pc, pr = plain(cond), plain(real)
    differ = {k for k in pr if pc[k] != pr[k]}
    assert differ == {"data", "callbacks"}, differ
    assert {**pc["data"], "batch_mode": None} == {**pr["data"], "batch_mode": None}
    cli = compose(["data=sc_mat", "data.path=/x.mat", "loss.neuron.kind=correlation", "trainer.max_epochs=7"], tmp_path)
    assert cli.loss.neuron.kind == "correlation" and cli.trainer.max_epochs == 7
    gpu = compose(["data=sc_mat", "data.path=/x.mat", "trainer=gpu"], tmp_path)
    assert gpu.trainer.accelerator == "gpu" and gpu.trainer.max_epochs == epochs  # not trainer/default's
    gpu_final = compose(["experiment=final_model", "trainer=gpu"], tmp_path)
    assert gpu_final.trainer.accelerator == "gpu" and gpu_final.trainer.max_epochs == 2000
    other = compose(["data=sc_mat", "data.path=/x.mat", "loss=poisson_neuron"], tmp_path)
    assert other.loss.neuron.kind == "poisson"
    syn = compose([], tmp_path)
    default_loss = yaml.safe_load((REPO / "conf" / "loss" / "default.yaml").read_text())["neuron"]
    assert syn.loss.neuron.kind == default_loss["kind"] and syn.data.path is None
    assert syn.loss.neuron.var_noise_correction is False  # the lab's loss, as issue 2 measured it
    assert syn.optim.lr == package_lr
    lab = compose(["experiment=lab_best", "data=sc_mat", "data.path=/x.mat"], tmp_path)
    assert lab.loss.neuron.var_noise_correction is False and lab.optim.lr == package_lr  # its own lr wins
    for name in ("lab_ltrial_21", "lab_phase2", "final_model"):  # the lab's loss, also with data=sc_mat
        exp = yaml.safe_load((REPO / "conf" / "experiment" / f"{name}.yaml").read_text())
        assert exp["loss"]["neuron"]["var_noise_correction"] is False, name
    assert syn.trainer.max_epochs == yaml.safe_load((REPO / "conf" / "trainer" / "default.yaml").read_text())["max_epochs"]


def _export_without_eye(session, path):
    """A v7.3 export whose eye channels are absent (the datasets deleted)."""
    import h5py

    from eirnn.data import save_mat

    save_mat(session, path, version="7.3")
    with h5py.File(path, "a") as f:
        del f["input_eye_x"], f["input_eye_y"]


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["v73_zero_eye", "v73_no_eye_other_shapes", "v5_other_shapes"])
def test_real_data_config_runs_unchanged_on_other_exports(compose, tmp_path, variant):
    """The default real-data configuration (data=sc_mat, its filters and training defaults,
    nothing else) loads, trains and evaluates unchanged on exports with other trial / bin /
    neuron counts and absent or all-zero eye data."""
    import dataclasses

    from eirnn.data import load_session, make_synthetic_session, save_mat
    from eirnn.train import train

    path = tmp_path / f"{variant}.mat"
    if variant == "v73_zero_eye":
        s = make_synthetic_session(seed=5, n_trials=70, n_time=36, n_exc=5, n_inh=2, n_hidden_exc=4, n_hidden_inh=2)
        s = dataclasses.replace(s, eye_raw=np.zeros_like(s.eye_raw), eye_norm=None)
        save_mat(s, path, version="7.3")
    elif variant == "v73_no_eye_other_shapes":
        s = make_synthetic_session(seed=7, n_trials=64, n_time=44, n_exc=2, n_inh=3, n_hidden_exc=3, n_hidden_inh=2,
                                   bin_size_ms=50.0)
        _export_without_eye(s, path)
    else:
        s = make_synthetic_session(seed=6, n_trials=90, n_time=50, n_exc=3, n_inh=4, n_hidden_exc=3, n_hidden_inh=2,
                                   bin_size_ms=20.0)
        save_mat(s, path, version="5")
    from eirnn.data.session import INPUT_CHANNELS

    loaded = load_session(path)
    eye = loaded.inputs[..., [INPUT_CHANNELS.index("eye_x"), INPUT_CHANNELS.index("eye_y")]]
    if variant != "v5_other_shapes":  # absent or all-zero eye data -> exact zeros, never NaN
        assert np.array_equal(eye, np.zeros_like(eye))
    out = tmp_path / "run"
    cfg = compose(["data=sc_mat", f"data.path={path}", "trainer.max_epochs=2", "logger=none",
                   "callbacks.figures=null"], out)
    from omegaconf import OmegaConf

    (out / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, out / ".hydra" / "config.yaml")
    summary = train(cfg)
    assert summary["epochs_trained"] == 2
    res = evaluate_run(out, baselines=("train_mean",), ceiling_splits=2, noise_draws=2)
    assert res["data"]["n_neurons"] == s.n_neurons and res["data"]["n_trials_loaded"] == s.n_trials
    assert np.isfinite(res["sets"]["val"]["scores"]["model"]["psth_corr"])
    assert np.isfinite(res["sets"]["val"]["scores"]["model"]["bits_per_spike"])


def test_relative_data_path_found_from_another_directory(tmp_path, monkeypatch):
    """A run trained with a relative data.path is evaluated / exported from anywhere: the path is
    taken relative to the directory the training started in (.hydra/hydra.yaml runtime.cwd)."""
    import yaml

    from eirnn.evaluate import load_config
    from eirnn.export import load_run_config

    start, run, elsewhere = tmp_path / "lab", tmp_path / "lab" / "outputs" / "run", tmp_path / "elsewhere"
    (run / ".hydra").mkdir(parents=True)
    elsewhere.mkdir()
    (start / "session.npz").write_bytes(b"x")
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"data": {"path": "session.npz"}, "paths": {}}))
    (run / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"cwd": str(start)}}}))
    monkeypatch.chdir(elsewhere)
    assert load_config(run).data.path == str(start / "session.npz")
    assert load_run_config(run).data.path == str(start / "session.npz")
    monkeypatch.chdir(start)  # where it was started: left as written
    assert load_config(run).data.path == "session.npz"
