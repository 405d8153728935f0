"""Callbacks of the task runs: training-curve figures and the end-of-training analysis.

Both read what :class:`~eirnn.training.task_module.TaskModule` recorded (``history``, ``step_log``)
or the run folder; neither changes the training.
"""
from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Optional

import lightning as L

log = logging.getLogger(__name__)


class TrainingCurves(L.Callback):
    """At the end of training, ``<run>/loss.png`` (training loss per step and per epoch,
    validation loss per epoch) and ``<run>/grad_norms.png`` (gradient norm of every trainable
    parameter per step, before clipping; log scale)."""

    def __init__(self, output_dir: str, loss_file: str = "loss.png", grads_file: str = "grad_norms.png"):
        super().__init__()
        self.dir = Path(output_dir)
        self.loss_file, self.grads_file = loss_file, grads_file

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        from eirnn.analysis.common import plot_grad_norms, plot_losses

        steps = getattr(pl_module, "step_log", []) or []
        history = getattr(pl_module, "history", []) or []
        if not steps and not history:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        size = getattr(pl_module, "size", None) if hasattr(pl_module, "member_history") else None
        what = f", mean over {size} ensemble members (each: members/m{{k}}/)" if size else ""
        plot_losses(steps, history, self.dir / self.loss_file, title="training and validation loss" + what)
        if steps:
            plot_grad_norms(steps, self.dir / self.grads_file, title="gradient magnitudes" + what)


class RunAnalysis(L.Callback):
    """Runs ``<analysis>.analyze(model, task_config, out_dir)`` at the end of training on the best
    checkpoint (or the current weights when there is none), into ``<run>/analysis``.

    ``analysis``: a module path such as ``eirnn.analysis.context_switch``.  A failure is logged
    with its traceback and does not fail the (finished) training run.
    """

    def __init__(self, analysis: str, output_dir: str, subdir: str = "analysis", enabled: bool = True):
        super().__init__()
        self.analysis, self.dir, self.subdir, self.enabled = analysis, Path(output_dir), subdir, bool(enabled)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled or not trainer.is_global_zero:
            return
        from eirnn.analysis.common import load_checkpoint

        try:
            ckpt: Optional[str] = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
            if ckpt and Path(ckpt).exists():
                model, task = load_checkpoint(ckpt)
            else:
                model, task = pl_module.model, getattr(pl_module, "task_config", {})
            mod = importlib.import_module(self.analysis)
            summary = mod.analyze(model, task, self.dir / self.subdir)
            log.info("analysis written to %s: %s", self.dir / self.subdir, summary.get("headline", ""))
        except Exception:  # the training itself succeeded; report and go on
            log.exception("end-of-training analysis %s failed", self.analysis)
