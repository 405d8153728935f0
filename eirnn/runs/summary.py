"""What a finished (or failed) training reports: ``metrics.json`` on failure, the console's
completion block, and the hyperparameters with the best metrics for the loggers.

``print_summary(summary, out_dir, monitor)`` prints (and logs once into ``train.log``) the block
``TRAINING COMPLETE`` / ``INTERRUPTED`` / ``DIVERGED``; ``log_hparams`` gives TensorBoard's
HParams view ``hp/best_<metric>``; ``record_failure`` writes ``metrics.json`` with outcome
``failed`` / ``interrupted``. ``summary`` is the dict of ``metrics.json``
(:meth:`eirnn.training.callbacks.MetricsWriter.summary`).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

from omegaconf import DictConfig

from eirnn.errors import EXIT_DIVERGED
from eirnn.utils import fmt_epoch, fmt_num

__all__ = ["announce", "collect_summary", "print_summary", "log_hparams", "record_failure", "lightning_ctrl_c"]

log = logging.getLogger("eirnn.train")  # the training's log: its lines go to train.log


def announce(text: str) -> None:
    """A block on the console as it is, and once into ``train.log`` (eirnn/training/console.py)."""
    from eirnn.training.console import announce as _announce

    _announce(text, log)


def lightning_ctrl_c(err: BaseException) -> bool:
    """``err`` is Lightning's exit after Ctrl+C mid-epoch (``sys.exit(1)`` raised while it handled
    the KeyboardInterrupt), not a failure."""
    return isinstance(err, SystemExit) and isinstance(err.__context__, KeyboardInterrupt)


def record_failure(writer, trainer, module, out_dir: Path, err: BaseException) -> None:
    """Best effort: ``metrics.json`` with ``outcome`` ``failed`` (or ``interrupted`` for a second
    Ctrl+C) and the reason; a previous good file stays if even this write fails."""
    try:
        summary = writer.summary(trainer, module)
    except Exception:
        summary = {}
    sigterm = type(err).__name__ == "SIGTERMException"  # Lightning's, raised mid-epoch
    ctrl_c = lightning_ctrl_c(err)  # Lightning's graceful shutdown: sys.exit(1) while handling Ctrl+C
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


def log_hparams(loggers: list, cfg: DictConfig, summary: dict, model=None) -> None:
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


def print_summary(summary: dict, out_dir: Path, monitor: str = "val/psth_corr") -> None:
    """The completion block: the monitored metric (best, with its epoch, and final), the
    PSTH metrics when the run has them (SC fits), time and where the files are."""
    best, final = summary.get("best", {}), summary.get("final", {})

    def f(v):
        return fmt_num(v)

    def ep(rec):  # 1-based, like the progress bar, the epoch lines and training_report.md
        return fmt_epoch(rec.get("epoch"))

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


def collect_summary(writer, trainer, module, callbacks: list, out_dir: Path, monitor: str, ens=None) -> dict:
    """The ``metrics.json`` dict of a finished fit: the writer's summary, the run folder, the best
    checkpoint, what callbacks add (e.g. the stopping signal), the ensemble's members (``ens``: the
    machinery, ``None`` for one model), and the outcome (:func:`eirnn.training.callbacks.settle_outcome`)."""
    from eirnn.training.callbacks import settle_outcome

    summary = writer.summary(trainer, module)
    summary["run_dir"] = str(out_dir)
    ckpt = getattr(trainer, "checkpoint_callback", None)
    if ckpt is not None and getattr(ckpt, "best_model_path", ""):
        summary["best_checkpoint"] = ckpt.best_model_path
    for cb in callbacks:  # e.g. GracefulInterrupt: which signal stopped training, its checkpoint
        if hasattr(cb, "extend_summary"):
            cb.extend_summary(summary)
    if ens is not None:
        artifacts = next(c for c in callbacks if isinstance(c, ens.EnsembleArtifacts))
        summary["ensemble"] = artifacts.write_summary(module)
        summary["early_stopped"] = bool(summary["ensemble"]["all_stopped"])
        announce("\n".join(ens.ensemble_report_lines(summary["ensemble"], out_dir)))
    settle_outcome(summary, trainer=trainer, pl_module=module if ens is None else None, monitor=monitor)
    log.info("outcome: %s (%s)", summary["outcome"], summary["reason"])
    return summary
