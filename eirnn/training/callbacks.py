"""Training callbacks: console progress, TensorBoard figures and the run summary file.

All of them read what :class:`~eirnn.training.module.FitModule` computed at the last
validation (``last_val``, ``last_val_arrays``, ``best_val``, ``history``); none of
them runs the model again.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import ProgressBar


def _fmt(v: float | None, spec: str = ".4f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return format(v, spec)


def _fmt_term(v: float | None) -> str:
    """A loss term for the console: fixed point, or scientific when fixed point would hide it."""
    if v is not None and not (isinstance(v, float) and math.isnan(v)) and v != 0 and not 1e-3 <= abs(v) < 1e5:
        return format(v, ".3e")
    return _fmt(v)


class EpochProgressBar(ProgressBar):
    """One progress bar over epochs, a short line every ``print_every`` epochs.

    The bar's postfix shows the epoch's training loss, the monitored validation metric
    (``monitor``, by default ``val/psth_corr``), the best so far and the learning rate.
    Lightning's default per-batch bar is replaced by this one. It reads the module's
    ``last_val`` / ``best_val`` records (see :class:`MetricsWriter` for the contract).
    """

    def __init__(self, print_every: int = 10, monitor: str = "val/psth_corr"):
        super().__init__()
        self.print_every = int(print_every)
        self.monitor = monitor
        self.short = monitor.split("/")[-1]
        self._enabled = True
        self._bar = None
        self._t0 = 0.0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = time.perf_counter()
        if not self._enabled or not trainer.is_global_zero:
            return
        from tqdm.auto import tqdm

        self._bar = tqdm(
            total=trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None,
            initial=trainer.current_epoch, desc="train", unit="epoch", dynamic_ncols=True,
            file=sys.stdout, mininterval=0.5, leave=True,
        )

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._bar is None:
            return
        rec = getattr(pl_module, "last_val", {}) or {}
        best = getattr(pl_module, "best_val", {}) or {}
        self._bar.update(1)
        self._bar.set_postfix_str(
            f"loss={_fmt(rec.get('train/loss'))} {self.short}={_fmt(rec.get(self.monitor))} "
            f"best={_fmt(best.get(self.monitor))} lr={_fmt(rec.get('lr'), '.1e')}",
            refresh=False,
        )
        epoch = trainer.current_epoch + 1
        if self.print_every > 0 and epoch % self.print_every == 0:
            terms = " | ".join(
                f"{k.split('/')[-1]} {_fmt_term(v)}" for k, v in rec.items() if k.startswith("train/") and k != "train/loss"
            )
            self._bar.write(
                f"Epoch {epoch:4d} | train_loss {_fmt_term(rec.get('train/loss'))} | {terms} | {self.short} "
                f"{_fmt(rec.get(self.monitor))} | lr {_fmt(rec.get('lr'), '.1e')} | "
                f"elapsed {time.perf_counter() - self._t0:.1f}s",
                file=sys.stdout,
            )

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.on_train_end(trainer, pl_module)


class TensorBoardFigures(L.Callback):
    """Per-neuron correlation histogram every validation; a PSTH figure every ``every_n_epochs``."""

    def __init__(self, every_n_epochs: int = 25, n_neurons: int = 8):
        super().__init__()
        self.every_n_epochs = int(every_n_epochs)
        self.n_neurons = int(n_neurons)

    @staticmethod
    def _tb(trainer: L.Trainer):
        for logger in trainer.loggers:
            exp = getattr(logger, "experiment", None)
            if exp is not None and hasattr(exp, "add_histogram"):
                return exp
        return None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        tb = self._tb(trainer)
        arrays = getattr(pl_module, "last_val_arrays", None)
        if tb is None or not arrays:
            return
        epoch = trainer.current_epoch
        corr = arrays["per_neuron_corr"]
        corr = corr[np.isfinite(corr)]
        if corr.size:
            tb.add_histogram("val/per_neuron_corr", corr, global_step=epoch)
        last = trainer.max_epochs is not None and epoch + 1 >= trainer.max_epochs
        if self.every_n_epochs > 0 and (epoch % self.every_n_epochs == 0 or last or trainer.should_stop):
            from eirnn.plotting import psth_grid_figure

            fig = psth_grid_figure(
                arrays["psth_data"], arrays["psth_model"], arrays["per_neuron_corr"],
                is_excitatory=pl_module.model.is_excitatory[: pl_module.model.n_recorded].cpu().numpy(),
                n_neurons=self.n_neurons, title=f"epoch {epoch}",
            )
            tb.add_figure("val/psth_model_vs_data", fig, global_step=epoch, close=True)


class MetricsWriter(L.Callback):
    """Writes ``metrics.json`` (best and final validation metrics, epochs, time) and
    ``training_log.json`` (one record per validated epoch: losses, metrics, lr, epoch time).

    Contract with the LightningModule (``FitModule`` and the task modules follow it):
    ``history`` -- list of per-epoch dicts (``epoch``, ``lr``, ``epoch_time_s``, ``train/*``, ``val/*``);
    ``last_val`` -- the latest of them; ``best_val`` -- the one with the best monitored metric.
    """

    def __init__(self, output_dir: str, filename: str = "metrics.json", log_filename: str = "training_log.json"):
        super().__init__()
        self.path = Path(output_dir) / filename
        self.log_path = Path(output_dir) / log_filename
        self._t0 = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self._t0 = time.perf_counter()

    def summary(self, trainer: L.Trainer, pl_module) -> dict:
        stopped = getattr(trainer, "early_stopping_callback", None)
        return {
            "best": dict(pl_module.best_val),
            "final": dict(pl_module.last_val),
            "epochs_trained": int(trainer.current_epoch),
            "early_stopped": bool(
                stopped is not None and (stopped.stopped_epoch > 0 or stopped.wait_count >= stopped.patience
                                         or (trainer.should_stop and trainer.current_epoch < (trainer.max_epochs or 0)))
            ),
            "train_time_s": round(time.perf_counter() - self._t0, 2),
            **({"skipped_steps": int(pl_module.skipped_steps)} if getattr(pl_module, "skipped_steps", 0) else {}),
            **({"diverged": pl_module.diverged} if getattr(pl_module, "diverged", None) else {}),
        }

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            write_json_atomic(self.path, self.summary(trainer, pl_module))
            write_json_atomic(self.log_path, pl_module.history)


def write_json_atomic(path: Path, obj) -> None:
    """Write JSON through a temporary file in the same folder (no half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        json.dump(_jsonable(obj), f, indent=2, sort_keys=False)
    tmp.replace(path)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return None if math.isnan(v) or math.isinf(v) else v
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    return obj
