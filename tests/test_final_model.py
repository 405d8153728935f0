"""The final-model run (experiment=final_model): config, artifacts, training log, interruption
and exact resume, determinism, the CLI's signal handling, and a short run on the real session."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from conftest import REPO, compose_config, train_run

# A tiny synthetic version of the final run: same callbacks, export and model kind
# (attention embedding, learnable h0), small enough for CI. lr 2e-4: at the seed's 1e-3
# this tiny network's recurrence can blow up within a few epochs (see the report).
TINY = [
    "experiment=final_model", "data=synthetic", "data.path=null", "data.synthetic.n_trials=40",
    "model.n_hidden=4", "model.embed_dim=8", "model.n_heads=2", "logger=none", "optim.lr=2e-4",
    "callbacks.periodic_checkpoint.every_n_epochs=2", "trainer.max_epochs=4",
]
N_EPOCHS = 4
FIGURES = ["training_curves", "per_neuron_correlation_histogram", "per_neuron_correlation_scatter",
           "best_worst_neurons", "weight_matrices", "h0_distribution", "attention_patterns", "pca_trajectories",
           "pca_state_space", "fano_factor_comparison", "condition_psth_grid", "selectivity_scatter"]


class SignalAt(L.Callback):
    """Test helper: sends ``signum`` to this process when epoch ``epoch`` (0-based) starts."""

    def __init__(self, epoch: int, signum: int):
        super().__init__()
        self.epoch, self.signum = int(epoch), int(signum)

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            os.kill(os.getpid(), self.signum)


def _state(ckpt_path: Path) -> dict:
    return torch.load(ckpt_path, map_location="cpu", weights_only=True)["state_dict"]


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def reference_and_console(tmp_path_factory):
    """An uninterrupted tiny final-model run: (run_dir, summary, what it printed on stdout).

    ``print_every=2`` (console only: the results do not depend on it) puts two short
    epoch lines into the 4 epochs.
    """
    import contextlib
    import io

    out = tmp_path_factory.mktemp("final_ref")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):  # the progress bar, the lines and the blocks all go to sys.stdout
        summary = train_run(TINY + ["callbacks.progress.print_every=2", "callbacks.progress.bar=true"], out)  # as on a terminal
    return out, summary, buf.getvalue()


@pytest.fixture(scope="module")
def reference(reference_and_console):
    """An uninterrupted tiny final-model run: (run_dir, summary)."""
    return reference_and_console[:2]


# ------------------------------------------------------------------ config
def test_final_model_config_follows_the_lab_plan(monkeypatch, tmp_path):
    cfg = compose_config(["experiment=final_model"], tmp_path)
    m = cfg.model
    assert (m.input_embedding, m.embed_dim, m.n_heads, m.learnable_h0, m.h0_init) == ("attention", 56, 4, True, 0.1)
    assert (m.tau, m.noise_scale, m.spectral_radius, m.learnable_alpha, m.learnable_tau) == (50.0, 0.1, 0.9, "none", "none")
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.grad_clip) == ("adam", 5e-3, 1.0)
    assert (cfg.scheduler.name, cfg.scheduler.factor, cfg.scheduler.patience, cfg.scheduler.min_lr) == ("plateau", 0.5, 50, 1e-5)
    assert (cfg.trainer.max_epochs, cfg.callbacks.early_stopping.patience) == (2000, 300)
    assert (cfg.loss.balance.mode, cfg.loss.balance.ltrial_scale, cfg.loss.reg.lambda_l2) == ("param", 0.5, 1e-4)
    assert (cfg.loss.neuron.lambda_scale, cfg.loss.neuron.lambda_var) == (0.1, 0.05)
    assert cfg.seed == 42 and cfg.callbacks.periodic_checkpoint.every_n_epochs == 100
    assert cfg.callbacks.detailed_report.every_n_epochs == 100
    assert cfg.export.checkpoint == "best"
    # the session: ../shared/data relative to the working directory, or EIRNN_SESSION
    monkeypatch.delenv("EIRNN_SESSION", raising=False)
    assert cfg.data.path == "../shared/data/rnn_export_Newton_08_14_2025_SC.mat"
    monkeypatch.setenv("EIRNN_SESSION", "/somewhere/else.mat")
    assert compose_config(["experiment=final_model"], tmp_path).data.path == "/somewhere/else.mat"
    n = compose_config(["experiment=final_model", "callbacks.periodic_checkpoint.every_n_epochs=7"], tmp_path)
    assert n.callbacks.detailed_report.every_n_epochs == 7


# --------------------------------------------------------------- artifacts
@pytest.mark.slow
def test_run_folder_has_every_artifact(reference):
    run, summary = reference
    ck = run / "checkpoints"
    for name in ("best.ckpt", "last.ckpt", "epoch0002.ckpt", "epoch0004.ckpt"):
        assert (ck / name).exists(), name
    assert not (ck / "interrupted.ckpt").exists()

    w = {p.stem: np.load(p) for p in (run / "weights").glob("*.npy")}
    n = w["W_rec"].shape[0]
    exc, rec = w["E_mask"], w["recorded_mask"]
    n_rec = int(rec.sum())
    assert w["W_rec"].shape == (n, n) and np.all(np.diag(w["W_rec"]) == 0)
    assert np.all(w["W_rec"][:, exc] >= 0) and np.all(w["W_rec"][:, ~exc] <= 0)  # Dale's law, by column
    assert np.array_equal(w["I_mask"], ~exc) and rec[:n_rec].all() and not rec[n_rec:].any()
    assert w["W_in"].shape == (n, 8) and w["h0"].shape == (n,) and w["W_out"].shape == (2, int(exc.sum()))
    for key in ("attention_query", "attention_W_K", "attention_W_V", "attention_W_O", "attention_channel_scale"):
        assert key in w, key
    assert w["attention_query"].shape == (2, 4) and w["attention_W_O"].shape == (8, 8)

    o = {p.stem: np.load(p) for p in (run / "outputs").glob("*.npy")}
    K, T, N = o["val_model_rates"].shape
    assert N == n_rec and o["val_target_rates"].shape == (K, T, N) and o["val_mask"].shape == (K, T, N)
    assert o["val_model_psth"].shape == (T, N) and o["val_target_psth"].shape == (T, N)
    assert o["val_trial_conditions"].shape == (K,) and o["val_trial_factors"].shape == (K, 4)
    assert o["time_ms"].shape == (T,) and o["val_model_rates_all_units"].shape == (K, T, n)
    assert o["val_attention_mean"].shape == (T, 2, 14)
    np.testing.assert_allclose(o["val_attention_mean"].sum(-1), 1.0, atol=1e-5)  # softmax over channels
    m = o["val_mask"]
    with np.errstate(invalid="ignore"):  # bins with no valid trial are NaN in both
        psth = np.where(m, o["val_model_rates"], 0).sum(0) / m.sum(0)
    np.testing.assert_allclose(o["val_model_psth"], psth, rtol=1e-5)

    met = {p.stem: np.load(p) for p in (run / "metrics").glob("*.npy")}
    for key in ("per_neuron_correlation", "per_neuron_mean_rate_model", "per_neuron_mean_rate_target",
                "per_neuron_variance_model", "per_neuron_variance_target", "per_neuron_fano_model",
                "per_neuron_fano_target", "neuron_ei_labels"):
        assert met[key].shape == (N,), key
    assert np.array_equal(met["neuron_ei_labels"], (~exc[:N]).astype(int))

    pop = {p.stem: np.load(p) for p in (run / "population").glob("*.npy")}
    k = pop["pca_components"].shape[0]
    assert pop["pca_components"].shape == (k, N) and pop["pca_real"].shape == (T, k) == pop["pca_model"].shape
    assert pop["pca_explained_variance"].shape == (k,) and pop["pca_real_by_location"].shape == (4, T, k)

    for name in FIGURES:
        png = run / "figures" / f"{name}.png"
        assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name

    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["input_embedding"] == "attention" and cfg["paths"]["output_dir"] == str(run)
    assert "${" not in (run / "config.yaml").read_text()  # fully resolved
    report = (run / "training_report.md").read_text()
    for section in ("## Training Summary", "## Final Metrics", "## Model Configuration", "## Saved Files",
                    "## Code Snippets for Analysis", "W_rec.npy", "fano_factor_comparison.png"):
        assert section in report, section
    manifest = json.loads((run / "artifacts.json").read_text())
    assert manifest["figure_errors"] == {}
    assert summary["report"].endswith("training_report.md")


@pytest.mark.slow
def test_training_log_has_every_epoch_and_detailed_records(reference):
    run, _ = reference
    log = json.loads((run / "training_log.json").read_text())
    assert [r["epoch"] for r in log] == list(range(N_EPOCHS))
    for r in log:
        for key in ("train/loss", "train/L_neuron", "train/L_trial", "train/L_reg", "val/L_neuron", "val/psth_corr",
                    "lr", "epoch_time_s"):
            assert key in r, key
    detailed = [r["epoch"] for r in log if "per_neuron_corr" in r]
    assert detailed == [1, 3]  # every 2 epochs (1-based 2 and 4)
    r = log[3]
    n = len(np.load(run / "metrics" / "neuron_ei_labels.npy"))
    assert len(r["per_neuron_corr"]) == n and r["n_E"] + r["n_I"] == n
    assert np.isclose(np.nanmean(np.array(r["per_neuron_corr"], float)), r["val/psth_corr"])
    assert set(r["h0_stats"]) == {"mean", "std", "min", "max"} and r["h0_stats"]["min"] <= r["h0_stats"]["max"]
    assert r["fano_model"] > 0 and r["fano_data"] > 0
    # the checkpoints carry the extended records too
    ck = torch.load(run / "checkpoints" / "epoch0004.ckpt", map_location="cpu", weights_only=True)
    assert "per_neuron_corr" in ck["eirnn"]["history"][3]


@pytest.mark.slow
def test_export_reproduces_the_validation_metric(reference):
    run, _ = reference
    metrics = json.loads((run / "metrics.json").read_text())
    corr = np.load(run / "metrics" / "per_neuron_correlation.npy")
    labels = np.load(run / "metrics" / "neuron_ei_labels.npy")
    best = metrics["best"]
    assert np.isclose(np.nanmean(corr), best["val/psth_corr"], atol=1e-6)
    assert np.isclose(np.nanmean(corr[labels == 0]), best["val/psth_corr_E"], atol=1e-6)
    assert np.isclose(np.nanmean(corr[labels == 1]), best["val/psth_corr_I"], atol=1e-6)


@pytest.mark.slow
def test_report_snippet_loads_the_files(reference, capsys):
    from eirnn.report.report import snippet

    run, _ = reference
    exec(compile(snippet(run), "snippet", "exec"), {})
    out = capsys.readouterr().out
    assert "recorded neurons" in out and "val PSTH corr" in out


@pytest.mark.slow
def test_console_shows_bar_epoch_lines_detailed_blocks_and_summary(reference_and_console):
    run, summary, out = reference_and_console
    raw = out.replace("\r", "\n").splitlines()
    # the epoch progress bar (tqdm, one bar over epochs, redrawn with \r) reached its end
    assert any(l.startswith("train:") and f"{N_EPOCHS}/{N_EPOCHS}" in l and "psth_corr=" in l for l in raw), out[-3000:]
    lines = [l for l in raw if l.strip() and not l.startswith("train:")]  # the text printed above the bar
    # a short line every print_every (2) epochs, with the loss terms, the metric, lr and time
    short = [l for l in lines if l.startswith("Epoch ") and "|" in l]
    assert [int(l.split("|")[0].split()[1]) for l in short] == [2, 4], short
    assert all("train_loss" in l and "L_trial" in l and "psth_corr" in l and "lr" in l for l in short)
    # a detailed block every N (2) epochs, each ending with its periodic checkpoint
    for e in (2, 4):
        i = lines.index(f"=== Epoch {e} detailed report ===")
        block = lines[i + 1: i + 6]
        assert block[0].startswith("  E neurons: mean_corr=") and "(n=" in block[0], block
        assert block[1].startswith("  I neurons: mean_corr=")
        assert block[2].startswith("  Fano factor: model=") and block[3].startswith("  h0: mean=")
        assert block[4] == f"  saved checkpoint: {run / 'checkpoints' / f'epoch{e:04d}.ckpt'}", block
    assert out.count("detailed report ===") == 2  # the last epoch (4) is a due epoch: no extra block
    # the completion summary: epochs, best (1-based epoch, E/I) and final metric, time, where the files are
    assert "TRAINING COMPLETE" in out and f"epochs trained:      {N_EPOCHS}" in out
    best = summary["best"]
    assert (f"best val/psth_corr:  {best['val/psth_corr']:.4f} at epoch {best['epoch'] + 1}  "
            f"(E {best['val/psth_corr_E']:.4f}, I {best['val/psth_corr_I']:.4f})") in out
    assert f"final val/psth_corr: {summary['final']['val/psth_corr']:.4f}" in out
    assert "training time:" in out and f"run folder:          {run}" in out
    assert f"see {run / 'training_report.md'}" in out


# ------------------------------------------------------ interruption/resume
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
def test_sigint_stops_after_the_epoch_and_resume_matches_uninterrupted_run(reference, tmp_path):
    ref_dir, ref_summary = reference
    run = tmp_path / "run"
    kill = [f"+callbacks.kill._target_={__name__}.SignalAt", "+callbacks.kill.epoch=1",
            f"+callbacks.kill.signum={int(signal.SIGINT)}"]
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN when run in the background
    summary = train_run(TINY + kill, run)
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored
    assert summary["interrupted"] == "SIGINT" and summary["exit_code"] == 130
    assert summary["epochs_trained"] == 2  # epoch 1 was finished, validated and checkpointed
    ck = run / "checkpoints" / "interrupted.ckpt"
    assert Path(summary["interrupted_checkpoint"]) == ck and ck.exists()
    assert (run / "figures" / "training_curves.png").exists() and (run / "weights" / "W_rec.npy").exists()
    assert "interrupted by SIGINT" in (run / "training_report.md").read_text()
    log = json.loads((run / "training_log.json").read_text())
    assert [r["epoch"] for r in log] == [0, 1] and "per_neuron_corr" in log[-1]  # final detailed record
    ref_log = json.loads((ref_dir / "training_log.json").read_text())
    assert [r["val/psth_corr"] for r in log] == [r["val/psth_corr"] for r in ref_log[:2]]  # same seed, same run

    resumed = train_run(TINY + [f"ckpt_path={ck}"], run)  # continue in the same folder
    assert "interrupted" not in resumed and resumed["epochs_trained"] == N_EPOCHS
    _assert_same_state(_state(run / "checkpoints" / "last.ckpt"), _state(ref_dir / "checkpoints" / "last.ckpt"))
    _assert_same_state(_state(run / "checkpoints" / "best.ckpt"), _state(ref_dir / "checkpoints" / "best.ckpt"))
    log = json.loads((run / "training_log.json").read_text())
    keys = ("val/psth_corr", "val/L_neuron", "val/L_trial", "train/loss", "lr")
    assert [[r[k] for k in keys] for r in log] == [[r[k] for k in keys] for r in ref_log]
    assert resumed["best"]["val/psth_corr"] == ref_summary["best"]["val/psth_corr"]
    for f in ("weights/W_rec.npy", "weights/h0.npy", "metrics/per_neuron_correlation.npy", "outputs/val_model_rates.npy"):
        np.testing.assert_array_equal(np.load(run / f), np.load(ref_dir / f), err_msg=f)


class CrashAt(L.Callback):
    """Test helper: raises ``RuntimeError`` when epoch ``epoch`` (0-based) starts (a crash, no signal)."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = int(epoch)

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise RuntimeError(f"simulated crash at the start of epoch {self.epoch}")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
def test_resume_from_a_periodic_checkpoint_after_a_crash_matches_uninterrupted_run(reference, tmp_path):
    """A run that dies without the signal handler's help (here an exception at the start of
    epoch 3) leaves its periodic checkpoints; ``ckpt_path=`` the last of them in the same
    run folder ends where the uninterrupted run ended."""
    ref_dir, ref_summary = reference
    run = tmp_path / "run"
    crash = [f"+callbacks.crash._target_={__name__}.CrashAt", "+callbacks.crash.epoch=2"]
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_run(TINY + crash + ["export.figures=false"], run)
    ck = run / "checkpoints" / "epoch0002.ckpt"
    assert ck.exists() and not (run / "checkpoints" / "interrupted.ckpt").exists()
    resumed = train_run(TINY + [f"ckpt_path={ck}", "export.figures=false"], run)
    assert resumed["epochs_trained"] == N_EPOCHS and "interrupted" not in resumed
    _assert_same_state(_state(run / "checkpoints" / "last.ckpt"), _state(ref_dir / "checkpoints" / "last.ckpt"))
    _assert_same_state(_state(run / "checkpoints" / "best.ckpt"), _state(ref_dir / "checkpoints" / "best.ckpt"))
    assert (run / "checkpoints" / "epoch0004.ckpt").exists()
    log = json.loads((run / "training_log.json").read_text())
    ref_log = json.loads((ref_dir / "training_log.json").read_text())
    keys = ("val/psth_corr", "val/L_neuron", "val/L_trial", "train/loss", "lr")
    assert [[r[k] for k in keys] for r in log] == [[r[k] for k in keys] for r in ref_log]
    assert [r["epoch"] for r in log if "per_neuron_corr" in r] == [1, 3]  # the detailed records survive the resume
    assert resumed["best"]["val/psth_corr"] == ref_summary["best"]["val/psth_corr"]
    np.testing.assert_array_equal(np.load(run / "metrics" / "per_neuron_correlation.npy"),
                                  np.load(ref_dir / "metrics" / "per_neuron_correlation.npy"))


@pytest.mark.slow
def test_rerun_with_the_same_seed_gives_the_same_run(tmp_path):
    small = ["data.synthetic.n_trials=40", "model.n_hidden=4", "logger=none", "trainer.max_epochs=2",
             "callbacks.figures.every_n_epochs=0", "optim.lr=2e-4"]
    a, b = train_run(small, tmp_path / "a"), train_run(small, tmp_path / "b")
    la = json.loads((tmp_path / "a" / "training_log.json").read_text())
    lb = json.loads((tmp_path / "b" / "training_log.json").read_text())
    keys = ("val/psth_corr", "val/L_neuron", "val/L_trial", "train/loss", "train/L_trial")
    assert [[r[k] for k in keys] for r in la] == [[r[k] for k in keys] for r in lb]
    _assert_same_state(_state(tmp_path / "a" / "checkpoints" / "last.ckpt"),
                       _state(tmp_path / "b" / "checkpoints" / "last.ckpt"))
    c = train_run(small + ["seed=7"], tmp_path / "c")  # and the seed matters
    assert c["final"]["val/psth_corr"] != a["final"]["val/psth_corr"]


# ------------------------------------------------------------------- CLI
def _cli(args, cwd):
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "eirnn.train", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.slow
@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_cli_signal_saves_everything_and_exits_cleanly(tmp_path, signum, code):
    run = tmp_path / "run"
    args = [a for a in TINY if not a.startswith("trainer.max_epochs")] + [
        "trainer.max_epochs=200", "callbacks.progress.print_every=1", f"hydra.run.dir={run}"]
    proc = _cli(args, tmp_path)
    t0, seen = time.time(), ""
    while time.time() - t0 < 300:  # wait for the first epoch line, then signal
        line = proc.stdout.readline()
        seen += line
        if "] - Epoch" in line or line.lstrip().startswith("Epoch") or not line:  # a pipe: epoch lines, no bar
            break
    assert "Epoch" in seen, seen[-2000:]
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=300)
    out = seen + out
    assert proc.returncode == code, err[-3000:]
    assert "Traceback" not in out + err
    assert f"INTERRUPTED by {signal.Signals(signum).name}" in out and "ckpt_path=" in out
    assert (run / "checkpoints" / "interrupted.ckpt").exists() and (run / "training_report.md").exists()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["interrupted"] == signal.Signals(signum).name and 1 <= metrics["epochs_trained"] < 200
    assert len(list((run / "figures").glob("*.png"))) == len(FIGURES)


@pytest.mark.slow
@pytest.mark.realdata
def test_final_model_on_the_real_session(tmp_path, real_session):
    run = tmp_path / "run"
    summary = train_run(["experiment=final_model", f"data.path={real_session}", "trainer.max_epochs=1", "logger=none"], run)
    assert summary["epochs_trained"] == 1
    rates = np.load(run / "outputs" / "val_model_rates.npy")
    assert rates.shape[1:] == (219, 41)
    w = np.load(run / "weights" / "W_rec.npy")
    assert w.shape == (80, 80)
    labels = np.load(run / "metrics" / "neuron_ei_labels.npy")
    assert (labels == 0).sum() == 25 and (labels == 1).sum() == 16
    assert len(list((run / "figures").glob("*.png"))) == len(FIGURES)
    cfg = json.loads((run / "config.json").read_text())
    assert Path(cfg["data"]["path"]) == real_session.resolve()
