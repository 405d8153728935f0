"""``training_report.md``: the human summary of a run (written by :mod:`eirnn.export`).

Sections: training summary (epochs, best and final metric, how training stopped, time),
final metrics with an E/I breakdown, the configuration table, the saved files (shape,
dtype, meaning) and a Python snippet that loads the weights and outputs.
"""
from __future__ import annotations

import datetime as _dt
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from eirnn.utils import fmt_epoch, fmt_num

#: What each saved array holds (file stem -> description); shapes use K trials, T bins,
#: N recorded neurons, n units, C inputs, d embedding width, H heads, k PCs, L locations.
DESCRIPTIONS: dict[str, str] = {
    "W_rec": "recurrent weights, Dale's law and zero diagonal applied; W[i, j] is from unit j onto unit i (per sp/s)",
    "W_in": "input weights (units x input embedding)",
    "bias": "constant input of each unit",
    "W_out": "readout weights (from E units only)",
    "b_out": "readout bias",
    "h0": "initial state x[-1] (pre-activation)",
    "E_mask": "True for excitatory units",
    "I_mask": "True for inhibitory units",
    "recorded_mask": "True for the recorded neurons (the first N units); the rest are hidden units",
    "alpha": "integration constant dt/tau of each unit",
    "tau_ms": "membrane time constant of each unit (ms)",
    "rate_scale": "r = softplus(x) * rate_scale + rate_baseline",
    "rate_baseline": "r = softplus(x) * rate_scale + rate_baseline",
    "W_rec_U": "low-rank factor U of W_rec",
    "W_rec_V": "low-rank factor V of W_rec",
    "attention_query": "attention queries, one per head",
    "attention_W_K": "attention key projection",
    "attention_W_V": "attention value projection",
    "attention_W_O": "attention output projection (the embedding's last linear map)",
    "attention_channel_scale": "value-scaled channel embedding a_c (token z_c = u_c a_c + b_c)",
    "attention_channel_bias": "channel identity embedding b_c",
    "val_model_rates": "model rates on the validation trials, recorded neurons (sp/s)",
    "val_target_rates": "recorded rates on the validation trials (sp/s, NaN = missing bin)",
    "val_mask": "True where a bin is valid",
    "val_model_rates_all_units": "model rates of all units (recorded + hidden)",
    "val_model_psth": "trial-averaged model rates",
    "val_target_psth": "trial-averaged recorded rates",
    "val_inputs": "the 14 task input channels of the validation trials",
    "val_trial_conditions": "condition id of each validation trial (row of condition_table)",
    "val_trial_factors": "location, identity, reward, salience of each validation trial",
    "condition_table": "location, identity, reward, salience of each condition id",
    "val_trial_index": "index of each validation trial in the session",
    "time_ms": "bin centres, ms from fixation onset",
    "val_attention_mean": "attention weights averaged over validation trials",
    "per_neuron_correlation": "PSTH correlation, model vs data (validation trials)",
    "per_neuron_mean_rate_model": "mean rate of the model (sp/s)",
    "per_neuron_mean_rate_target": "mean rate in the data (sp/s)",
    "per_neuron_variance_model": "variance over time of the model PSTH ((sp/s)^2)",
    "per_neuron_variance_target": "variance over time of the data PSTH ((sp/s)^2)",
    "per_neuron_fano_model": "Fano factor of Poisson spikes from the model rates (eirnn.metrics.model_fano_factor)",
    "per_neuron_fano_target": "Fano factor of the recorded spike counts (eirnn.metrics.fano_factor)",
    "neuron_ei_labels": "0 = E, 1 = I",
    "pca_real": "data PSTH projected on its principal components (data mean removed)",
    "pca_model": "model PSTH projected on the same components (data mean removed)",
    "pca_components": "principal axes (loadings over neurons)",
    "pca_explained_variance": "variance of the data PSTH along each component",
    "pca_explained_variance_ratio": "fraction of the data PSTH variance along each component",
    "pca_mean": "data PSTH mean over time (the centre of the projection)",
    "pca_real_by_location": "per-target-location data PSTHs on the components",
    "pca_model_by_location": "per-target-location model PSTHs on the components",
    "location_labels": "target location of each row of the *_by_location arrays",
}

FIGURE_DESCRIPTIONS: dict[str, str] = {
    "training_curves": "losses, validation correlation (best marked), learning rate, loss terms vs epoch",
    "per_neuron_correlation_histogram": "per-neuron PSTH correlation, E and I",
    "per_neuron_correlation_scatter": "correlation vs mean firing rate, E and I",
    "best_worst_neurons": "data vs model PSTH of the 4 best and 4 worst neurons",
    "weight_matrices": "W_rec and W_in heatmaps, units sorted E | I",
    "h0_distribution": "initial state h0, E and I",
    "attention_patterns": "attention weights per head and channel, and over time",
    "pca_trajectories": "PC1-3 over time, data vs model",
    "pca_state_space": "PC1 vs PC2, data vs model, all trials and per target location",
    "fano_factor_comparison": "per-neuron Fano factor, model vs data",
}


def session_descriptions(session_info: Mapping[str, Any] | None) -> tuple[dict[str, str], dict[str, str]]:
    """:data:`DESCRIPTIONS` and :data:`FIGURE_DESCRIPTIONS` with the session's own factor names,
    alignment event and input channels (``session_info``: ``factors``, ``alignment_event``,
    ``input_names``); the SC wording when it is ``None``."""
    d, fig = dict(DESCRIPTIONS), dict(FIGURE_DESCRIPTIONS)
    if not session_info:
        return d, fig
    factors = [str(f) for f in (session_info.get("factors") or [])]
    names = ", ".join(factors) if factors else "(no condition factors)"
    d["val_trial_factors"] = f"{names} of each validation trial"
    d["condition_table"] = f"{names} of each condition id"
    align = str(session_info.get("alignment_event") or "")
    if align and align != "fixation_on":
        d["time_ms"] = f"bin centres, ms from {align}"
    inputs = [str(c) for c in (session_info.get("input_names") or [])]
    if inputs:
        d["val_inputs"] = f"the {len(inputs)} task input channels of the validation trials ({', '.join(inputs)})"
    first = factors[0] if factors else None
    if first != "location":  # the export groups by the first factor (SC: target location)
        group = f"value of {first}" if first else "group (all trials: no factors)"
        d["pca_real_by_location"] = f"data PSTHs per {group} on the components"
        d["pca_model_by_location"] = f"model PSTHs per {group} on the components"
        d["location_labels"] = (f"{first} of each row of the *_by_location arrays" if first
                                else "group of each row of the *_by_location arrays")
        fig["pca_state_space"] = f"PC1 vs PC2, data vs model, all trials and per {group}"
    return d, fig


def _f(v: Any, spec: str = ".4f") -> str:
    return fmt_num(v, spec, inf="n/a")


def format_duration(seconds: float | None) -> str:
    """``9252`` -> ``2h 34m 12s``."""
    if seconds is None or not math.isfinite(float(seconds)):
        return "n/a"
    s = int(round(float(seconds)))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h {m:02d}m {sec:02d}s" if h else (f"{m}m {sec:02d}s" if m else f"{sec}s")


def _nanmean(x: np.ndarray) -> float:
    x = np.asarray(x, float)
    return float(np.nanmean(x)) if np.isfinite(x).any() else float("nan")


def _flatten(cfg: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows = []
    for k, v in cfg.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            rows += _flatten(v, key)
        else:
            rows.append((key, v))
    return rows


def _stopped_line(summary: Mapping[str, Any], config: Mapping[str, Any]) -> str:
    trainer = config.get("trainer") or {}
    outcome = summary.get("outcome")
    if outcome in ("diverged", "failed", "unfinished") or (outcome == "completed" and not summary.get("epochs_trained")):
        return f"{outcome.upper() if outcome != 'completed' else outcome}: {summary.get('reason', '')}"
    if summary.get("interrupted"):
        ck = summary.get("interrupted_checkpoint")
        run = summary.get("run_dir")
        if not ck:
            ck = str(Path(run) / "checkpoints" / "interrupted.ckpt") if run else "checkpoints/interrupted.ckpt"
        into = f" hydra.run.dir={run}" if run else ""
        return (f"interrupted by {summary['interrupted']}; resume with "
                f"`python -m eirnn.train <same overrides> ckpt_path={ck}{into}`")
    if summary.get("early_stopped"):
        pat = ((config.get("callbacks") or {}).get("early_stopping") or {}).get("patience")
        return f"early stopping (no improvement of the monitored metric for {pat} epochs)"
    return f"max_epochs = {trainer.get('max_epochs')} reached"


def render_report(
    run_dir: Path,
    summary: Mapping[str, Any],
    final_metrics: Mapping[str, Any],
    config: Mapping[str, Any],
    files: Mapping[str, Sequence[Mapping[str, Any]]],
    monitor: str = "val/psth_corr",
    per_neuron: Mapping[str, np.ndarray] | None = None,
    history: Sequence[Mapping[str, Any]] | None = None,
    source_run: Path | None = None,
    session_info: Mapping[str, Any] | None = None,
) -> str:
    """The report as markdown text (see the module docstring); ``run_dir`` is the folder the
    report and arrays are in, ``source_run`` the run folder when that is another (``--out``)."""
    best, final = summary.get("best") or {}, summary.get("final") or {}
    history = list(history or [])
    sum_epochs = sum(float(h.get("epoch_time_s") or 0.0) for h in history)
    data = config.get("data") or {}
    descriptions, figure_descriptions = session_descriptions(session_info)
    elsewhere = source_run is not None and Path(source_run) != Path(run_dir)
    where = (f"Run folder: `{source_run}` (checkpoints, `.hydra/`, TensorBoard); exported into `{run_dir}`  "
             if elsewhere else f"Run folder: `{run_dir}`  ")
    lines = [
        "# Final Model Training Report",
        "",
        where,
        f"Written {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')} by `python -m eirnn.export` from "
        f"`{final_metrics.get('checkpoint')}` (weights of epoch {int(final_metrics.get('checkpoint_epoch', -1)) + 1}).  ",
        "Epochs are counted from 1 here and on the console; the `epoch` field of `training_log.json` counts from 0.",
        "",
        "## Training Summary",
        "",
        "| | |",
        "|---|---|",
        f"| data | `{data.get('path') or 'synthetic session'}` |",
        f"| model | {final_metrics.get('model', '')} |",
        f"| epochs trained | {summary.get('epochs_trained')} (max_epochs {(config.get('trainer') or {}).get('max_epochs')}) |",
        f"| stopped by | {_stopped_line(summary, config)} |",
        f"| best {monitor} | {_f(best.get(monitor))} at epoch {fmt_epoch(best.get('epoch'))} |",
        f"| final {monitor} | {_f(final.get(monitor))} at epoch {fmt_epoch(final.get('epoch'))} |",
        f"| training time | {format_duration(summary.get('train_time_s'))} (this training call); "
        f"sum of epoch times over all {len(history)} logged epochs {format_duration(sum_epochs)} |",
        f"| seed | {config.get('seed')} |",
        "",
        f"## Final Metrics (`{final_metrics.get('checkpoint')}`, {final_metrics.get('n_val_trials')} validation trials)",
        "",
    ]
    nE, nI = final_metrics.get("n_E"), final_metrics.get("n_I")
    rows = [("PSTH correlation (mean over neurons)", final_metrics.get("psth_corr"), final_metrics.get("psth_corr_E"),
             final_metrics.get("psth_corr_I"), ".4f")]
    if per_neuron is not None:
        lab = np.asarray(per_neuron["neuron_ei_labels"])
        e, i = lab == 0, lab == 1

        def split(key):
            a = np.asarray(per_neuron[key], float)
            return _nanmean(a), _nanmean(a[e]), _nanmean(a[i])

        rows += [
            ("Fano factor, model (mean)", *split("per_neuron_fano_model"), ".2f"),
            ("Fano factor, data (mean)", *split("per_neuron_fano_target"), ".2f"),
            ("mean rate, model (sp/s)", *split("per_neuron_mean_rate_model"), ".2f"),
            ("mean rate, data (sp/s)", *split("per_neuron_mean_rate_target"), ".2f"),
        ]
    lines += [f"| metric | all (n={(nE or 0) + (nI or 0)}) | E (n={nE}) | I (n={nI}) |", "|---|---|---|---|"]
    lines += [f"| {name} | {_f(a, s)} | {_f(b, s)} | {_f(c, s)} |" for name, a, b, c, s in rows]
    lines += [
        "",
        f"Poisson bits/spike (all neurons): {_f(final_metrics.get('bits_per_spike'))}.",
        "",
        "## Model Configuration",
        "",
        "| setting | value |",
        "|---|---|",
    ]
    skip = ("hydra", "callbacks", "logger", "paths")
    for key, value in _flatten({k: v for k, v in config.items() if k not in skip}):
        if key.split(".")[:2] in (["module", "loss"], ["module", "optim"], ["module", "scheduler"]):
            continue  # the same values as loss.*, optim.*, scheduler.*
        lines.append(f"| `{key}` | `{value}` |")
    lines += ["", "Callbacks, logger and paths: see `config.yaml` / `config.json` (the full resolved config).", "",
              "## Saved Files", ""]
    lines += [
        *([f"Checkpoints and `.hydra/` are in the run folder `{source_run}`; the rest is here.", ""]
          if elsewhere else []),
        "| file | content |", "|---|---|",
        "| `checkpoints/best.ckpt`, `last.ckpt` | best by the monitored metric; the last epoch (`ckpt_path=` resumes) |",
        "| `checkpoints/epochNNNN.ckpt` | every N completed epochs |",
        "| `checkpoints/interrupted.ckpt` | written when Ctrl+C / SIGTERM stopped training |",
        "| `training_log.json` | one record per epoch; every N epochs also per-neuron correlations, E/I means, h0 stats, Fano factors |",
        "| `metrics.json` | best and final validation metrics, epochs, time |",
        "| `config.yaml`, `config.json`, `.hydra/` | the resolved config; the composed config and overrides |",
        "| `artifacts.json` | every exported file with shape and dtype |",
        "",
    ]
    for folder in ("weights", "outputs", "metrics", "population"):
        entries = files.get(folder) or []
        if not entries:
            continue
        lines += [f"### `{folder}/`", "", "| file | shape | dtype | content |", "|---|---|---|---|"]
        for f in entries:
            stem = Path(f["path"]).stem
            lines.append(f"| `{Path(f['path']).name}` | {tuple(f.get('shape', ()))} | {f.get('dtype', '')} | "
                         f"{descriptions.get(stem, '')} |")
        lines.append("")
    figs = files.get("figures") or []
    if figs:
        lines += ["### `figures/`", "", "| file | content |", "|---|---|"]
        for f in figs:
            stem = Path(f["path"]).stem
            lines.append(f"| `{Path(f['path']).name}` | {figure_descriptions.get(stem, '')} |")
        lines.append("")
    lines += ["## Code Snippets for Analysis", "", "```python", *snippet(run_dir).splitlines(), "```", ""]
    return "\n".join(lines)


def snippet(run_dir: Path) -> str:
    """Python that loads the weights, outputs and metrics of ``run_dir`` (also used by the tests)."""
    return f'''import json
from pathlib import Path

import numpy as np

run = Path({str(run_dir)!r})
W_rec = np.load(run / "weights" / "W_rec.npy")          # [n, n]; W_rec[i, j]: unit j -> unit i
W_in = np.load(run / "weights" / "W_in.npy")            # [n, d]
h0 = np.load(run / "weights" / "h0.npy")                # [n]
E = np.load(run / "weights" / "E_mask.npy")             # [n] bool
recorded = np.load(run / "weights" / "recorded_mask.npy")
model_rates = np.load(run / "outputs" / "val_model_rates.npy")    # [K, T, N] sp/s
target_rates = np.load(run / "outputs" / "val_target_rates.npy")  # [K, T, N], NaN = missing
time_ms = np.load(run / "outputs" / "time_ms.npy")                # [T]
conditions = np.load(run / "outputs" / "val_trial_conditions.npy")
corr = np.load(run / "metrics" / "per_neuron_correlation.npy")    # [N]
ei = np.load(run / "metrics" / "neuron_ei_labels.npy")            # 0 = E, 1 = I
log = json.loads((run / "training_log.json").read_text())         # one record per epoch
print(f"{{W_rec.shape[0]}} units ({{int(E.sum())}} E), {{int(recorded.sum())}} recorded neurons")
print(f"val PSTH corr {{np.nanmean(corr):.4f}} (E {{np.nanmean(corr[ei == 0]):.4f}}, I {{np.nanmean(corr[ei == 1]):.4f}})")
print(f"{{len(log)}} epochs logged; best epoch {{max(log, key=lambda r: r['val/psth_corr'] or -1)['epoch'] + 1}}")
'''


def write_report(run_dir: Path, summary, final_metrics, config, files, monitor: str = "val/psth_corr",
                 per_neuron: Mapping[str, np.ndarray] | None = None, history=None, source_run: Path | None = None,
                 session_info: Mapping[str, Any] | None = None) -> Path:
    """Write ``run_dir/training_report.md`` (``source_run``: the run folder, when ``run_dir`` is an
    ``--out`` folder); returns its path."""
    run_dir = Path(run_dir)
    path = run_dir / "training_report.md"
    from eirnn.utils import write_text_atomic

    write_text_atomic(path, render_report(run_dir, summary, final_metrics, config, files, monitor, per_neuron, history,
                                          source_run, session_info))
    return path
