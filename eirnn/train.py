"""Train an E-I RNN on a session: ``python -m eirnn.train [hydra overrides]``.

Examples::

    python -m eirnn.train                                   # built-in synthetic session
    python -m eirnn.train data=sc_mat data.path=FILE.mat    # a lab export
    python -m eirnn.train model=lowrank model.rank=20 trainer.max_epochs=50
    python -m eirnn.train --multirun seed=1,2,3             # one folder per job
    tensorboard --logdir outputs

Each run folder (``outputs/train/runs/<date_time>/``) holds the composed config
(``.hydra/``), the log, TensorBoard events (``tensorboard/``), checkpoints
(``checkpoints/best.ckpt``, ``last.ckpt``) and ``metrics.json``.
"""
from __future__ import annotations

import logging
import math
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

log = logging.getLogger("eirnn.train")


def announce(text: str) -> None:
    """A block on the console as it is, and once into ``train.log`` (eirnn/training/console.py)."""
    from eirnn.training.console import announce as _announce

    _announce(text, log)


class _DropLightningAds(logging.Filter):
    """Lightning logs product tips at INFO level; they are noise in a scientist's console."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage() and "Tip:" not in record.getMessage()


def _quiet_third_party() -> None:
    import warnings

    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_DropLightningAds())
    warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    # a resume into its own folder (the only non-empty checkpoints/ eirnn.run_dir lets a run write into)
    warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")

from eirnn.run_dir import register_resolvers  # noqa: E402  (${eirnn_token:} in the run folder's name)

register_resolvers()


from eirnn.errors import EXIT_DIVERGED, UserError  # noqa: E402  (one user-error type for every command)
from eirnn.runs.build import (_instantiate_dict, build_datamodule, build_model, build_module,  # noqa: E402,F401
                              check_resume_checkpoint, checkpoint_mismatch, read_checkpoint)


def _output_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.output_dir)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit the configured model; returns the summary written to ``metrics.json``."""
    import lightning as L
    import torch

    from eirnn.config_check import check_config
    from eirnn.training.callbacks import MetricsWriter, settle_outcome, write_json_atomic
    from eirnn.training.console import config_tree, setup_run_logging
    from eirnn.utils import atomic_checkpoint_io

    _quiet_third_party()
    setup_run_logging()  # Lightning's INFO lines once (console + train.log), not also on stderr
    check_config(cfg)  # again here for API callers; the CLI checked before the folder was made
    out_dir = _output_dir(cfg)
    if cfg.get("print_config", True):
        log.info("config (print_config=false skips this):\n%s", config_tree(cfg))
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    torch.set_float32_matmul_precision("high")
    from eirnn.runtime import configure  # torch threads, glibc malloc tuning (speed only)

    try:
        log.info("run time: %s", configure(cfg.get("threads", "auto"), bool(cfg.get("malloc_tuning", True))))
    except ValueError as err:
        raise UserError(str(err)) from err

    from eirnn.runs import ensemble as ens_build

    try:
        n_members = ens_build.ensemble_size(cfg)
    except ValueError as err:
        raise UserError(str(err)) from err
    # K seeds as one batched model: the machinery (fit or task network) named by the module class
    ens = ens_build.machinery(cfg) if n_members > 1 else None
    dm = build_datamodule(cfg)
    if ens is not None:  # task networks: member k also gets seed + k's own data
        dm = ens_build.build_datamodule(cfg, dm, n_members)
    log.info("data: %s", dm.describe() if hasattr(dm, "describe") else dm.summary())
    if n_members > 1:  # K seeds as one batched model (eirnn/training/ensemble/)
        model, module = ens_build.build_ensemble(cfg, dm, n_members)
    else:
        model = build_model(cfg, dm)
    log.info("model: %s", model.describe() if hasattr(model, "describe") else type(model).__name__)
    if n_members == 1:
        module = build_module(cfg, model, dm)
    callbacks = _instantiate_dict(cfg.get("callbacks"))
    if n_members > 1:
        try:
            callbacks = ens.ensemble_callbacks(callbacks, module, str(out_dir))
        except ValueError as err:
            raise UserError(str(err)) from err
    if not any(isinstance(c, MetricsWriter) for c in callbacks):
        callbacks.append(MetricsWriter(str(out_dir)))
    loggers = _instantiate_dict(cfg.get("logger"))
    from hydra.utils import instantiate

    trainer: L.Trainer = instantiate(  # checkpoints written atomically beside their target (eirnn/utils.py)
        cfg.trainer, callbacks=callbacks, logger=loggers or False, default_root_dir=str(out_dir),
        plugins=[atomic_checkpoint_io()],
    )
    if cfg.get("ckpt_path"):
        check_resume_checkpoint(str(cfg.ckpt_path), module)
    writer = next(c for c in callbacks if isinstance(c, MetricsWriter))
    monitor = str(cfg.get("optimized_metric") or "val/psth_corr")
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=cfg.get("ckpt_path"))
    except BaseException as err:  # metrics.json says how the run ended, then the error goes on
        _record_failure(writer, trainer, module, out_dir, err)
        raise

    summary = writer.summary(trainer, module)
    summary["run_dir"] = str(out_dir)
    ckpt = getattr(trainer, "checkpoint_callback", None)
    if ckpt is not None and getattr(ckpt, "best_model_path", ""):
        summary["best_checkpoint"] = ckpt.best_model_path
    for cb in callbacks:  # e.g. GracefulInterrupt: which signal stopped training, its checkpoint
        if hasattr(cb, "extend_summary"):
            cb.extend_summary(summary)
    if n_members > 1:
        artifacts = next(c for c in callbacks if isinstance(c, ens.EnsembleArtifacts))
        summary["ensemble"] = artifacts.write_summary(module)
        summary["early_stopped"] = bool(summary["ensemble"]["all_stopped"])
        announce("\n".join(ens.ensemble_report_lines(summary["ensemble"], out_dir)))
    settle_outcome(summary, trainer=trainer, pl_module=module if n_members == 1 else None, monitor=monitor)
    log.info("outcome: %s (%s)", summary["outcome"], summary["reason"])
    if (n_members == 1 and bool(cfg.get("fit_spike_readout", True)) and hasattr(module.model, "spike_readout")
            and summary["outcome"] in ("completed", "early_stopped") and summary.get("epochs_trained")):
        summary["spike_readout"] = _fit_readouts(cfg, dm, module, out_dir)
    write_json_atomic(writer.path, summary)
    _log_hparams(loggers, cfg, summary, module.model)
    if cfg.get("export"):  # weights/, outputs/, metrics/, population/, figures/, training_report.md
        from eirnn.export import export_after_training

        manifest = export_after_training(cfg, trainer, module, dm, summary)
        summary["report"] = str(out_dir / manifest["report"])
    _print_summary(summary, out_dir, str(cfg.get("optimized_metric") or "val/psth_corr"))
    return summary


def _lightning_ctrl_c(err: BaseException) -> bool:
    """``err`` is Lightning's exit after Ctrl+C mid-epoch (``sys.exit(1)`` raised while it handled
    the KeyboardInterrupt), not a failure."""
    return isinstance(err, SystemExit) and isinstance(err.__context__, KeyboardInterrupt)


def _record_failure(writer, trainer, module, out_dir: Path, err: BaseException) -> None:
    """Best effort: ``metrics.json`` with ``outcome`` ``failed`` (or ``interrupted`` for a second
    Ctrl+C) and the reason; a previous good file stays if even this write fails."""
    try:
        summary = writer.summary(trainer, module)
    except Exception:
        summary = {}
    sigterm = type(err).__name__ == "SIGTERMException"  # Lightning's, raised mid-epoch
    ctrl_c = _lightning_ctrl_c(err)  # Lightning's graceful shutdown: sys.exit(1) while handling Ctrl+C
    interrupted = isinstance(err, KeyboardInterrupt) or sigterm or ctrl_c
    reason = ("SIGTERM: stopped in the middle of an epoch (the last epoch's checkpoints are kept)" if sigterm
              else "Ctrl+C: stopped in the middle of an epoch (the last epoch's checkpoints are kept)" if ctrl_c
              else "Ctrl+C: stopped at once" if interrupted
              else f"{type(err).__name__}: {' '.join(str(err).split())}"[:500])
    summary.update(outcome="interrupted" if interrupted else "failed", reason=reason,
                   run_dir=str(out_dir), early_stopped=False)
    if sigterm or ctrl_c:
        summary.update(interrupted="SIGTERM" if sigterm else "SIGINT", exit_code=143 if sigterm else 130)
        last = out_dir / "checkpoints" / "last.ckpt"  # no interrupted.ckpt mid-epoch: resume from the last epoch
        if last.exists():
            summary["interrupted_checkpoint"] = str(last)
    from eirnn.utils import write_json_atomic

    try:
        write_json_atomic(writer.path, summary)
    except Exception:
        pass
    try:  # the epochs validated so far (on_train_end, which writes it otherwise, does not run)
        write_json_atomic(writer.log_path, list(getattr(module, "history", None) or []))
    except Exception:
        pass


def _fit_readouts(cfg: DictConfig, dm, module, out_dir: Path) -> dict:
    """Fit the spike readout (eirnn/models/readout.py) of best.ckpt and last.ckpt on the
    training trials, write it into them, and give the in-memory (last-epoch) model the last one."""
    from eirnn.fit_readout import fit_checkpoint_readouts

    ckpt_dir = out_dir / "checkpoints"
    res = fit_checkpoint_readouts(cfg, dm, [ckpt_dir / "best.ckpt", ckpt_dir / "last.ckpt"])
    if "last" in res:
        module.model.spike_readout.set_affine(res["last"]["gain"], res["last"]["offset_hz"])
    for name, info in res.items():  # epoch 1-based here, like the summary; 0-based in metrics.json
        ep = info["epoch"] + 1 if isinstance(info["epoch"], int) else info["epoch"]
        log.info("spike readout of %s.ckpt (epoch %s): gain median %.3f, offset median %.2f sp/s",
                 name, ep, info["gain_median"], info["offset_median_hz"])
    return res


def _log_hparams(loggers: list, cfg: DictConfig, summary: dict, model=None) -> None:
    """Hyperparameters (:func:`eirnn.training.loggers.run_hparams`) and the best metrics
    (``hp/best_*``) for TensorBoard's HParams view and the loggers' ``hparams.yaml``."""
    from eirnn.training.loggers import run_hparams

    params = run_hparams(cfg, model)
    metrics = {}
    for key in dict.fromkeys((cfg.get("optimized_metric"), "val/psth_corr", "val/bits_per_spike", "val/true_psth_corr")):
        if not key:
            continue
        v = summary.get("best", {}).get(key)
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            metrics[f"hp/best_{key.split('/')[1]}"] = float(v)
    for lg in loggers:
        try:
            lg.log_hyperparams(params, metrics=metrics)
            lg.finalize("success")
        except TypeError:
            lg.log_hyperparams(params)


def _print_summary(summary: dict, out_dir: Path, monitor: str = "val/psth_corr") -> None:
    """The completion block: the monitored metric (best, with its epoch, and final), the
    PSTH metrics when the run has them (SC fits), time and where the files are."""
    best, final = summary.get("best", {}), summary.get("final", {})

    def f(v):
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"

    def ep(rec):  # 1-based, like the progress bar, the epoch lines and training_report.md
        return "n/a" if rec.get("epoch") is None else int(rec["epoch"]) + 1

    lines = [
        "=" * 72,
        "TRAINING INTERRUPTED" if summary.get("interrupted") else
        "TRAINING DIVERGED" if summary.get("diverged") else "TRAINING COMPLETE",
        "=" * 72,
        f"epochs trained:      {summary.get('epochs_trained')}" + ("  (early stopped)" if summary.get("early_stopped") else ""),
    ]
    if monitor == "val/psth_corr" or "val/psth_corr" in best:
        lines += [
            f"best val/psth_corr:  {f(best.get('val/psth_corr'))} at epoch {ep(best)}"
            f"  (E {f(best.get('val/psth_corr_E'))}, I {f(best.get('val/psth_corr_I'))})",
            f"final val/psth_corr: {f(final.get('val/psth_corr'))}",
            f"best bits/spike:     {f(best.get('val/bits_per_spike'))}",
        ]
    if monitor != "val/psth_corr":
        lines += [
            f"best {monitor}:  {f(best.get(monitor))} at epoch {ep(best)}",
            f"final {monitor}: {f(final.get(monitor))}",
        ]
    if "val/true_psth_corr" in best:
        lines.append(f"best corr with teacher's true rates: {f(best.get('val/true_psth_corr'))}")
    lines += [
        f"training time:       {summary.get('train_time_s', 0):.1f} s"
        + (f" ({summary['train_time_s'] / 60:.1f} min)" if summary.get("train_time_s", 0) >= 60 else ""),
        f"run folder:          {out_dir}",
    ]
    out_path = Path(out_dir)  # what this run wrote (logger=csv / none: no tensorboard/)
    present = [name for name in ("metrics.json", "checkpoints/", "tensorboard/", "csv/")
               if (out_path / name.rstrip("/")).exists()]
    if present:
        lines.append(f"  {', '.join(present)}"
                     + (f"  ->  tensorboard --logdir {out_dir}" if (out_path / "tensorboard").is_dir() else ""))
    if summary.get("report"):
        lines.append(f"  weights/, outputs/, metrics/, population/, figures/; see {summary['report']}")
    if summary.get("skipped_steps"):
        lines.append(f"skipped steps:       {summary['skipped_steps']} (non-finite gradient: those updates were undone)")
    if summary.get("outcome") and not summary.get("diverged"):
        lines.append(f"outcome:             {summary['outcome']} ({summary.get('reason', '')})")
    if summary.get("diverged"):
        lines.append(f"DIVERGED: {summary['diverged']}")
        lines.append(f"  no spike readout was fitted; exit status {EXIT_DIVERGED}")
    if summary.get("interrupted"):
        lines.append(f"INTERRUPTED by {summary['interrupted']}: state saved to {summary.get('interrupted_checkpoint')}")
        lines.append(f"  resume: same command + ckpt_path={summary.get('interrupted_checkpoint')} hydra.run.dir={out_dir}")
    lines.append("=" * 72)
    announce("\n".join(lines))


def _is_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:  # pragma: no cover
        return False


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns ``cfg.optimized_metric`` (best value) for sweepers."""
    try:
        summary = train(cfg)
    except UserError as err:
        log.error("%s", err)
        if _is_multirun():
            raise RuntimeError(str(err)) from None  # the sweep records the failed job and goes on
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    except Exception:
        # Hydra's launchers run the other jobs, then report only the first failure; keep
        # every failed job's traceback in its own log, where eirnn.sweep_report finds it.
        if _is_multirun():
            log.exception("job failed")
        raise
    except KeyboardInterrupt:  # outside training (data loading, export): nothing to save
        print("interrupted (Ctrl+C)", file=sys.stderr, flush=True)
        sys.exit(130)
    except SystemExit as err:  # Lightning's SIGTERMException (exit status 0 of its own): say so, status 143
        ctrl_c = _lightning_ctrl_c(err)  # Lightning's Ctrl+C shutdown exits 1: say so, status 130
        if type(err).__name__ != "SIGTERMException" and not ctrl_c:
            raise
        print(f"interrupted by {'Ctrl+C' if ctrl_c else 'SIGTERM'} in the middle of an epoch; last saved state: "
              f"{_output_dir(cfg) / 'checkpoints' / 'last.ckpt'} (callbacks=final stops at the end of the "
              f"epoch instead)", file=sys.stderr, flush=True)
        sys.exit(130 if ctrl_c else 143)
    if summary.get("interrupted") and not _is_multirun():
        sys.exit(int(summary.get("exit_code", 130)))  # 128 + signal number, after every file is written
    if summary.get("outcome") == "diverged" and not _is_multirun():
        sys.exit(EXIT_DIVERGED)  # its own status: a script must not take a diverged run for a result
    value = summary.get("best", {}).get(cfg.get("optimized_metric") or "val/psth_corr")
    return None if value is None else float(value)


if __name__ == "__main__":
    from eirnn.fasthelp import fast_help  # --help without Hydra's per-group repository copies (same text)

    _help = fast_help(sys.argv, CONFIG_DIR, "train")
    if _help is not None:
        print(_help)
        sys.exit(0)
    main()
