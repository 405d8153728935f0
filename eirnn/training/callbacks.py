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

from eirnn.utils import fmt_num, write_json_atomic


def _fmt(v: float | None, spec: str = ".4f") -> str:
    return fmt_num(v, spec)


def _fmt_term(v: float | None) -> str:
    """A loss term for the console: fixed point, or scientific when fixed point would hide it."""
    if v is not None and not (isinstance(v, float) and math.isnan(v)) and v != 0 and not 1e-3 <= abs(v) < 1e5:
        return format(v, ".3e")
    return _fmt(v)


class EpochProgressBar(ProgressBar):
    """Console progress over epochs: a bar on a terminal, plain lines otherwise.

    ``bar``: ``auto`` (a tqdm bar only when stdout is a terminal: a file, as on SLURM, gets
    no carriage-return frames), ``true`` or ``false``. Every ``print_every`` epochs (and at the
    last one) an epoch line with the training loss terms, the monitored validation metric
    (``monitor``), the learning rate and the time; an early-stopping notice when early stopping
    ends the run. These lines go through the ``eirnn.train`` logger, so they are on the console
    and in ``train.log`` once each (with a bar, the console copy is written above the bar). The
    bar's postfix shows the epoch's loss, the monitored metric, the best so far and the lr.
    Epochs are counted from 1, as everywhere a person reads them. It reads the module's
    ``last_val`` / ``best_val`` records (see :class:`MetricsWriter` for the contract).
    """

    def __init__(self, print_every: int = 10, monitor: str = "val/psth_corr", bar: str | bool = "auto"):
        super().__init__()
        self.print_every = int(print_every)
        self.monitor = monitor
        self.short = monitor.split("/")[-1]
        if str(bar).lower() not in ("auto", "true", "false"):
            raise ValueError(f"callbacks.progress.bar must be auto, true or false, got {bar!r}")
        self.bar_mode = str(bar).lower()
        self._enabled = True
        self._bar = None
        self._t0 = 0.0
        self._last_line_epoch = -1
        self._redirect = None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _want_bar(self) -> bool:
        from eirnn.training.console import stdout_is_terminal

        return self.bar_mode == "true" or (self.bar_mode == "auto" and stdout_is_terminal())

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = time.perf_counter()
        if not self._enabled or not trainer.is_global_zero or not self._want_bar():
            return
        from tqdm.auto import tqdm

        self._bar = tqdm(
            total=trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None,
            initial=trainer.current_epoch, desc="train", unit="epoch", dynamic_ncols=True,
            file=sys.stdout, mininterval=0.5, leave=True,
        )
        import logging

        from tqdm.contrib.logging import logging_redirect_tqdm

        # other log records (Lightning's "fit stopped", warnings) above the bar, not glued onto it;
        # only where the root logger prints to the console (a Hydra run), with its format and filters
        if any(type(h) is logging.StreamHandler and h.stream in (sys.stdout, sys.stderr)
               for h in logging.getLogger().handlers):
            self._redirect = logging_redirect_tqdm()
            self._redirect.__enter__()

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._redirect is not None:
            self._redirect.__exit__(None, None, None)
            self._redirect = None

    def _emit(self, line: str) -> None:
        """One line on the console (above the bar when there is one) and in ``train.log``."""
        from eirnn.training.console import log, to_file_only

        if self._bar is not None:
            self._bar.write(line, file=sys.stdout)
            to_file_only(line)
        else:
            log.info("%s", line)

    def epoch_line(self, epoch: int, rec: dict) -> str:
        """The line of (1-based) ``epoch`` from its history record ``rec``."""
        terms = " | ".join(
            f"{k.split('/')[-1]} {_fmt_term(v)}" for k, v in rec.items() if k.startswith("train/")
            and k not in ("train/loss", "train/skipped_steps")
        )
        return (f"Epoch {epoch:4d} | train_loss {_fmt_term(rec.get('train/loss'))} | {terms} | {self.short} "
                f"{_fmt(rec.get(self.monitor))} | lr {_fmt(rec.get('lr'), '.1e')} | "
                f"elapsed {time.perf_counter() - self._t0:.1f}s")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._enabled or not trainer.is_global_zero:
            return
        rec = getattr(pl_module, "last_val", {}) or {}
        best = getattr(pl_module, "best_val", {}) or {}
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix_str(
                f"loss={_fmt(rec.get('train/loss'))} {self.short}={_fmt(rec.get(self.monitor))} "
                f"best={_fmt(best.get(self.monitor))} lr={_fmt(rec.get('lr'), '.1e')}",
                refresh=False,
            )
        epoch = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and epoch == trainer.max_epochs  # before Lightning's "fit stopped" line
        if self.print_every > 0 and (epoch % self.print_every == 0 or last) and rec:
            self._emit(self.epoch_line(epoch, rec))
            self._last_line_epoch = epoch

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close_bar()
        if not self._enabled or not trainer.is_global_zero:
            return
        history = getattr(pl_module, "history", None) or []
        if history and self.print_every > 0:
            last = int(history[-1].get("epoch", trainer.current_epoch)) + 1
            if last != self._last_line_epoch:  # the final epoch's numbers are always in the log
                self._emit(self.epoch_line(last, history[-1]))
                self._last_line_epoch = last
        notice = early_stopping_notice(trainer, pl_module, self.monitor)
        if notice:
            self._emit(notice)

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._close_bar()


def early_stopping_notice(trainer: L.Trainer, pl_module, monitor: str) -> str | None:
    """One line when early stopping ended the run (1-based epochs), else None."""
    from lightning.pytorch.callbacks import EarlyStopping

    es = next((c for c in trainer.callbacks if isinstance(c, EarlyStopping)), None)
    if es is None or getattr(pl_module, "diverged", None):
        return None
    history = getattr(pl_module, "history", None) or []
    last = history[-1] if history else {}
    value = last.get(es.monitor)
    nonfinite = value is not None and not math.isfinite(value)
    if not (es.stopped_epoch > 0 or es.wait_count >= es.patience or (nonfinite and trainer.should_stop)):
        return None
    epoch = int(last.get("epoch", es.stopped_epoch)) + 1
    if nonfinite:
        return f"early stopping after epoch {epoch}: {es.monitor} is not finite"
    best = getattr(pl_module, "best_val", {}) or {}
    best_txt = ""
    if best.get("epoch") is not None:  # the checkpoint's best: smaller gains than min_delta count there
        best_txt = f"; best checkpoint {_fmt(best.get(es.monitor))} at epoch {int(best['epoch']) + 1}"
    ref = ""
    try:  # the value early stopping compares with (its last improvement by more than min_delta)
        score = float(es.best_score)
        if math.isfinite(score):
            every = int(getattr(trainer, "check_val_every_n_epoch", 1) or 1)
            ref = f" on {_fmt(score)} (epoch {epoch - int(es.wait_count) * every})"
    except (AttributeError, TypeError, ValueError):
        pass
    return (f"early stopping after epoch {epoch}: {es.monitor} did not improve by more than "
            f"{abs(es.min_delta):g}{ref} for {es.patience} epochs{best_txt}")


class TensorBoardFigures(L.Callback):
    """Per-neuron correlation histogram every validation; a PSTH figure every ``every_n_epochs``
    (and at the last epoch): time in ms, task events as dashed lines (median time over the
    validation trials), E/I colours in the legend. Both at step = epoch (counted from 1), the
    step of every scalar (:mod:`eirnn.training.loggers`). Also sets TensorBoard's Custom Scalars
    layout (model vs data rates, E vs I currents; :data:`eirnn.training.dashboard.CUSTOM_SCALARS`).
    """

    def __init__(self, every_n_epochs: int = 25, n_neurons: int = 8):
        super().__init__()
        self.every_n_epochs = int(every_n_epochs)
        self.n_neurons = int(n_neurons)
        self._time_ms = None
        self._events: dict[str, float] = {}

    @staticmethod
    def _tb(trainer: L.Trainer):
        for logger in trainer.loggers:
            exp = getattr(logger, "experiment", None)
            if exp is not None and hasattr(exp, "add_histogram"):
                return exp
        return None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from eirnn.training.dashboard import CUSTOM_SCALARS, event_markers_ms

        dm = getattr(trainer, "datamodule", None)
        session = getattr(dm, "session", None)
        t = getattr(session, "time_axis_ms", None)
        self._time_ms = None if t is None else np.asarray(t, dtype=float)
        try:
            self._events = event_markers_ms(dm) if dm is not None else {}
        except Exception:  # markers are a help, never a reason to stop training
            self._events = {}
        tb = self._tb(trainer)
        if tb is not None and trainer.is_global_zero and hasattr(tb, "add_custom_scalars"):
            tb.add_custom_scalars(CUSTOM_SCALARS)
            tb.add_text("run/model", model_card(pl_module.model), global_step=trainer.current_epoch + 1)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        tb = self._tb(trainer)
        arrays = getattr(pl_module, "last_val_arrays", None)
        if tb is None or not arrays:
            return
        epoch = trainer.current_epoch
        step = epoch + 1  # epochs counted from 1, like the scalars' step
        corr = arrays["per_neuron_corr"]
        corr = corr[np.isfinite(corr)]
        if corr.size:
            tb.add_histogram("val/per_neuron_corr", corr, global_step=step)
        last = trainer.max_epochs is not None and epoch + 1 >= trainer.max_epochs
        if self.every_n_epochs > 0 and (step % self.every_n_epochs == 0 or step == 1 or last or trainer.should_stop):
            from eirnn.plotting import psth_grid_figure

            t = self._time_ms
            if t is not None and t.shape[0] != arrays["psth_data"].shape[0]:
                t = None
            fig = psth_grid_figure(
                arrays["psth_data"], arrays["psth_model"], arrays["per_neuron_corr"],
                is_excitatory=pl_module.model.is_excitatory[: pl_module.model.n_recorded].cpu().numpy(),
                n_neurons=self.n_neurons, title=f"epoch {step}: validation PSTH, model vs data",
                time_ms=t, events_ms=self._events if t is not None else None,
            )
            tb.add_figure("val/psth_model_vs_data", fig, global_step=step, close=True)
            cond = arrays.get("condition")
            if cond is not None and np.any(cond["location"] > 0):  # issue 15: event-aligned, by target location
                from eirnn.report.condition_figures import condition_psth_grid

                names = {int(g): f"location {int(g)}" for g in np.unique(cond["location"]) if g > 0}
                fig = condition_psth_grid(cond["model_a"], cond["data_a"], cond["mask_a"], cond["seg"],
                                          cond["windows_ms"], float(pl_module.bin_size_ms), cond["location"], names,
                                          pl_module.model.is_excitatory[: pl_module.model.n_recorded].cpu().numpy(),
                                          n_neurons=4, sigma_bins=cond["sigma_bins"], title=f"epoch {step}: validation trials by target location")
                tb.add_figure("val/condition_psth_grid", fig, global_step=step, close=True)


def model_card(model) -> str:
    """Markdown for TensorBoard's Text tab: the model's one-line description and its trainable
    parameter counts by part (:func:`eirnn.training.loggers.parameter_counts`)."""
    from eirnn.training.loggers import parameter_counts

    desc = model.describe() if hasattr(model, "describe") else type(model).__name__
    rows = [f"| `{k.split('/', 1)[1]}` | {v} |" for k, v in parameter_counts(model).items()]
    return "\n".join([desc, "", "| trainable parameters | count |", "|---|---|", *rows])


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
        self._t0: float | None = None  # None until training starts (trainer.max_epochs=0: never)

    def on_train_start(self, trainer, pl_module) -> None:
        self._t0 = time.perf_counter()

    def summary(self, trainer: L.Trainer, pl_module) -> dict:
        """The run summary, with ``outcome``/``reason`` as far as the trainer knows them
        (:func:`settle_outcome`; ``eirnn.train`` settles them after interruption handling)."""
        stopped = getattr(trainer, "early_stopping_callback", None)
        out = {
            "best": dict(pl_module.best_val),
            "final": dict(pl_module.last_val),
            "epochs_trained": int(trainer.current_epoch),
            "early_stopped": bool(
                stopped is not None and (stopped.stopped_epoch > 0 or stopped.wait_count >= stopped.patience
                                         or (trainer.should_stop and trainer.current_epoch < (trainer.max_epochs or 0)))
            ),
            "train_time_s": 0.0 if self._t0 is None else round(time.perf_counter() - self._t0, 2),
            **({"skipped_steps": int(pl_module.skipped_steps)} if getattr(pl_module, "skipped_steps", 0) else {}),
            **({"diverged": pl_module.diverged} if getattr(pl_module, "diverged", None) else {}),
        }
        monitor = getattr(stopped, "monitor", None) or getattr(getattr(trainer, "checkpoint_callback", None),
                                                              "monitor", None) or "val/psth_corr"
        settle_outcome(out, trainer=trainer, pl_module=pl_module, monitor=monitor)
        return out

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            write_json_atomic(self.path, self.summary(trainer, pl_module))
            write_json_atomic(self.log_path, pl_module.history)


OUTCOMES = ("completed", "early_stopped", "diverged", "interrupted", "failed")


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def params_finite(pl_module) -> bool:
    """Every parameter and buffer of ``pl_module`` is finite."""
    import torch

    for t in list(pl_module.parameters()) + list(pl_module.buffers()):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return False
    return True


def settle_outcome(summary: dict, trainer=None, pl_module=None, monitor: str = "val/psth_corr") -> dict:
    """Set ``summary["outcome"]`` (one of :data:`OUTCOMES`) and ``summary["reason"]``.

    In order: ``interrupted`` (a signal: ``summary["interrupted"]``); ``diverged`` (the
    module's own verdict, non-finite weights, or the monitored metric non-finite at the last
    validation / never finite) -- then ``summary["diverged"]`` holds the reason and
    ``early_stopped`` is false; ``early_stopped``; ``completed`` (``trainer.max_epochs``
    reached, including ``max_epochs=0``: nothing trained). ``failed`` is set by
    ``eirnn.train`` when training raised.
    """
    epochs = summary.get("epochs_trained")
    best, final = summary.get("best") or {}, summary.get("final") or {}
    max_epochs = getattr(trainer, "max_epochs", None) if trainer is not None else None
    if summary.get("interrupted"):
        summary["outcome"] = "interrupted"
        summary["reason"] = f"{summary['interrupted']} after {epochs} epochs; state saved to " \
                            f"{summary.get('interrupted_checkpoint')}"
        return summary
    reason = summary.get("diverged")
    if not reason and pl_module is not None and not params_finite(pl_module):
        reason = "the model's weights are not finite (NaN or inf)"
    if not reason and final and monitor in final and not _finite(final.get(monitor)):
        if any(_finite(best.get(k)) for k in (monitor,)):
            ep = final.get("epoch")
            reason = f"{monitor} became non-finite (epoch {'?' if ep is None else int(ep) + 1}); " \
                     "lower optim.lr or raise optim.warmup_steps"
        else:
            reason = f"{monitor} was never finite (the network's rates overflowed); " \
                     "lower optim.lr or raise optim.warmup_steps"
    if reason:
        summary.update(outcome="diverged", reason=str(reason), diverged=str(reason), early_stopped=False)
        return summary
    if not epochs:
        summary["outcome"] = "completed"
        summary["reason"] = (f"trainer.max_epochs={max_epochs}: no epoch to train" if max_epochs is not None
                             and max_epochs <= (epochs or 0) else "no epoch trained")
        return summary
    if summary.get("early_stopped"):
        es = getattr(trainer, "early_stopping_callback", None) if trainer is not None else None
        detail = (f" by more than {abs(es.min_delta):g} for {es.patience} epochs" if es is not None else "")
        summary["outcome"] = "early_stopped"
        summary["reason"] = f"{monitor} did not improve{detail}; stopped after {epochs} epochs"
        return summary
    summary["outcome"] = "completed"
    summary["reason"] = f"reached trainer.max_epochs={max_epochs}" if max_epochs is not None else "training ended"
    return summary

