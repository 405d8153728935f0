"""Callbacks of the final-model run (``experiment=final_model``, ``callbacks=final``).

* :class:`PeriodicCheckpoint` -- ``checkpoints/epoch{E:04d}.ckpt`` every ``N`` epochs
  (``E`` counts completed epochs from 1, like the console lines).
* :class:`DetailedReport` -- every ``N`` epochs (and at the last epoch) extends the
  epoch's record in ``FitModule.history`` (so ``training_log.json`` and the checkpoints
  carry it) with per-neuron correlations, E and I mean correlations, ``h0`` statistics
  and the model and data Fano factors, and prints a detailed block.
* :class:`GracefulInterrupt` -- the first Ctrl+C (SIGINT) or SIGTERM during training
  asks the trainer to stop at the end of the current epoch (``trainer.should_stop`` set
  in ``on_validation_end``, as ``EarlyStopping`` does); the epoch is validated and
  checkpointed as usual, ``checkpoints/interrupted.ckpt`` is written in ``on_train_end``
  and training returns normally, so every artifact is still written (``eirnn.train``
  then exits with ``128 + signal number``). ``ckpt_path=.../interrupted.ckpt`` (same
  run folder: ``hydra.run.dir=RUN_DIR``) resumes exactly: same weights and metrics as
  an uninterrupted run (tests/test_final_model.py).

Why not Lightning's own handling (2.6, ``trainer/call.py`` and
``trainer/connectors/signal_connector.py``): a ``KeyboardInterrupt`` is caught by
``_call_and_handle_interrupt``, which runs the ``on_exception`` hooks and calls
``sys.exit(1)`` with no checkpoint of the current state; SIGTERM sets
``trainer.received_sigterm`` and the loops raise ``SIGTERMException`` (a ``SystemExit``
with exit status 0) right after the current *batch*, i.e. in the middle of an epoch,
before its validation and checkpoints. Both leave nothing to resume from cleanly.
So while training runs, :class:`GracefulInterrupt` replaces the SIGINT and SIGTERM
handlers (Lightning registers its SIGTERM handler before ``on_train_start`` and
restores the original handlers in its teardown). A second signal stops at once: a
second SIGINT raises ``KeyboardInterrupt`` (Lightning's path: ``on_exception`` hooks,
exit status 1), a second SIGTERM terminates the process (default action).
"""
from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import ModelCheckpoint

from eirnn.utils import fmt_num

__all__ = ["PeriodicCheckpoint", "DetailedReport", "GracefulInterrupt", "detailed_record"]


def _f(v: Any, spec: str = ".3f") -> str:
    return fmt_num(v, spec)


def _due(epoch_done: int, every: int) -> bool:
    return every > 0 and epoch_done % every == 0


class PeriodicCheckpoint(ModelCheckpoint):
    """Keeps a checkpoint every ``every_n_epochs`` epochs: ``<dirpath>/epoch0100.ckpt``, ...

    A :class:`~lightning.pytorch.callbacks.ModelCheckpoint` with no monitor and
    ``save_top_k=-1`` (all kept), saved at the same point of the epoch as ``best``/``last``
    (so resuming from it is exact). The number in the name is the count of completed
    epochs (Lightning's own ``{epoch}`` is 0-based). Each save prints
    ``  saved checkpoint: PATH`` (the last line of :class:`DetailedReport`'s block).
    """

    def __init__(self, dirpath: str, every_n_epochs: int = 100, filename: str = "epoch{epoch:04d}",
                 verbose_saves: bool = True):
        every = int(every_n_epochs)
        self.verbose_saves = bool(verbose_saves)
        super().__init__(
            dirpath=dirpath, filename=filename, monitor=None, save_top_k=-1 if every > 0 else 0,
            every_n_epochs=max(every, 0), save_last=False, auto_insert_metric_name=False,
        )
        self.every = every

    def format_checkpoint_name(self, metrics, filename=None, ver=None, prefix=None) -> str:
        metrics = dict(metrics)
        if "epoch" in metrics:
            metrics["epoch"] = int(metrics["epoch"]) + 1
        return super().format_checkpoint_name(metrics, filename=filename, ver=ver, prefix=prefix)

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        if self.verbose_saves and trainer.is_global_zero:
            _write_console(f"  saved checkpoint: {filepath}", trainer)


def detailed_record(pl_module, datamodule) -> dict[str, Any]:
    """The every-N-epochs additions to a ``training_log.json`` record.

    Keys: ``per_neuron_corr`` ``[N]`` (PSTH correlation of each recorded neuron at this
    validation), ``E_mean_corr`` / ``I_mean_corr`` and ``n_E`` / ``n_I``, ``h0_stats``
    (``mean``, ``std``, ``min``, ``max`` of the initial state over all units),
    ``fano_model`` / ``fano_data`` (NaN-means over neurons of
    :func:`eirnn.metrics.model_fano_factor` of the validation rates and
    :func:`eirnn.metrics.fano_factor` of the validation data). The model is run once
    on the validation trials with the validation noise seed (the rates the metric saw).
    """
    from eirnn import metrics as M
    from eirnn.report.artifacts import validation_rates

    arrays = getattr(pl_module, "last_val_arrays", {}) or {}
    last = getattr(pl_module, "last_val", {}) or {}
    model = pl_module.model
    exc = model.is_excitatory[: model.n_recorded].cpu().numpy()
    corr = np.asarray(arrays.get("per_neuron_corr", np.full(exc.shape, np.nan)), dtype=float)
    h0 = model.h0.detach().cpu().numpy().astype(float)
    val = validation_rates(pl_module, datamodule)
    bin_ms = float(getattr(pl_module, "bin_size_ms", 25.0))
    fano_model = M.model_fano_factor(val["model_rates"], val["mask"], bin_size_ms=bin_ms)
    fano_data = M.fano_factor(val["target_rates"], val["mask"], bin_size_ms=bin_ms)
    by_type = M.psth_corr_by_type(corr, exc)
    return {
        "per_neuron_corr": corr.tolist(),
        "E_mean_corr": last.get("val/psth_corr_E", by_type["E"]),
        "I_mean_corr": last.get("val/psth_corr_I", by_type["I"]),
        "n_E": int(exc.sum()),
        "n_I": int((~exc).sum()),
        "h0_stats": {"mean": float(h0.mean()), "std": float(h0.std()), "min": float(h0.min()), "max": float(h0.max())},
        "fano_model": float(np.nanmean(fano_model)) if np.isfinite(fano_model).any() else float("nan"),
        "fano_data": float(np.nanmean(fano_data)) if np.isfinite(fano_data).any() else float("nan"),
    }


class DetailedReport(L.Callback):
    """Every ``every_n_epochs`` epochs and at the last epoch (also when early stopping or an
    interruption ends training): :func:`detailed_record` appended to the epoch's history
    record, and a block on the console::

        === Epoch 100 detailed report ===
          E neurons: mean_corr=0.452 (n=25)
          I neurons: mean_corr=0.301 (n=16)
          Fano factor: model=1.34, data=3.12
          h0: mean=0.51, std=0.47, min=-0.20, max=1.90
          saved checkpoint: .../checkpoints/epoch0100.ckpt      (printed by PeriodicCheckpoint)

    The record is extended in ``on_validation_end``, before the checkpoint callbacks
    save (Lightning runs checkpoint callbacks last, and with validation every epoch
    ``ModelCheckpoint`` saves in the monitoring phase of ``on_train_epoch_end``), so
    checkpoints hold it too.
    """

    def __init__(self, every_n_epochs: int = 100, print_block: bool = True):
        super().__init__()
        self.every_n_epochs = int(every_n_epochs)
        self.print_block = bool(print_block)
        self._pending: dict[str, Any] | None = None

    def _is_last(self, trainer: L.Trainer) -> bool:
        return bool(trainer.should_stop) or (
            trainer.max_epochs is not None and trainer.max_epochs > 0 and trainer.current_epoch + 1 >= trainer.max_epochs
        )

    def on_validation_end(self, trainer: L.Trainer, pl_module) -> None:
        self._pending = None
        if trainer.sanity_checking or not getattr(pl_module, "history", None):
            return
        rec = pl_module.history[-1]
        if rec.get("epoch") != trainer.current_epoch:
            return
        if not (_due(trainer.current_epoch + 1, self.every_n_epochs) or self._is_last(trainer)):
            return
        extra = detailed_record(pl_module, trainer.datamodule)
        rec.update(extra)
        self._pending = extra

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        extra, self._pending = self._pending, None
        if extra is not None:
            self._print(trainer, trainer.current_epoch + 1, extra)

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        """Training ended on an epoch that got no record (early stopping, interruption): add it
        (the weights are that epoch's) and rewrite ``training_log.json``, which
        :class:`~eirnn.training.callbacks.MetricsWriter` has just written without it."""
        history = getattr(pl_module, "history", None)
        if not history or "per_neuron_corr" in history[-1]:
            return
        extra = detailed_record(pl_module, trainer.datamodule)
        history[-1].update(extra)
        self._print(trainer, int(history[-1]["epoch"]) + 1, extra)
        from eirnn.training.callbacks import MetricsWriter
        from eirnn.utils import write_json_atomic

        for cb in trainer.callbacks:
            if isinstance(cb, MetricsWriter) and trainer.is_global_zero and cb.log_path.exists():
                write_json_atomic(cb.log_path, history)

    def _print(self, trainer: L.Trainer, epoch: int, extra: dict[str, Any]) -> None:
        if not self.print_block or not trainer.is_global_zero:
            return
        h = extra["h0_stats"]
        lines = [
            f"=== Epoch {epoch} detailed report ===",
            f"  E neurons: mean_corr={_f(extra['E_mean_corr'])} (n={extra['n_E']})",
            f"  I neurons: mean_corr={_f(extra['I_mean_corr'])} (n={extra['n_I']})",
            f"  Fano factor: model={_f(extra['fano_model'], '.2f')}, data={_f(extra['fano_data'], '.2f')}",
            f"  h0: mean={_f(h['mean'], '.2f')}, std={_f(h['std'], '.2f')}, min={_f(h['min'], '.2f')}, max={_f(h['max'], '.2f')}",
        ]
        _write_console("\n".join(lines), trainer)


def _write_console(text: str, trainer: L.Trainer) -> None:
    """Print above the epoch progress bar when there is one (tqdm.write), else plainly; once into train.log."""
    from eirnn.training.console import announce, to_file_only

    bar = getattr(trainer, "progress_bar_callback", None)
    tq = getattr(bar, "_bar", None)
    if tq is not None:
        tq.write(text, file=sys.stdout)
        to_file_only("\n" + text)
    else:
        announce(text)


class GracefulInterrupt(L.Callback):
    """Stop at the end of the current epoch on the first SIGINT / SIGTERM; see the module docstring.

    After training, :attr:`interrupted_by` is ``"SIGINT"`` or ``"SIGTERM"`` (else
    ``None``), :attr:`stopped_epoch` the number of completed epochs and
    :attr:`checkpoint` the path of ``interrupted.ckpt``. ``exit_code`` is
    ``128 + signum`` (130 for SIGINT, 143 for SIGTERM), the shell convention.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, checkpoint_dir: str, filename: str = "interrupted.ckpt"):
        super().__init__()
        self.checkpoint_path = Path(checkpoint_dir) / filename
        self.interrupted_by: str | None = None
        self.signum: int | None = None
        self.stopped_epoch: int | None = None
        self.checkpoint: str | None = None
        self._previous: dict[int, Any] = {}

    @property
    def exit_code(self) -> int:
        return 0 if self.signum is None else 128 + int(self.signum)

    # ----------------------------------------------------------- handlers
    def _handler(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.interrupted_by is not None:  # second signal: give up waiting for the epoch to end
            self._restore()
            if signum == signal.SIGINT:
                raise KeyboardInterrupt  # Lightning: on_exception hooks, exit status 1
            signal.signal(signum, signal.SIG_DFL)  # not Lightning's handler: that would only set a flag
            signal.raise_signal(signum)  # terminated by the signal (status 128 + signum)
            return
        self.interrupted_by, self.signum = name, int(signum)
        msg = (f"\n{name} received: finishing the current epoch, then saving a checkpoint and every artifact "
               f"(send it again to stop at once, without them)")
        print(msg, file=sys.stderr, flush=True)

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for s in self.SIGNALS:
            self._previous[s] = signal.getsignal(s)
            signal.signal(s, self._handler)

    def _restore(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for s, h in self._previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
        self._previous = {}

    # -------------------------------------------------------------- hooks
    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        self.interrupted_by = self.signum = self.stopped_epoch = self.checkpoint = None
        self._install()

    def on_validation_end(self, trainer: L.Trainer, pl_module) -> None:
        if self.interrupted_by is not None and not trainer.sanity_checking:
            trainer.should_stop = True  # the checkpoint callbacks (run after this one) still save this epoch

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        self._restore()
        if self.interrupted_by is None:
            return
        self.stopped_epoch = int(trainer.current_epoch)
        self.checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(str(self.checkpoint_path))
        self.checkpoint = str(self.checkpoint_path)
        _write_console(
            f"training interrupted by {self.interrupted_by} after {self.stopped_epoch} epochs; "
            f"state saved to {self.checkpoint}", trainer,
        )

    def on_exception(self, trainer: L.Trainer, pl_module, exception: BaseException) -> None:
        self._restore()

    def teardown(self, trainer: L.Trainer, pl_module, stage: str) -> None:
        self._restore()

    def extend_summary(self, summary: dict) -> None:
        """Adds ``interrupted`` (signal name), ``interrupted_checkpoint`` and ``exit_code`` to the run summary."""
        if self.interrupted_by is not None:
            summary["interrupted"] = self.interrupted_by
            summary["interrupted_checkpoint"] = self.checkpoint
            summary["exit_code"] = self.exit_code
