"""End-to-end training through Hydra: compose API, CLI, multirun, resume, bad input, real data."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, tiny_overrides, train_run

# the tiny config with debug=fast's 3 epochs, the default loggers and a figure every epoch
FAST = tiny_overrides("callbacks.figures.every_n_epochs=1", drop=("data.synthetic.n_time", "trainer.max_epochs", "logger"))


def _events(path: Path) -> list[Path]:
    return list(path.rglob("events.out.tfevents.*"))


@pytest.mark.slow
def test_few_epoch_training_writes_run_folder(tmp_path):
    summary = train_run(FAST, tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["epochs_trained"] == 3
    best = metrics["best"]
    assert -1.0 <= best["val/psth_corr"] <= 1.0
    for key in ("val/psth_corr_E", "val/psth_corr_I", "val/bits_per_spike", "val/L_neuron", "val/L_trial",
                "val/true_psth_corr", "train/L_neuron", "train/L_trial", "train/balance_weight"):
        assert key in metrics["final"], key
    assert metrics["final"]["train/balance_weight"] > 0  # L_trial is balanced in, not switched off
    assert (tmp_path / "checkpoints" / "best.ckpt").exists()
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
    assert _events(tmp_path / "tensorboard")
    assert summary["best"]["val/psth_corr"] == best["val/psth_corr"]


@pytest.mark.slow
def test_tensorboard_has_losses_metrics_histogram_and_figure(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train_run(FAST, tmp_path)
    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0, "histograms": 0})
    acc.Reload()
    tags = acc.Tags()
    for tag in ("train/L_neuron", "train/L_trial", "train/L_reg", "train/balance_weight", "val/psth_corr",
                "val/bits_per_spike", "lr"):
        assert tag in tags["scalars"], (tag, tags["scalars"])
    assert "val/per_neuron_corr" in tags["histograms"]
    assert "val/psth_model_vs_data" in tags["images"]


@pytest.mark.slow
def test_training_improves_the_fit(tmp_path):
    """A short run on synthetic data must beat its own first epoch (learning actually happens)."""
    train_run(FAST + ["trainer.max_epochs=25", "callbacks.early_stopping.patience=100"], tmp_path)
    history = json.loads((tmp_path / "training_log.json").read_text())
    assert [h["epoch"] for h in history] == list(range(25))
    first, last = history[0], history[-1]
    assert last["val/psth_corr"] > first["val/psth_corr"] + 0.05
    assert last["val/L_neuron"] < first["val/L_neuron"]
    assert last["train/L_neuron"] < first["train/L_neuron"]


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [
    ["model=lowrank", "model.rank=4"],
    ["rank=lowrank_factors", "model.rank=3"],
    ["loss.balance.mode=output"],
    ["loss.balance.mode=fixed"],
    ["loss=no_ltrial"],
    ["model=unconstrained"],
])
def test_variants_train(tmp_path, overrides):
    train_run(FAST + overrides + ["trainer.max_epochs=1"], tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["final"]["val/psth_corr"] is not None


@pytest.mark.slow
def test_resume_from_checkpoint_continues(tmp_path):
    first = tmp_path / "first"
    train_run(FAST + ["trainer.max_epochs=2"], first)
    second = tmp_path / "second"
    train_run(FAST + ["trainer.max_epochs=4", f"ckpt_path={first / 'checkpoints' / 'last.ckpt'}"], second)
    metrics = json.loads((second / "metrics.json").read_text())
    assert metrics["epochs_trained"] == 4
    assert metrics["final"]["epoch"] == 3


def _run_cli(args, cwd, timeout=600):
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "eirnn.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_cli_run_prints_summary(tmp_path):
    run_dir = tmp_path / "run"
    res = _run_cli(FAST + [f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "TRAINING COMPLETE" in res.stdout and "best val/psth_corr" in res.stdout
    assert str(run_dir) in res.stdout
    assert (run_dir / ".hydra" / "config.yaml").exists()
    assert (run_dir / "metrics.json").exists()


@pytest.mark.slow
def test_two_job_multirun_writes_side_by_side(tmp_path):
    sweep = tmp_path / "sweep"
    res = _run_cli(["--multirun", *FAST, "trainer.max_epochs=1", "seed=1,2", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and (p / "metrics.json").exists())
    assert len(jobs) == 2
    for job in jobs:
        assert _events(job / "tensorboard")
        assert (job / "checkpoints" / "last.ckpt").exists()
    seeds = {json.loads((j / "metrics.json").read_text())["final"]["val/psth_corr"] for j in jobs}
    assert len(seeds) == 2  # different seeds, different runs


@pytest.mark.slow
@pytest.mark.parametrize("args,needle", [
    (["data=sc_mat", "data.path=/nonexistent/session.mat"], "session.mat"),
    (["data=sc_mat"], "data.path"),
])
def test_bad_input_gives_one_line_error_and_no_outputs(tmp_path, args, needle):
    run_dir = tmp_path / "run"
    res = _run_cli(args + [f"hydra.run.dir={run_dir}"], cwd=tmp_path, timeout=120)
    assert res.returncode == 2
    assert needle in res.stderr
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "tensorboard").exists()
    assert not (run_dir / "metrics.json").exists()


@pytest.mark.slow
@pytest.mark.realdata
def test_short_real_data_training(compose, tmp_path, real_session):
    from eirnn.train import train

    cfg = compose(["data=sc_mat", f"data.path={real_session}", "trainer.max_epochs=2", "logger=none"], tmp_path)
    summary = train(cfg)
    assert summary["epochs_trained"] == 2
    assert -1 <= summary["final"]["val/psth_corr"] <= 1
    assert summary["final"]["val/bits_per_spike"] is not None


@pytest.mark.slow
def test_auto_target_smoothing_is_chosen_on_training_trials(compose, tmp_path):
    """loss.neuron.target_smooth_sigma_bins=auto resolves to the width the smoothed-mean
    baseline picks on the training trials (never the validation trials)."""
    from eirnn.baselines import TrialSet
    from eirnn.baselines.psth import SmoothedMeanPSTH
    from eirnn.train import build_datamodule, build_model, build_module

    cfg = compose(FAST + ["loss.neuron.target_smooth_sigma_bins=auto"], tmp_path)
    dm = build_datamodule(cfg)
    dm.setup("fit")
    module = build_module(cfg, build_model(cfg, dm), dm)
    train = TrialSet.from_tensors(dm.tensors("train"), dm.session, dm.bin_size_ms)
    expected = SmoothedMeanPSTH(seed=int(cfg.seed)).fit(train).sigma_bins_
    assert module.objective.target_smooth_sigma_bins == expected
    # the validation trials do not enter the choice: changing them changes nothing
    dm._val = {k: v * 0 if hasattr(v, "dtype") and v.dtype.is_floating_point else v for k, v in dm._val.items()}
    from eirnn.baselines.psth import choose_psth_smoothing
    assert choose_psth_smoothing(dm, seed=int(cfg.seed))["sigma_bins"] == expected


@pytest.mark.parametrize("overrides,rank,mode", [
    (["model=lowrank"], 20, "product"),
    (["model=lowrank", "model.rank=5"], 5, "product"),
    (["model=lowrank", "rank=lowrank_factors"], 20, "factors"),  # the rank group decides how Dale applies
    (["rank=lowrank_factors", "model=lowrank", "model.rank=3"], 3, "factors"),
])
def test_lowrank_model_composes_with_the_rank_group(compose, tmp_path, overrides, rank, mode):
    cfg = compose(overrides, tmp_path)
    assert (cfg.model.rank, cfg.model.lowrank_dale) == (rank, mode)
