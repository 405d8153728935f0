"""Issue 18: console / train.log, one TensorBoard axis, HParams, dashboard scalars, figures, export --out."""
from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
N_EPOCHS = 12


# ------------------------------------------------------------------ loggers
def test_tensorboard_logger_puts_every_entry_at_epoch_plus_one(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from eirnn.training.loggers import EpochTensorBoardLogger

    lg = EpochTensorBoardLogger(save_dir=str(tmp_path), name="tb", version="", default_hp_metric=False)
    lg.log_metrics({"train/loss": 1.0, "epoch": 0}, step=13)    # Lightning: step = optimiser steps
    lg.log_metrics({"val/psth_corr": 0.2, "epoch": 0}, step=13)
    lg.log_metrics({"train/loss": 0.5, "epoch": 1}, step=26)
    lg.log_hyperparams({"optim.lr": 5e-3, "model.rank": 20}, metrics={"hp/best_psth_corr": 0.2})
    lg.finalize("success")
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2]
    assert [e.step for e in acc.Scalars("val/psth_corr")] == [1]
    assert "epoch" not in acc.Tags()["scalars"]
    assert [e.step for e in acc.Scalars("hp/best_psth_corr")] == [2]  # on the axis: the last epoch
    hp = yaml.safe_load((tmp_path / "tb" / "hparams.yaml").read_text())
    assert hp == {"optim.lr": 5e-3, "model.rank": 20}  # not {} (Lightning writes it before any HParams)


def test_csv_logger_one_row_per_epoch(tmp_path):
    from eirnn.training.loggers import EpochCSVLogger

    lg = EpochCSVLogger(save_dir=str(tmp_path), name="csv", version="")
    for epoch in range(3):
        lg.log_metrics({"train/loss": 1.0 / (epoch + 1), "epoch": epoch}, step=10 * epoch)
        lg.log_metrics({"val/psth_corr": 0.1 * epoch, "epoch": epoch}, step=10 * epoch + 5)
    lg.log_hyperparams({"seed": 1})
    lg.finalize("success")
    rows = list(csv.DictReader(open(tmp_path / "csv" / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert all(r["train/loss"] and r["val/psth_corr"] for r in rows) and "epoch" not in rows[0]
    assert yaml.safe_load((tmp_path / "csv" / "hparams.yaml").read_text()) == {"seed": 1}


def test_run_hparams_resolved_numbers_choices_counts(compose, tmp_path):
    from eirnn.training.loggers import run_hparams

    cfg = compose(["debug=fast", "tags=[pilot,lowrank]", "model.tau_inh=null"], tmp_path)
    model = torch.nn.Module()
    model.recurrent = torch.nn.Linear(3, 3, bias=False)
    model.W_in = torch.nn.Parameter(torch.zeros(3, 2))
    hp = run_hparams(cfg, model)
    assert hp["seed"] == 42 and hp["data.split_seed"] == 42          # ${seed} resolved, a number
    assert isinstance(hp["optim.lr"], float) and isinstance(hp["trainer.max_epochs"], int)
    assert "model.tau_inh" not in hp and "None" not in hp.values()   # unset: no column, never 'None'
    assert not any(k.startswith(("threads", "paths", "callbacks", "logger", "trainer.accelerator", "hydra"))
                   for k in hp)
    assert not any(k.endswith("_target_") for k in hp)
    assert hp["choice/model"] == "eirnn" and hp["choice/data"] == "synthetic"
    assert hp["tags"] == "pilot,lowrank"
    assert hp["params/total"] == 9 + 6 and hp["params/recurrent"] == 9 and hp["params/W_in"] == 6
    assert all(isinstance(v, (int, float, str, bool)) for v in hp.values())


@pytest.mark.parametrize("choice,expected", [("csv", ["EpochCSVLogger"]), ("many", ["EpochCSVLogger", "EpochTensorBoardLogger"]),
                                             ("tensorboard", ["EpochTensorBoardLogger"]), ("none", [])])
def test_logger_choices(compose, tmp_path, choice, expected):
    from eirnn.train import _instantiate_dict

    loggers = _instantiate_dict(compose([f"logger={choice}"], tmp_path).get("logger"))
    assert sorted(type(lg).__name__ for lg in loggers) == expected
    assert all(Path(lg.log_dir).parent == tmp_path for lg in loggers)  # inside the run folder


# ------------------------------------------------------------------ console
def test_lightning_info_lines_only_through_root(monkeypatch):
    import lightning  # noqa: F401  (adds its stderr handler at import)

    from eirnn.training.console import _NotOnConsole, setup_run_logging

    root = logging.getLogger()
    console = logging.StreamHandler(sys.stdout)
    monkeypatch.setattr(root, "handlers", [console])
    lg = logging.getLogger("lightning")
    monkeypatch.setattr(lg, "handlers", list(lg.handlers) + [logging.StreamHandler(sys.stderr)])
    monkeypatch.setattr(lg, "propagate", False)
    setup_run_logging()
    assert not lg.handlers and lg.propagate
    assert any(isinstance(f, _NotOnConsole) for f in console.filters)
    rec = logging.LogRecord("x", logging.INFO, "", 0, "m", (), None)
    rec.console = False
    assert not console.filters[0].filter(rec)


def test_config_tree_resolved(compose, tmp_path):
    from eirnn.training.console import config_tree

    tree = config_tree(compose(["debug=fast"], tmp_path))
    lines = tree.splitlines()
    assert lines[0] == "config" and "├── seed: 42" in lines and "├── model" in lines
    assert "├── ckpt_path: null" in lines and "├── print_config: true" in lines  # YAML spelling
    assert any(line.endswith(" split_seed: 42") for line in lines)  # ${seed} resolved
    assert "└── data" in lines and not any("hydra" in line for line in lines if line.startswith(("├", "└")))


def test_progress_bar_only_on_a_terminal(monkeypatch):
    from eirnn.training.callbacks import EpochProgressBar

    bar = EpochProgressBar()
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False, raising=False)
    assert not bar._want_bar()
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    assert bar._want_bar() and not EpochProgressBar(bar="false")._want_bar()
    with pytest.raises(ValueError, match="callbacks.progress.bar"):
        EpochProgressBar(bar="sometimes")


# ------------------------------------------------------------------ dashboard
def test_epoch_scalars_spectral_radius_currents_rates():
    from eirnn.models import EIRNN
    from eirnn.training.dashboard import epoch_scalars, validation_sums

    exc = np.array([1, 1, 1, 0, 0], bool)
    model = EIRNN(n_inputs=3, recorded_is_excitatory=exc, n_hidden=3, dt=25.0, seed=0)
    g = torch.Generator().manual_seed(0)
    u = torch.rand(6, 10, 3, generator=g)
    with torch.no_grad():
        out = model(u, noise=False)
    target = torch.rand(6, 10, 5, generator=g) * 20
    mask = torch.ones(6, 10, 5, dtype=torch.bool)
    mask[:, 8:] = False
    v = {"rates": out.rates[..., :5], "target": target, "mask": mask,
         "condition": torch.tensor([0, 0, 1, 1, 2, 2]), **validation_sums(out.rates, mask)}
    s = epoch_scalars(model, v)
    W = (model.W_rec * model.rate_scale).detach().double()
    assert s["dynamics/spectral_radius"] == pytest.approx(float(torch.linalg.eigvals(W).abs().max()))
    assert s["dynamics/spectral_radius"] == pytest.approx(0.9, rel=1e-4)  # the init's model.spectral_radius
    assert s["currents/E"] > 0 > s["currents/I"] and s["currents/I_over_E"] == pytest.approx(-s["currents/I"] / s["currents/E"])
    rbar = out.rates.detach()[:, :8].mean((0, 1)).double()
    ex = model.is_excitatory
    assert s["currents/E"] == pytest.approx(float((model.W_rec.detach().double()[:, ex] @ rbar[ex]).mean()), rel=1e-5)
    assert s["rates/data_E"] == pytest.approx(float(target[:, :8, :3].mean()), rel=1e-5)
    assert s["rates/model_I"] == pytest.approx(float(out.rates[:, :8, 3:5].mean()), rel=1e-5)
    assert -1 <= s["val/condition_psth_corr"] <= 1


def test_psth_figure_ms_events_and_ei_legend():
    from eirnn.plotting import E_COLOR, I_COLOR, psth_grid_figure

    rng = np.random.default_rng(0)
    T, N = 40, 10
    exc = np.array([True] * 8 + [False] * 2)
    corr = np.linspace(0.9, -0.5, N)  # both I neurons rank in the middle: still shown
    t = np.arange(T) * 25.0 - 200.0
    fig = psth_grid_figure(rng.random((T, N)), rng.random((T, N)), corr, is_excitatory=exc, n_neurons=4,
                           time_ms=t, events_ms={"fixation": 0.0, "go": 500.0})
    labels = [text.get_text() for text in fig.legends[0].get_texts()]
    assert labels == ["data", "model (E neuron)", "model (I neuron)", "fixation", "go"]
    axes = fig.axes
    assert all(ax.get_xlabel() == "time (ms)" for ax in axes)
    colors = {line.get_color() for ax in axes for line in ax.get_lines()}
    assert E_COLOR in colors and I_COLOR in colors
    vlines = [line for line in axes[0].get_lines() if line.get_linestyle() == "--"]
    assert sorted(float(line.get_xdata()[0]) for line in vlines) == [0.0, 500.0]


def test_event_markers_from_inputs():
    from eirnn.data import SessionDataModule
    from eirnn.training.dashboard import event_markers_ms

    dm = SessionDataModule(synthetic={"seed": 0, "n_trials": 60}, batch_size=0)
    dm.setup("fit")
    ev = event_markers_ms(dm)
    assert {"fixation", "target", "go", "reward"} <= set(ev)
    assert ev["fixation"] <= ev["target"] <= ev["go"] <= ev["reward"]
    t = dm.session.time_axis_ms
    assert all(t[0] <= x <= t[-1] for x in ev.values())


# ------------------------------------------------------------------ epoch convention
def test_evaluation_md_counts_epochs_from_one():
    from eirnn.evaluate import _epoch1

    assert _epoch1(504) == "505" and _epoch1(None) == "n/a"


# ------------------------------------------------------------------ end to end (redirected stdout)
@pytest.fixture(scope="module")
def redirected_run(tmp_path_factory):
    """One tiny training as on a cluster: stdout and stderr redirected to files."""
    tmp = tmp_path_factory.mktemp("i18")
    run = tmp / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    cmd = [sys.executable, "-m", "eirnn.train", "debug=fast", "threads=1", f"hydra.run.dir={run}",
           f"trainer.max_epochs={N_EPOCHS}", "logger=many", "callbacks.progress.print_every=2",
           "callbacks.figures.every_n_epochs=2", "callbacks.early_stopping.patience=3",
           "callbacks.early_stopping.min_delta=0.5", "data.synthetic.n_trials=60", "model.n_hidden=6",
           "tags=[smoke]"]
    with open(tmp / "stdout.txt", "w") as out, open(tmp / "stderr.txt", "w") as err:
        proc = subprocess.run(cmd, cwd=tmp, env=env, stdout=out, stderr=err, timeout=600)
    assert proc.returncode == 0, (tmp / "stderr.txt").read_text()[-3000:]
    return run, (tmp / "stdout.txt").read_text(), (tmp / "stderr.txt").read_text()


@pytest.mark.slow
def test_redirected_stdout_readable_and_train_log_complete(redirected_run):
    run, stdout, stderr = redirected_run
    assert "\r" not in stdout and "it/s" not in stdout and "epoch/s" not in stdout  # no tqdm frames
    assert "INFO:" not in stderr and "GPU available" not in stderr                    # Lightning's lines once
    assert stdout.count("GPU available") == 1
    assert "config (print_config=false skips this)" in stdout and "├── model" in stdout
    epoch_lines = [line.split(" - ", 1)[1] for line in stdout.splitlines() if "] - Epoch " in line]
    stop = [line for line in stdout.splitlines() if "early stopping after epoch 4:" in line]
    assert [line.split("|")[0].strip() for line in epoch_lines] == ["Epoch    2", "Epoch    4"] and len(stop) == 1
    # the value early stopping compared with (epoch 1: later gains were below min_delta) and the checkpoint's best
    assert "did not improve by more than 0.5 on " in stop[0] and "(epoch 1) for 3 epochs; best checkpoint " in stop[0]
    log = (run / "train.log").read_text()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs_trained"] == 4 and metrics["early_stopped"]
    for line in epoch_lines + [stop[0].split(" - ", 1)[1], "TRAINING COMPLETE", "GPU available",
                               "├── model"]:
        assert log.count(line) == 1, line  # every line that matters, exactly once
    best_line = next(line for line in stdout.splitlines() if line.startswith("best val/psth_corr:"))
    assert f" at epoch {metrics['best']['epoch'] + 1} " in best_line and log.count(best_line) == 1
    summary = stdout[stdout.index("TRAINING COMPLETE"):]
    assert summary.splitlines()[1].startswith("=") and "[" not in summary.splitlines()[1]  # plain block on stdout


@pytest.mark.slow
def test_tensorboard_one_axis_new_scalars_and_clean_hparams(redirected_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    run, stdout, _ = redirected_run
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "histograms": 0})
    acc.Reload()
    tags = acc.Tags()
    epochs = list(range(1, 5))
    for tag in ("train/loss", "val/psth_corr", "dynamics/spectral_radius", "currents/E", "currents/I",
                "currents/I_over_E", "rates/model_E", "rates/data_E", "rates/model_I", "rates/data_I",
                "train/skipped_steps", "val/condition_psth_corr", "lr"):
        assert [e.step for e in acc.Scalars(tag)] == epochs, tag
    assert "epoch" not in tags["scalars"]
    assert [e.step for e in acc.Histograms("val/per_neuron_corr")] == epochs
    assert [e.step for e in acc.Images("val/psth_model_vs_data")] == [1, 2, 4]
    assert all(v.value == 0 for v in acc.Scalars("train/skipped_steps"))
    card = acc.Tensors("run/model/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| `total` |" in card and "trainable parameters" in card
    best = json.loads((run / "metrics.json").read_text())["best"]
    corr = acc.Scalars("val/psth_corr")
    assert max(corr, key=lambda e: e.value).step == best["epoch"] + 1  # the summary's "at epoch N"
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    kinds = {k: v.WhichOneof("kind") for k, v in start.hparams.items()}
    assert kinds["data.split_seed"] == "number_value" and kinds["optim.lr"] == "number_value"
    assert kinds["tags"] == "string_value" and start.hparams["tags"].string_value == "smoke"
    assert start.hparams["params/total"].number_value > 0
    assert not any(k.startswith(("threads", "callbacks", "paths", "trainer.accelerator")) for k in kinds)
    hp = yaml.safe_load((run / "tensorboard" / "hparams.yaml").read_text())
    assert hp["seed"] == 42 and hp["choice/model"] == "eirnn"
    rows = list(csv.DictReader(open(run / "csv" / "metrics.csv")))
    per_epoch = [r for r in rows if r.get("train/loss")]
    assert [int(r["step"]) for r in per_epoch] == epochs and all(r["val/psth_corr"] for r in per_epoch)


@pytest.mark.slow
def test_export_out_dir(redirected_run, tmp_path):
    from eirnn.export import main

    run, _, _ = redirected_run
    before = sorted(p.name for p in run.iterdir())
    out = tmp_path / "exported"
    assert main([str(run), "--out", str(out), "--no-figures"]) == 0
    assert sorted(p.name for p in run.iterdir()) == before  # the run folder is left as it was
    manifest = json.loads((out / "artifacts.json").read_text())
    assert manifest["out_dir"] == str(out.resolve()) and (out / "weights" / "W_rec.npy").exists()
    assert (out / "training_report.md").exists() and (out / "training_log.json").exists()
    assert (out / "metrics.json").exists() and (out / "config.yaml").exists()
    best = json.loads((run / "metrics.json").read_text())["best"]
    assert manifest["final_metrics"]["checkpoint_epoch"] == best["epoch"]  # 0-based in JSON, like metrics.json
    report = (out / "training_report.md").read_text()
    assert f"Run folder: `{run.resolve()}`" in report and f"exported into `{out.resolve()}`" in report


@pytest.mark.slow
def test_export_out_never_mixes_runs(redirected_run, tmp_path, capsys):
    """--out refuses a run folder and another run's export; a stale metrics.json / training_log.json is replaced."""
    from eirnn.export import main

    run, _, _ = redirected_run
    other = tmp_path / "other_run"
    (other / "checkpoints").mkdir(parents=True)
    (other / "metrics.json").write_text('{"outcome": "completed"}')
    assert main([str(run), "--out", str(other), "--no-figures"]) == 2
    assert "is a run folder (checkpoints)" in capsys.readouterr().err
    assert (other / "metrics.json").read_text() == '{"outcome": "completed"}' and not (other / "weights").exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "artifacts.json").write_text(json.dumps({"run_dir": str(tmp_path / "elsewhere")}))
    assert main([str(run), "--out", str(foreign), "--no-figures"]) == 2
    assert "holds the export of another run" in capsys.readouterr().err
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / "metrics.json").write_text('{"stale": true}')
    (stale / "training_log.json").write_text("[]")
    assert main([str(run), "--out", str(stale), "--no-figures"]) == 0
    assert json.loads((stale / "metrics.json").read_text()) == json.loads((run / "metrics.json").read_text())
    assert json.loads((stale / "training_log.json").read_text()) == json.loads((run / "training_log.json").read_text())
    (stale / "tensorboard").mkdir()  # an SC export's condition figures land in DIR/tensorboard
    assert main([str(run), "--out", str(stale), "--no-figures"]) == 0  # exporting the same run again: fine


@pytest.mark.slow
def test_divergence_lines_once_in_train_log(compose, tmp_path, monkeypatch, capsys):
    """Non-finite steps and the DIVERGED summary reach train.log once each (handlers as Hydra sets them)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from eirnn.train import train
    from eirnn.training.objective import FitObjective

    real = FitObjective.neuron_term

    def poisoned(self, rates, target, mask):  # every training step gets a NaN gradient
        value = real(self, rates, target, mask)
        return value + rates.sum() * float("nan") if torch.is_grad_enabled() else value

    monkeypatch.setattr(FitObjective, "neuron_term", poisoned)
    root = logging.getLogger()
    fmt = logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    console, logfile = logging.StreamHandler(sys.stdout), logging.FileHandler(tmp_path / "train.log")
    for h in (console, logfile):
        h.setFormatter(fmt)
        root.addHandler(h)
    level = root.level
    root.setLevel(logging.INFO)
    try:
        cfg = compose(["debug=fast", "data.synthetic.n_trials=40", "model.n_hidden=4", "optim.max_skipped_steps=2",
                       "trainer.max_epochs=4", "print_config=false", "fit_spike_readout=false",
                       "callbacks.progress.bar=true"], tmp_path)  # as on a terminal: warnings come during the bar
        summary = train(cfg)
    finally:
        for h in (console, logfile):
            root.removeHandler(h)
            h.close()
        root.setLevel(level)
    assert summary["diverged"] and summary["epochs_trained"] == 2
    log = (tmp_path / "train.log").read_text()
    out = capsys.readouterr().out
    for line in ("epoch 1: 1 optimiser step(s) had a non-finite gradient", "epoch 2: 1 optimiser step(s)",
                 "TRAINING DIVERGED", "DIVERGED: 2 optimiser steps in a row had a non-finite gradient (epoch 2)"):
        assert log.count(line) == 1 and out.count(line) == 1, line
    pieces = out.replace("\r", "\n").splitlines()
    assert any("epoch/s" in x for x in pieces)  # the bar was drawn ...
    assert not any("epoch/s" in x and "non-finite" in x for x in pieces)  # ... and log lines are not glued onto it
    assert "├── model" not in log and "config (print_config" not in log  # print_config=false
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("train/skipped_steps")] == [(1, 1.0), (2, 2.0)]


def test_resume_warning_about_a_non_empty_checkpoint_folder_is_silenced():
    """Resuming into its own folder (ckpt_path=RUN/checkpoints/last.ckpt) prints nothing on stderr."""
    import warnings

    from eirnn.train import _quiet_third_party

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _quiet_third_party()
        warnings.warn("Checkpoint directory /r/checkpoints exists and is not empty.", UserWarning)
        warnings.warn("something else", UserWarning)
    assert [str(w.message) for w in caught] == ["something else"]


def test_validation_psth_of_the_model_is_nan_where_no_trial_has_data(compose, tmp_path):
    """The PSTH figure must not draw the model at 0 sp/s past the longest validation trial."""
    from eirnn.train import build_datamodule, build_model, build_module

    cfg = compose(["debug=fast", "data.synthetic.n_trials=40", "+data.synthetic.n_time=20", "model.n_hidden=4",
                   "logger=none", "callbacks=none"], tmp_path)
    dm = build_datamodule(cfg)
    module = build_module(cfg, build_model(cfg, dm), dm)
    n = module.model.n_recorded
    rates = torch.rand(3, 20, n) + 1.0
    mask = torch.ones(3, 20, n, dtype=torch.bool)
    mask[:, -4:] = False  # no trial reaches the last 4 bins
    _, arrays = module.compute_val_metrics({"rates": rates, "target": rates.clone(), "mask": mask})
    assert np.isnan(arrays["psth_model"][-4:]).all() and np.isnan(arrays["psth_data"][-4:]).all()
    assert np.isfinite(arrays["psth_model"][:-4]).all()


def test_summary_points_to_tensorboard_only_when_the_run_has_it(tmp_path, capsys):
    """logger=csv / none: the completion block lists what is there, no 'tensorboard --logdir'."""
    from eirnn.train import _print_summary

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "csv").mkdir()
    (tmp_path / "metrics.json").write_text("{}")
    summary = {"best": {}, "final": {}, "epochs_trained": 2, "train_time_s": 1.0, "outcome": "completed", "reason": "x"}
    _print_summary(summary, tmp_path)
    out = capsys.readouterr().out
    assert "  metrics.json, checkpoints/, csv/\n" in out and "tensorboard" not in out
    (tmp_path / "tensorboard").mkdir()
    _print_summary(summary, tmp_path)
    assert f"metrics.json, checkpoints/, tensorboard/, csv/  ->  tensorboard --logdir {tmp_path}" in capsys.readouterr().out


def test_last_epoch_line_comes_at_the_epochs_end_not_after_lightnings_stop_line(monkeypatch):
    """trainer.max_epochs=3, print_every=10: the epoch-3 line is emitted at the end of epoch 3 (so it
    precedes Lightning's "`Trainer.fit` stopped" line), and not a second time at the end of training."""
    from types import SimpleNamespace

    from eirnn.training.callbacks import EpochProgressBar

    bar = EpochProgressBar(print_every=10, bar="false")
    lines = []
    monkeypatch.setattr(bar, "_emit", lines.append)
    rec = {"epoch": 2, "train/loss": 1.0, "val/psth_corr": 0.1, "lr": 1e-3}
    module = SimpleNamespace(last_val=rec, best_val=rec, history=[rec])
    trainer = SimpleNamespace(is_global_zero=True, max_epochs=3, current_epoch=2, callbacks=[])
    bar.on_train_epoch_end(trainer, module)
    assert len(lines) == 1 and lines[0].startswith("Epoch    3 |")
    bar.on_train_end(trainer, module)
    assert len(lines) == 1
