"""The analysis artifacts of a run (weights, outputs, metrics, population, figures, results.nc,
config, training_report.md, artifacts.json): :func:`export_run`; the command line is
``python -m eirnn.export`` (:mod:`eirnn.export`, whose docstring lists the files).

The run folder is opened with :func:`eirnn.runs.run_dir.open_run`; the model is run once on the
validation trials with the validation noise seed (:func:`eirnn.report.artifacts.validation_rates`).
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from eirnn.errors import UserError
from eirnn.runs.run_dir import CHECKPOINT_NAMES  # noqa: F401  (re-exported by eirnn.export)

log = logging.getLogger("eirnn.export")

FIGURES = (
    "training_curves", "per_neuron_correlation_histogram", "per_neuron_correlation_scatter", "best_worst_neurons",
    "weight_matrices", "h0_distribution", "attention_patterns", "pca_trajectories", "pca_state_space",
    "fano_factor_comparison", "condition_psth_grid", "selectivity_scatter",
)


class ExportError(UserError):
    """A problem with the run folder or its inputs, reported in one line."""


# ------------------------------------------------------------------ config
def resolved_config(cfg, run_dir: Path) -> dict[str, Any]:
    """``cfg`` as plain containers with every interpolation resolved, without ``hydra``;
    ``paths.output_dir`` is ``run_dir`` and an existing ``data.path`` is made absolute."""
    from omegaconf import OmegaConf, open_dict

    c = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    with open_dict(c):
        c.pop("hydra", None)
        if "paths" in c:
            c.paths.output_dir = str(run_dir)
    try:
        out = OmegaConf.to_container(c, resolve=True)
    except Exception as err:  # an interpolation that cannot be resolved outside the run: keep it as text
        log.warning("config not fully resolved (%s); config.yaml keeps its interpolations", err)
        out = OmegaConf.to_container(c, resolve=False)
    data = out.get("data") or {}
    if data.get("path"):
        p = Path(str(data["path"])).expanduser()
        if p.exists():
            data["path"] = str(p.resolve())
    return out


def write_config(out_dir: Path, cfg, run_dir: Path | None = None) -> dict[str, Any]:
    """``config.yaml`` and ``config.json`` (the resolved config of the run in ``run_dir``,
    default ``out_dir``) in ``out_dir``; returns it."""
    from omegaconf import OmegaConf

    from eirnn.utils import write_json_atomic

    run_dir = out_dir if run_dir is None else run_dir
    resolved = resolved_config(cfg, run_dir)
    from eirnn.utils import write_text_atomic

    write_text_atomic(out_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(resolved)))
    write_json_atomic(out_dir / "config.json", resolved)
    return resolved


def load_run_config(run_dir: Path, data_path: str | None = None):
    """The run's composed config with a usable ``data.path`` (:func:`eirnn.runs.run_dir.load_run_config`)."""
    from eirnn.runs.run_dir import load_run_config as _load

    return _load(run_dir, data_path, error=ExportError)


def find_checkpoint(run_dir: Path, which: str = "best") -> Path:
    """``best`` (-> ``last`` -> ``interrupted``) / ``last`` / ``interrupted`` / a path
    (:func:`eirnn.runs.run_dir.find_checkpoint`)."""
    from eirnn.runs.run_dir import find_checkpoint as _find

    return _find(run_dir, which, error=ExportError)


def load_module(cfg, dm, ckpt_path: Path):
    """``(module, checkpoint dict)`` (:func:`eirnn.runs.run_dir.load_module`)."""
    from eirnn.runs.run_dir import load_module as _load

    return _load(cfg, dm, ckpt_path, error=ExportError)


# ------------------------------------------------------------------ export
def _summary_from_history(history: list[dict], monitor: str) -> dict[str, Any]:
    vals = [(h.get(monitor), i) for i, h in enumerate(history) if h.get(monitor) is not None and math.isfinite(h[monitor])]
    best = history[max(vals)[1]] if vals else {}
    return {"best": best, "final": history[-1] if history else {}, "epochs_trained": len(history),
            "outcome": "unfinished",
            "reason": "no metrics.json: training did not finish (killed, or stopped by an error); "
                      f"{len(history)} validated epochs in training_log.json"}


def _check_out_dir(out: Path, run_dir: Path) -> None:
    """Refuse an ``--out`` folder that is a run folder or holds the export of another run
    (its ``metrics.json`` / ``training_log.json`` / arrays would be mixed with this run's)."""
    from eirnn.runs.lock import LOCK_NAME

    if not out.is_dir():
        return
    # (not tensorboard/: an export of an SC run adds its condition figures to DIR/tensorboard)
    found = [n for n in (".hydra", "checkpoints", LOCK_NAME) if (out / n).exists()]
    if found:
        raise ExportError(f"{out}: is a run folder ({', '.join(found)}); --out needs a folder of its own")
    previous = out / "artifacts.json"
    if previous.exists():
        try:
            other = json.loads(previous.read_text()).get("run_dir")
        except (OSError, ValueError, AttributeError):
            other = None
        if other is not None and Path(other).resolve() != run_dir:
            raise ExportError(f"{out}: holds the export of another run ({other}); choose another --out "
                              "(or remove that folder)")


def export_run(
    run_dir: str | Path,
    cfg=None,
    datamodule=None,
    checkpoint: str = "best",
    summary: dict | None = None,
    history: list[dict] | None = None,
    figures: bool = True,
    n_pcs: int = 10,
    data_path: str | None = None,
    out_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Write every artifact of ``run_dir`` (see the module docstring) into ``out_dir``
    (default: ``run_dir`` itself); returns the manifest.

    ``cfg`` / ``datamodule`` / ``summary`` / ``history`` are taken from the caller when
    given (end of training), else from the run folder.
    """
    from eirnn.report import artifacts as A
    from eirnn.report.report import write_report
    from eirnn.runs.lock import refuse_if_running
    from eirnn.runs.run_dir import open_run
    from eirnn.utils import write_json_atomic

    t0 = time.perf_counter()
    run_dir = Path(run_dir).resolve()
    if not run_dir.is_dir():
        raise ExportError(f"{run_dir}: not a directory")
    refuse_if_running(run_dir, "export")  # a report of a run still training would misdescribe it
    out = run_dir if out_dir is None else Path(out_dir).resolve()
    if out != run_dir:
        _check_out_dir(out, run_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ExportError(f"{out}: cannot create the output folder ({err.strerror})") from err
    run = open_run(run_dir, checkpoint, data_path, cfg=cfg, datamodule=datamodule, error=ExportError)
    cfg, dm, module, ckpt, ckpt_path = run.cfg, run.datamodule, run.module, run.ckpt, run.checkpoint
    monitor = str(cfg.get("optimized_metric") or "val/psth_corr")
    model = module.model

    if history is None:
        log_path = run_dir / "training_log.json"
        history = json.loads(log_path.read_text()) if log_path.exists() else list(module.history)
    if summary is None:
        mpath = run_dir / "metrics.json"
        summary = json.loads(mpath.read_text()) if mpath.exists() else _summary_from_history(history, monitor)
    if out != run_dir or not (out / "training_log.json").exists():  # --out: this run's, never a stale copy
        write_json_atomic(out / "training_log.json", history)
    if out != run_dir and (run_dir / "metrics.json").exists():
        write_json_atomic(out / "metrics.json", summary)

    val = A.validation_rates(module, dm, attention=True)
    exc_all = model.is_excitatory.cpu().numpy().astype(bool)
    exc = exc_all[: model.n_recorded]
    bin_ms = float(getattr(module, "bin_size_ms", dm.bin_size_ms))
    weights = A.weight_arrays(model)
    outputs = A.output_arrays(val, dm.session)
    metrics = A.neuron_metrics(val, exc, bin_ms)
    vf = outputs["val_trial_factors"]  # grouped by the first factor (SC: target location)
    loc = vf[:, 0] if vf.shape[1] else np.zeros(vf.shape[0], np.int64)
    gd, labels = A.group_psths(val["target_rates"], val["mask"], loc)
    gm, _ = A.group_psths(val["model_rates"], val["mask"], loc)
    population = A.population_arrays(outputs["val_target_psth"], outputs["val_model_psth"], n_pcs=n_pcs,
                                     groups={"by_location": (gd, gm)})
    population["location_labels"] = labels

    files: dict[str, list[dict]] = {}
    for folder, arrays in (("weights", weights), ("outputs", outputs), ("metrics", metrics), ("population", population)):
        files[folder] = [dict(f, path=str(Path(f["path"]).relative_to(out)))
                         for f in A.save_arrays(out / folder, arrays)]
    resolved = write_config(out, cfg, run_dir)

    corr = metrics["per_neuron_correlation"]
    from eirnn import metrics as M

    by_type = M.psth_corr_by_type(corr, exc)
    fm, fd = metrics["per_neuron_fano_model"], metrics["per_neuron_fano_target"]
    final_metrics = {
        "checkpoint": (str(ckpt_path.relative_to(run_dir)) if ckpt_path.is_relative_to(run_dir) and out == run_dir
                       else str(ckpt_path)),
        # the epoch whose weights these are (0-based, as in training_log.json)
        "checkpoint_epoch": int(module.history[-1]["epoch"]) if module.history else int(ckpt.get("epoch", 0)),
        "psth_corr": by_type["all"], "psth_corr_E": by_type["E"], "psth_corr_I": by_type["I"],
        "n_E": int(exc.sum()), "n_I": int((~exc).sum()),
        "fano_model_mean": float(np.nanmean(fm)) if np.isfinite(fm).any() else float("nan"),
        "fano_data_mean": float(np.nanmean(fd)) if np.isfinite(fd).any() else float("nan"),
        "bits_per_spike": float(M.bits_per_spike(val["model_rates"], np.nan_to_num(val["target_rates"]), val["mask"],
                                                 bin_size_ms=bin_ms)),
        "n_val_trials": int(val["model_rates"].shape[0]),
        "model": model.describe() if hasattr(model, "describe") else type(model).__name__,
    }

    try:  # the same arrays, labelled, in one file (xarray / NetCDF4)
        from eirnn.report.labelled import write_labelled

        lab = write_labelled(out / "results.nc", dm.session, outputs, metrics, weights, population,
                             attrs={k: v for k, v in final_metrics.items() if k != "model"})
        files["labelled"] = [{"path": str(lab.relative_to(out))}]
    except ImportError as err:  # xarray / h5netcdf not installed: the .npy folders are still there
        log.warning("results.nc not written (%s); pip install xarray h5netcdf", err)

    figure_files, figure_errors = [], {}
    if figures:
        figure_files, figure_errors = write_figures(out, history, weights, outputs, metrics, population, model,
                                                    monitor, learnable_h0=bool(resolved.get("model", {}).get("learnable_h0")),
                                                    bin_ms=bin_ms, input_names=dm.session.input_names,
                                                    condition_cfg=(resolved.get("evaluation") or {}).get("condition"),
                                                    align_event=dm.session.alignment_event)
    files["figures"] = [{"path": str(p.relative_to(out))} for p in figure_files]

    manifest = {
        "run_dir": str(run_dir), "out_dir": str(out), "checkpoint": final_metrics["checkpoint"], "final_metrics": final_metrics,
        "files": files, "figure_errors": figure_errors, "export_time_s": round(time.perf_counter() - t0, 2),
    }
    report = write_report(out, summary=summary, final_metrics=final_metrics, config=resolved, files=files,
                          monitor=monitor, per_neuron=metrics, history=history, source_run=run_dir,
                          session_info={"factors": list(dm.session.factors or {}),
                                        "alignment_event": dm.session.alignment_event,
                                        "input_names": list(dm.session.input_names)})
    manifest["report"] = str(report.relative_to(out))
    write_json_atomic(out / "artifacts.json", manifest)
    return manifest


def write_figures(run_dir: Path, history, weights, outputs, metrics, population, model, monitor: str,
                  learnable_h0: bool = True, bin_ms: float | None = None, input_names=None,
                  condition_cfg=None, align_event: str = "fixation_on") -> tuple[list[Path], dict[str, str]]:
    """Every figure of :data:`FIGURES` that applies, as ``run_dir/figures/<name>.png``.

    A figure that fails is logged and listed in the returned errors; the others are still written.
    """
    from eirnn.report import figures as F

    exc_all = weights["E_mask"]
    n_rec = int(weights["recorded_mask"].sum())
    exc = exc_all[:n_rec]
    t = outputs["time_ms"]
    corr = metrics["per_neuron_correlation"]
    n_inputs = outputs["val_inputs"].shape[-1]
    names = list(input_names or [])
    labels = names if len(names) == n_inputs else None
    ratio = population["pca_explained_variance_ratio"]
    makers = {
        "training_curves": lambda: F.training_curves(history, monitor),
        "per_neuron_correlation_histogram": lambda: F.correlation_histogram(corr, exc),
        "per_neuron_correlation_scatter": lambda: F.correlation_scatter(corr, metrics["per_neuron_mean_rate_target"], exc),
        "best_worst_neurons": lambda: F.best_worst_neurons(outputs["val_target_psth"], outputs["val_model_psth"], corr,
                                                           exc, time_ms=t, align_event=align_event),
        "weight_matrices": lambda: F.weight_matrices(weights["W_rec"], weights["W_in"], exc_all, n_rec,
                                                     input_labels=labels if weights["W_in"].shape[1] == n_inputs else None),
        "h0_distribution": lambda: F.h0_distribution(weights["h0"], exc_all, learnable=learnable_h0),
        "pca_trajectories": lambda: F.pca_trajectories(population["pca_real"], population["pca_model"], ratio, time_ms=t,
                                                       align_event=align_event),
        "pca_state_space": lambda: F.pca_state_space(
            population["pca_real"], population["pca_model"], ratio, population.get("pca_real_by_location"),
            population.get("pca_model_by_location"), population.get("location_labels")),
        "fano_factor_comparison": lambda: F.fano_comparison(metrics["per_neuron_fano_model"],
                                                            metrics["per_neuron_fano_target"], exc, bin_ms=bin_ms),
    }
    from eirnn.data.session import INPUT_CHANNELS

    sc_layout = names[: len(INPUT_CHANNELS)] == list(INPUT_CHANNELS) and outputs["val_trial_factors"].shape[1] == 4
    if sc_layout:  # SC task inputs and factors: issue 15's condition figures
        def condition_fig(which: str):
            from eirnn.report.condition_figures import condition_figures_from_arrays

            if which not in cond_figs:
                readout = getattr(model, "spike_readout", None)
                rates = np.asarray(outputs["val_model_rates"], np.float64)
                if readout is not None and getattr(readout, "is_fitted", False):
                    rates = readout.apply_numpy(rates)
                cond_figs.update(condition_figures_from_arrays(
                    rates, outputs["val_target_rates"], outputs["val_mask"], outputs["val_inputs"],
                    outputs["val_trial_factors"], float(bin_ms or 25.0), exc, condition_cfg, channels=names))
            return cond_figs[which]

        cond_figs: dict = {}
        makers["condition_psth_grid"] = lambda: condition_fig("condition_psth_grid")
        makers["selectivity_scatter"] = lambda: condition_fig("selectivity_scatter")
    if "val_attention_mean" in outputs:
        makers["attention_patterns"] = lambda: F.attention_patterns(outputs["val_attention_mean"], time_ms=t,
                                                                    channel_labels=labels, align_event=align_event)
    written, errors = [], {}
    for name in FIGURES:
        if name not in makers:
            continue
        try:
            fig = makers[name]()
            written.append(F.save(fig, run_dir / "figures" / f"{name}.png"))
            if name in ("condition_psth_grid", "selectivity_scatter"):  # also in TensorBoard (issue 15)
                _tensorboard_figure(run_dir / "tensorboard", f"final/{name}", fig)
        except Exception as err:  # one broken figure must not cost the others
            log.warning("figure %s failed: %s", name, err)
            errors[name] = f"{type(err).__name__}: {err}"
    return written, errors


def _tensorboard_figure(tb_dir: Path, tag: str, fig) -> None:
    """Add ``fig`` to the run's TensorBoard folder (nothing when TensorBoard is missing)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # pragma: no cover
        return
    writer = SummaryWriter(log_dir=str(tb_dir))
    try:
        writer.add_figure(tag, fig, global_step=0, close=False)
    finally:
        writer.close()


def export_after_training(cfg, trainer, module, dm, summary: dict) -> dict[str, Any]:
    """End-of-training export (called by :func:`eirnn.train.train` when ``cfg.export`` is set)."""
    opts = cfg.get("export") or {}
    return export_run(
        cfg.paths.output_dir, cfg=cfg, datamodule=dm, checkpoint=str(opts.get("checkpoint", "best")),
        summary=summary, history=list(module.history), figures=bool(opts.get("figures", True)),
        n_pcs=int(opts.get("n_pcs", 10)),
    )
