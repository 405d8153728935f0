"""Experiment loggers on one axis (the epoch) and the HParams of a run.

Lightning logs epoch-level metrics at the optimiser step (``global_step``) and adds an
``epoch`` scalar to every call; our figures and histograms are per epoch. The loggers here put
every entry at ``step = epoch + 1`` (epochs counted from 1, like the console, ``train.log`` and
the reports), so TensorBoard's curves, image slider and histograms line up, and ``epoch`` is
not logged as a scalar of its own (it is the step). The CSV logger also merges the calls of
one epoch (training and validation metrics) into one row.

:func:`run_hparams` builds the HParams of a run: the resolved model / loss / optim / scheduler /
data settings, the config group choices, the seed, ``tags``, parameter counts; numbers stay
numbers and unset (None) values are left out.
"""
from __future__ import annotations

import math
import os
from typing import Any, Mapping

from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

#: config sections that are hyperparameters (runtime settings such as threads, paths,
#: callbacks, logger or trainer devices are not)
HPARAM_SECTIONS = ("model", "loss", "optim", "scheduler", "data")
#: config groups whose choice (``model=lowrank``) is recorded as ``choice/<group>``
CHOICE_GROUPS = ("model", "loss", "optim", "scheduler", "data", "rank", "module", "experiment", "variant")
#: keys left out of the data section (where the data is, how it is served)
_DATA_RUNTIME = ("num_workers", "pin_memory")


def _epoch_step(metrics: Mapping[str, Any], step: int | None) -> tuple[dict[str, Any], int | None]:
    metrics = dict(metrics)
    epoch = metrics.pop("epoch", None)
    if epoch is not None:
        step = int(epoch) + 1
    return metrics, step


class EpochTensorBoardLogger(TensorBoardLogger):
    """TensorBoard at ``step = epoch + 1``; the HParams metrics (``hp/best_*``) at the last
    epoch's step (Lightning puts them at 0, off the axis); ``hparams.yaml`` rewritten whenever
    HParams are set."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._last_step = 0
        self._hparams_call = False

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        metrics, step = _epoch_step(metrics, step)
        if self._hparams_call:
            step = self._last_step
        elif step is not None:
            self._last_step = max(self._last_step, int(step))
        if metrics:
            super().log_metrics(metrics, step)

    def log_hyperparams(self, params: Any, metrics: Mapping[str, float] | None = None) -> None:
        self._hparams_call = True
        try:
            super().log_hyperparams(params, metrics)
        finally:
            self._hparams_call = False

    def save(self) -> None:
        super().save()
        if self.hparams:  # Lightning writes hparams.yaml once, before any HParams exist ({})
            from lightning.pytorch.core.saving import save_hparams_to_yaml

            from eirnn.utils import atomic_write  # temp file beside it, fsync, rename

            os.makedirs(self.log_dir, exist_ok=True)
            atomic_write(os.path.join(self.log_dir, self.NAME_HPARAMS_FILE),
                         lambda tmp: save_hparams_to_yaml(tmp, self.hparams), by_path=True)


class EpochCSVLogger(CSVLogger):
    """``metrics.csv`` with one row per epoch (``step`` = epoch + 1) and ``hparams.yaml``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._pending: tuple[int, dict[str, Any]] | None = None

    def _flush(self) -> None:
        if self._pending is not None:
            step, row = self._pending
            self._pending = None
            super().log_metrics(row, step)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        metrics, step = _epoch_step(metrics, step)
        if not metrics:
            return
        if step is None:
            self._flush()
            super().log_metrics(metrics, step)
            return
        if self._pending is not None and self._pending[0] != step:
            self._flush()
        if self._pending is None:
            self._pending = (step, {})
        self._pending[1].update(metrics)

    def log_hyperparams(self, params: Any = None, metrics: Mapping[str, float] | None = None) -> None:
        super().log_hyperparams(params)
        if metrics:
            self._flush()
            super().log_metrics(dict(metrics), 0)

    def finalize(self, status: str) -> None:
        self._flush()
        super().finalize(status)


# ---------------------------------------------------------------- HParams
def _flatten(obj: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if str(k) == "_target_" or str(k).startswith("_"):
                continue
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
        return
    if obj is None:
        return  # unset: no column rather than the string 'None'
    if isinstance(obj, bool) or isinstance(obj, (int, float, str)):
        if isinstance(obj, float) and not math.isfinite(obj):
            return
        out[prefix] = obj
        return
    out[prefix] = str(obj)  # lists: one text value


def parameter_counts(model) -> dict[str, int]:
    """Trainable parameters in total and by top-level submodule or parameter
    (``params/total``, ``params/recurrent``, ``params/W_in``, ...)."""
    counts: dict[str, int] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        group = name.split(".")[0]
        counts[f"params/{group}"] = counts.get(f"params/{group}", 0) + int(p.numel())
    counts["params/total"] = sum(counts.values())
    return dict(sorted(counts.items()))


def hydra_choices() -> dict[str, str]:
    """``{group: option}`` of the running Hydra job (empty outside one)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            return {}
        choices = HydraConfig.get().runtime.choices
        return {str(k): str(v) for k, v in choices.items() if v is not None and str(v) != "null"}
    except Exception:
        return {}


def run_hparams(cfg, model=None) -> dict[str, Any]:
    """HParams of a run (see the module docstring): ``{name: number | bool | str}``."""
    from omegaconf import OmegaConf

    out: dict[str, Any] = {}
    for key in ("seed",):
        if cfg.get(key) is not None:
            out[key] = cfg.get(key)
    max_epochs = OmegaConf.select(cfg, "trainer.max_epochs", default=None)
    if max_epochs is not None:
        out["trainer.max_epochs"] = int(max_epochs)
    for section in HPARAM_SECTIONS:
        if section not in cfg or cfg[section] is None:
            continue
        try:
            sub = OmegaConf.to_container(cfg[section], resolve=True)
        except Exception:  # an interpolation that only resolves inside its run
            sub = OmegaConf.to_container(cfg[section], resolve=False)
        if section == "data" and isinstance(sub, dict):
            sub = {k: v for k, v in sub.items() if k not in _DATA_RUNTIME}
        _flatten(sub, section, out)
    choices = hydra_choices()
    for group in CHOICE_GROUPS:
        if group in choices:
            out[f"choice/{group}"] = choices[group]
    tags = cfg.get("tags")
    if tags:
        out["tags"] = ",".join(str(t) for t in tags) if not isinstance(tags, str) else tags
    if model is not None:
        out.update(parameter_counts(model))
    return out
