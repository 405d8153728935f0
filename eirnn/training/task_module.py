"""LightningModules of the task RNNs (manual optimisation, the ``MetricsWriter`` contract).

One optimisation step (:meth:`TaskModule.training_step`)::

    y    = model(inputs).output                      # [B, T, n_out]
    loss = sum(mask * (y - target)^2) / sum(mask)    # masked MSE
    loss.backward(); record |grad| per parameter; clip_grad_norm(optim.grad_clip); optimizer.step()

Validation runs the model on the whole validation set and computes the task's metrics
(:meth:`compute_val_metrics`, overridden per task).  Logged to every logger (TensorBoard):
``train/loss`` (per epoch), ``grad_norm/<param>`` (per step, before clipping, and the epoch
mean), ``val/*``, ``lr``.  Kept for the callbacks: ``history`` (per-epoch records),
``last_val``, ``best_val`` (by ``monitor``/``mode``), ``step_log`` (per-step loss and
gradient norms, for the PNG figures).  Checkpoints also carry the model's constructor
arguments and the task parameters, so :func:`eirnn.analysis.common.load_run` rebuilds both
without Hydra.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import numpy as np
import torch

from eirnn.data import context_switch as cs
from eirnn.models.ctx_lowrank import constructor_config
from eirnn.training.base import LifecycleModule, cfg_get
from eirnn.training.rebuild import save_spec


def masked_mse(output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``sum(mask (y - target)^2) / sum(mask)`` over all entries; tensors [B, T, n_out]."""
    m = mask.to(output.dtype)
    return ((output - target) ** 2 * m).sum() / m.sum().clamp_min(1.0)


_get = cfg_get  # the old private name


class TaskModule(LifecycleModule):
    """Masked-MSE training of a task RNN.

    Args:
        model: the network (``forward(inputs) -> TaskOutput``).
        optim: ``name`` (adam | adamw), ``lr``, ``weight_decay``, ``grad_clip`` (<= 0: none).
        scheduler: ``name`` none | plateau (on ``monitor``) | cosine.
        monitor / mode: the metric that defines ``best_val`` (``optimized_metric`` / ``optimized_mode``).
        task_config: the data module's parameters (saved in checkpoints for the analyses).
        max_epochs: for the cosine schedule.
    """

    default_monitor, default_mode = "val/loss", "min"

    def __init__(self, model: torch.nn.Module, optim: Optional[Mapping[str, Any]] = None,
                 scheduler: Optional[Mapping[str, Any]] = None, monitor: Optional[str] = None,
                 mode: Optional[str] = None, task_config: Optional[Mapping[str, Any]] = None, max_epochs: int = 100):
        super().__init__()
        self.model = model
        self.init_lifecycle(optim, scheduler, monitor or self.default_monitor, mode or self.default_mode, max_epochs)
        self.task_config = dict(task_config or {})
        self.param_names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.step_log: list[dict[str, float]] = []

    # ------------------------------------------------------------ checkpoint
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["eirnn_task"] = {"model": constructor_config(self.model), "task": self.task_config,
                                    "history": list(self.history), "best_val": dict(self.best_val),
                                    "step_log": list(self.step_log)}
        save_spec(self, checkpoint)  # constructor spec: the checkpoint rebuilds without Hydra

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("eirnn_task", {})
        self.history = list(state.get("history", []))
        self.best_val = dict(state.get("best_val", {}))
        self.step_log = list(state.get("step_log", []))
        self.last_val = dict(self.history[-1]) if self.history else {}

    # ------------------------------------------------------------------ step
    def forward(self, inputs: torch.Tensor, **kw):
        return self.model(inputs, **kw)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        opt = self.optimizers()
        out = self.model(batch["inputs"]).output
        loss = masked_mse(out, batch["target"], batch["mask"])
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        norms = {}
        for name, p in self.model.named_parameters():
            if p.grad is not None:
                norms[f"grad_norm/{name}"] = float(p.grad.detach().norm())
        clip = float(_get(self.optim_cfg, "grad_clip", 1.0))
        if clip > 0:
            self.clip_gradients(opt, gradient_clip_val=clip, gradient_clip_algorithm="norm")
        opt.step()
        value = float(loss.detach())
        self.log("train/loss", value, on_step=False, on_epoch=True, batch_size=int(batch["inputs"].shape[0]))
        self.log_dict(norms, on_step=False, on_epoch=True, batch_size=1)  # epoch means: one TensorBoard axis (per step: step_log)
        self.step_log.append({"step": int(self.global_step), "epoch": int(self.current_epoch), "train/loss": value, **norms})
        for k, v in {"train/loss": value, **norms}.items():
            self._train_sums[k] = self._train_sums.get(k, 0.0) + v
        self._train_count += 1

    def on_train_epoch_start(self) -> None:
        self._train_sums, self._train_count = {}, 0

    def on_train_epoch_end(self) -> None:
        self.step_epoch_scheduler()

    # ------------------------------------------------------------ validation
    def on_validation_epoch_start(self) -> None:
        self._val_outputs = []

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        out = self.model(batch["inputs"]).output
        item = {k: v for k, v in batch.items() if k != "inputs"}
        item["output"] = out.detach()
        self._val_outputs.append(item)

    def compute_val_metrics(self, v: dict[str, torch.Tensor]) -> dict[str, float]:
        """Metrics from the gathered validation set (``output``, ``target``, ``mask`` [B, T, n_out], labels)."""
        return {"val/loss": float(masked_mse(v["output"], v["target"], v["mask"]))}

    def on_validation_epoch_end(self) -> None:
        if not self._val_outputs:
            return
        gathered = self.gather_val(0)
        self._val_outputs = []
        vals = self.compute_val_metrics(gathered)
        if self.trainer.sanity_checking:
            return
        lr = float(self.optimizers().param_groups[0]["lr"])
        self.log_val(vals, self.monitor)  # the monitor logged even when NaN
        self.log("lr", lr)
        record = {"epoch": int(self.current_epoch), "lr": lr, "epoch_time_s": self.epoch_time(), **vals,
                  **self.train_means()}
        self.end_epoch(record, vals.get(self.monitor, math.nan))


class ContextSwitchModule(TaskModule):
    """Contextual switch task: loss and accuracy overall and per context.

    ``val/accuracy`` = fraction of validation trials whose choice (sign of the mean readout over
    the decision window) equals the relevant stimulus' sign; ``val/acc_ctx1``/``val/acc_ctx2`` the
    same within each context; ``val/loss`` (and ``val/loss_ctx*``) the masked MSE.
    """

    default_monitor, default_mode = "val/accuracy", "max"

    def compute_val_metrics(self, v: dict[str, torch.Tensor]) -> dict[str, float]:
        out, target, mask = v["output"].float(), v["target"], v["mask"]
        correct = (cs.choices(out, mask) == v["label"].to(out.dtype)).float()
        res = {"val/loss": float(masked_mse(out, target, mask)), "val/accuracy": float(correct.mean())}
        for c in (1, 2):
            sel = v["context"] == c
            n = int(sel.sum())
            res[f"val/acc_ctx{c}"] = float(correct[sel].mean()) if n else math.nan
            res[f"val/loss_ctx{c}"] = float(masked_mse(out[sel], target[sel], mask[sel])) if n else math.nan
        return res


class SystemAModule(TaskModule):
    """System A: ``val/loss`` (masked MSE over the cost period, the README's ``mse_loss1``) and
    ``val/rmse``."""

    default_monitor, default_mode = "val/loss", "min"
    ensemble_machinery = "eirnn.training.ensemble.task"

    def compute_val_metrics(self, v: dict[str, torch.Tensor]) -> dict[str, float]:
        loss = float(masked_mse(v["output"].float(), v["target"], v["mask"]))
        return {"val/loss": loss, "val/rmse": float(np.sqrt(loss))}
