"""One LightningModule lifecycle for every training module (fit, task, and their ensembles).

Shared here (manual optimisation; subclasses write ``training_step``, ``validation_step`` and
``compute_val_metrics``):

- :func:`build_optimizer` / :func:`build_scheduler`: the ONE optimiser / scheduler factory
  (``optim.name`` adam | adamw, ``scheduler.name`` none | plateau | cosine);
- :class:`LifecycleModule`: gather of the validation step outputs, the per-epoch record
  ``{epoch, lr, epoch_time_s, **val, **train epoch means}`` appended to ``history``,
  ``best_val`` by ``monitor`` / ``mode``, the plateau step on the monitored value and the
  epoch-wise step of the other schedules, the epoch timer.

Effective settings (one place, the same for every module): AdamW's weight decay is the
configured ``optim.weight_decay`` (``conf/optim/adamw.yaml``: 1e-2; 1e-2 when the key is absent,
torch's default); the plateau scheduler follows the module's ``mode`` and counts a NaN
metric as an epoch without improvement; its ``factor`` / ``patience`` / ``min_lr`` come from
``conf/scheduler/plateau.yaml`` (0.5 / 50 / 1e-5, also the defaults here).
"""
from __future__ import annotations

import math
import time
from typing import Any, Iterable, Mapping

import lightning as L
import torch

PLATEAU_DEFAULTS = {"factor": 0.5, "patience": 50, "min_lr": 1e-5}


def cfg_get(cfg: Mapping[str, Any] | None, key: str, default: Any) -> Any:
    """``cfg[key]``, or ``default`` when ``cfg`` is None or the value is missing / None."""
    if cfg is None:
        return default
    v = cfg.get(key, default)
    return default if v is None else v


def build_optimizer(params: Iterable[torch.nn.Parameter], optim: Mapping[str, Any] | None,
                    capturable: bool = False) -> torch.optim.Optimizer:
    """``optim.name`` adam | adamw at ``optim.lr`` (1e-3) with ``optim.weight_decay`` (adam: 0,
    adamw: 1e-2 when unset). ``capturable``: Adam keeps its step count on the device (CUDA graphs)."""
    name = str(cfg_get(optim, "name", "adam")).lower()
    lr = float(cfg_get(optim, "lr", 1e-3))
    extra = {"capturable": True} if capturable else {}
    params = [p for p in params if p.requires_grad]
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=float(cfg_get(optim, "weight_decay", 0.0)), **extra)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=float(cfg_get(optim, "weight_decay", 1e-2)), **extra)
    raise ValueError(f"optim.name must be 'adam' or 'adamw', got {name!r}")


def cosine_with_warmup(warmup: int, total: int, floor: float = 0.01):
    """LR multiplier per epoch: linear ``(e+1)/warmup`` ramp, then cosine decay to ``floor``."""

    def factor(epoch: int) -> float:
        if warmup > 0 and epoch < warmup:
            return (epoch + 1) / warmup
        progress = (epoch - warmup) / max(1, total - warmup)
        return max(floor, 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))

    return factor


def build_scheduler(opt: torch.optim.Optimizer, scheduler: Mapping[str, Any] | None, mode: str, max_epochs: int):
    """``None`` (``none``), ``ReduceLROnPlateau`` (``plateau``, in ``mode``) or the cosine ``LambdaLR``
    (``warmup_epochs``, ``total_epochs`` (default ``max_epochs``), ``min_lr_ratio``)."""
    sname = str(cfg_get(scheduler, "name", "none")).lower()
    if sname == "none":
        return None
    if sname == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode=mode, factor=float(cfg_get(scheduler, "factor", PLATEAU_DEFAULTS["factor"])),
            patience=int(cfg_get(scheduler, "patience", PLATEAU_DEFAULTS["patience"])),
            min_lr=float(cfg_get(scheduler, "min_lr", PLATEAU_DEFAULTS["min_lr"])))
    if sname == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(opt, cosine_with_warmup(
            int(cfg_get(scheduler, "warmup_epochs", 0)), int(cfg_get(scheduler, "total_epochs", max_epochs)),
            float(cfg_get(scheduler, "min_lr_ratio", 0.01))))
    raise ValueError(f"scheduler.name must be none, plateau or cosine, got {sname!r}")


def is_better(cur: float, old: float | None, mode: str) -> bool:
    """``cur`` beats ``old`` in ``mode`` (max | min); NaN never does; anything beats ``None``."""
    if math.isnan(cur):
        return False
    return old is None or (cur > old if mode == "max" else cur < old)


class LifecycleModule(L.LightningModule):
    """The lifecycle shared by every training module (see the module docstring).

    Subclasses set ``self.model``, call :meth:`init_lifecycle` in ``__init__`` and append their
    validation step outputs to ``self._val_outputs``.
    """

    mode = "max"
    #: the module of :mod:`eirnn.training.ensemble` that trains ``ensemble.size > 1`` of this module
    #: (``None``: not supported)
    ensemble_machinery: str | None = None

    def init_lifecycle(self, optim: Mapping[str, Any] | None, scheduler: Mapping[str, Any] | None,
                       monitor: str, mode: str, max_epochs: int) -> None:
        self.automatic_optimization = False
        self.optim_cfg, self.sched_cfg = dict(optim or {}), dict(scheduler or {})
        self.monitor, self.mode = str(monitor), str(mode).lower()
        if self.mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.max_epochs = int(max_epochs)
        self.history: list[dict[str, float]] = []
        self.last_val: dict[str, float] = {}
        self.best_val: dict[str, float] = {}
        self._val_outputs: list[dict[str, torch.Tensor]] = []
        self._train_sums: dict[str, Any] = {}
        self._train_count = 0
        self._epoch_t0 = time.perf_counter()

    # ------------------------------------------------------------ epoch
    def gather_val(self, dim: int = 0) -> dict[str, torch.Tensor]:
        """The validation step outputs concatenated along ``dim`` (the trial axis)."""
        keys = self._val_outputs[0].keys()
        return {k: torch.cat([o[k] for o in self._val_outputs], dim) for k in keys}

    def epoch_time(self) -> float:
        """Seconds since the previous call (the epoch timer)."""
        now = time.perf_counter()
        dt, self._epoch_t0 = now - self._epoch_t0, now
        return dt

    def train_means(self) -> dict[str, float]:
        """The epoch means of the step values summed in ``_train_sums``."""
        return {k: float(t) / max(self._train_count, 1) for k, t in self._train_sums.items()}

    def is_better(self, cur: float, best: Mapping[str, float]) -> bool:
        """Whether ``cur`` (the monitored value) replaces ``best`` (a record; empty: always)."""
        return not best or is_better(cur, best.get(self.monitor), self.mode)

    def log_val(self, vals: Mapping[str, float], key: str) -> None:
        """Every finite value, and ``key`` (on the progress bar, even when NaN)."""
        self.log_dict({k: v for k, v in vals.items() if k != key and not math.isnan(v)})
        if key in vals:
            self.log(key, vals[key], prog_bar=True)

    def end_epoch(self, record: dict[str, float], cur: float) -> None:
        """Append ``record`` to ``history``, update ``best_val`` by ``cur`` and step a plateau schedule."""
        self.history.append(record)
        self.last_val = record
        if self.is_better(cur, self.best_val):
            self.best_val = dict(record)
        sch = self.lr_schedulers()
        if isinstance(sch, torch.optim.lr_scheduler.ReduceLROnPlateau):
            sch.step(cur)

    def step_epoch_scheduler(self) -> None:
        """The epoch-wise step of a schedule other than plateau (at the end of a training epoch)."""
        sch = self.lr_schedulers()
        if sch is not None and not isinstance(sch, torch.optim.lr_scheduler.ReduceLROnPlateau):
            sch.step()

    # ------------------------------------------------------------ optimisers
    def capturable_optimizer(self) -> bool:
        """Whether Adam keeps its step count on the device (CUDA graphs); see FitModule."""
        return False

    def configure_optimizers(self):
        opt = build_optimizer(self.model.parameters(), self.optim_cfg, capturable=self.capturable_optimizer())
        sch = build_scheduler(opt, self.sched_cfg, self.mode, self.max_epochs)
        if sch is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sch, "interval": "epoch"}}
