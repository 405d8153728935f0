"""What every ensemble shares: per-member gradient clipping and plateau, the ONE member checkpoint
format, the artifacts callback that writes it, and the config helpers.

Member checkpoint (``<run>/members/m{k}/checkpoints/{best,last}.ckpt``), the single run's layout::

    {"state_dict": {"model.<name>": tensor, ...},     # member k's weights as the single model's
     "eirnn_member": {"member": k, "seed": s, "epoch": e, "metrics": {...}},
     "epoch": e, "global_step": n, ...}               # + "eirnn_task" for task networks

:func:`load_member_checkpoint` opens it, and also the older files: a fit member's bare
``members/m{k}/best.pt`` state dict and a task member's ``.ckpt`` without ``eirnn_member``.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import lightning as L
import numpy as np
import torch

from eirnn.errors import UserError
from eirnn.training.balancer import member_grad_norms, per_member

__all__ = ["member_grad_norms", "per_member", "clip_member_grad_norms_", "MemberPlateau", "member_checkpoint",
           "load_member_checkpoint", "MemberArtifacts", "finite_stats", "ensemble_size", "with_seed",
           "VARY_KEYS", "ensemble_vary", "ensemble_same_seed", "member_values", "with_values"]

MEMBER_KEY = "eirnn_member"


@torch.no_grad()
def clip_member_grad_norms_(params: Sequence[torch.nn.Parameter], max_norm: float, size: int) -> torch.Tensor:
    """Per-member ``clip_grad_norm_``: member ``k``'s gradient (its slice of every ``[K, ...]``
    gradient) is scaled by ``min(1, max_norm / (|g_k| + 1e-6))``, as
    ``torch.nn.utils.clip_grad_norm_`` does for one model. Returns the ``[K]`` norms before clipping."""
    grads = [p.grad for p in params if p.grad is not None]
    norms = member_grad_norms(grads, size)
    coef = (float(max_norm) / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(per_member(coef.to(g.dtype), g))
    return norms


class MemberPlateau:
    """``torch.optim.lr_scheduler.ReduceLROnPlateau`` (mode ``max``, relative threshold) for one member's lr."""

    def __init__(self, lr: float, factor: float = 0.5, patience: int = 50, min_lr: float = 1e-5,
                 threshold: float = 1e-4, eps: float = 1e-8):
        self.lr, self.factor, self.patience, self.min_lr = float(lr), float(factor), int(patience), float(min_lr)
        self.threshold, self.eps = float(threshold), float(eps)
        self.best, self.num_bad = -math.inf, 0

    def step(self, metric: float) -> None:
        current = float(metric)
        if current > self.best * (1.0 + self.threshold):  # False for NaN
            self.best, self.num_bad = current, 0
        else:
            self.num_bad += 1
        if self.num_bad > self.patience:
            new_lr = max(self.lr * self.factor, self.min_lr)
            if self.lr - new_lr > self.eps:
                self.lr = new_lr
            self.num_bad = 0

    def state_dict(self) -> dict:
        return dict(lr=self.lr, best=self.best, num_bad=self.num_bad)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.lr, self.best, self.num_bad = float(state["lr"]), float(state["best"]), int(state["num_bad"])


# ----------------------------------------------------------------------------- the member checkpoint
def member_checkpoint(state: Mapping[str, torch.Tensor], member: int, seed: int, record: Mapping[str, Any],
                      epoch: int, global_step: int, **extra: Any) -> dict:
    """Member ``k``'s weights ``state`` (a single-model state dict) in the member checkpoint format
    (module docstring); ``record``: the metrics of that state (with its ``epoch``)."""
    info = {"member": int(member), "seed": int(seed), "epoch": record.get("epoch"), "metrics": dict(record)}
    return {"state_dict": {f"model.{n}": t for n, t in state.items()}, MEMBER_KEY: info,
            "epoch": int(epoch), "global_step": int(global_step), **extra}


def load_member_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(state, info)`` of a member file: the single model's state dict (no ``model.`` prefix) and the
    ``eirnn_member`` block (``{}`` for the older files). Raises :class:`UserError` (one line) otherwise."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: member checkpoint not found") from None
    except Exception as err:  # not a torch file, truncated, ...
        first = (str(err).splitlines() or [""])[0][:120]
        raise UserError(f"{path}: not a member checkpoint ({type(err).__name__}: {first})") from None
    if isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict):
        state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
        info = dict(ckpt.get(MEMBER_KEY) or {})
        if not info and "eirnn_task" in ckpt:  # a task member written before the common format
            task = ckpt["eirnn_task"]
            info = {"member": task.get("ensemble_member"), "epoch": ckpt.get("epoch")}
        return state, info
    if isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return dict(ckpt), {}  # the older fit member file: a bare EIRNN state dict (members/m{k}/best.pt)
    raise UserError(f"{path}: not a member checkpoint (no state_dict)")


class MemberArtifacts(L.Callback):
    """Writes the member checkpoints (``members/m{k}/checkpoints/best.ckpt`` when member ``k``
    improved; ``last.ckpt`` after every validation when ``save_last``) and, at the end,
    ``ensemble_metrics.json`` (the module's ``ensemble_summary()``).

    The module provides ``size``, ``improved_members`` and ``member_checkpoint(k, which)``
    (``None``: nothing to write).
    """

    save_last = False

    def __init__(self, output_dir: str, filename: str = "ensemble_metrics.json"):
        super().__init__()
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / filename

    def member_dir(self, k: int) -> Path:
        return self.output_dir / "members" / f"m{k}"

    def save(self, pl_module, k: int, which: str) -> None:
        ckpt = pl_module.member_checkpoint(k, which)
        if ckpt is None:
            return
        folder = self.member_dir(k) / "checkpoints"
        folder.mkdir(parents=True, exist_ok=True)
        from eirnn.utils import torch_save_atomic

        torch_save_atomic(ckpt, folder / f"{which}.ckpt")

    def on_validation_end(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        for k in range(pl_module.size):
            if self.save_last:
                self.save(pl_module, k, "last")
            if k in getattr(pl_module, "improved_members", []):
                self.save(pl_module, k, "best")
                self.member_improved(pl_module, k)

    def member_improved(self, pl_module, k: int) -> None:
        """Called after member ``k``'s new best checkpoint is written."""

    def write_summary(self, pl_module) -> dict:
        from eirnn.utils import write_json_atomic

        summary = pl_module.ensemble_summary()
        write_json_atomic(self.path, summary)
        return summary

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self.write_summary(pl_module)


def finite_stats(values: Sequence[float | None], prefix: str) -> dict[str, float | None]:
    """``{prefix}_mean/_std/_min/_max`` over the finite values (``None`` each when there is none)."""
    col = np.array([np.nan if v is None else v for v in values], dtype=float)
    fin = col[np.isfinite(col)]
    return {f"{prefix}_{stat}": float(fn(fin)) if fin.size else None
            for stat, fn in (("mean", np.mean), ("std", np.std), ("min", np.min), ("max", np.max))}


# ----------------------------------------------------------------------------- config
def ensemble_size(cfg) -> int:
    """``cfg.ensemble.size`` (1 when the node is absent)."""
    from omegaconf import OmegaConf

    size = OmegaConf.select(cfg, "ensemble.size", default=1)
    size = 1 if size is None else int(size)
    if size < 1:
        raise ValueError(f"ensemble.size must be a positive integer, got {size}")
    return size


def with_seed(cfg, seed: int):
    """A copy of ``cfg`` with ``seed`` (member ``k`` is built as the single run of ``seed + k``)."""
    from omegaconf import open_dict

    c = copy.deepcopy(cfg)
    with open_dict(c):
        c.seed = seed
    return c


def with_module_target(cfg, cls: type):
    """A copy of ``cfg`` whose ``module._target_`` is ``cls`` (the ensemble's module, same settings)."""
    from omegaconf import open_dict

    c = copy.deepcopy(cfg)
    with open_dict(c):
        c.module._target_ = f"{cls.__module__}.{cls.__name__}"
    return c


# ----------------------------------------------------------------------------- ensemble.vary
#: The scalars ``ensemble.vary`` may give each member (fits to recorded data, module=fit): the
#: initial learning rate and the loss weights that multiply a term of the member's own loss.
#: Member ``k`` trains with value ``k`` of each list, i.e. as the single run with those overrides:
#: ``optim.lr``: lr_k (warmup and the plateau schedule then act on lr_k, per member);
#: ``loss.reg.lambda_l2``: L_reg,k = lambda_k * sum_W mean(W_k^2);
#: ``loss.activity.lambda_mean`` / ``lambda_max``: the activity regulariser's weights (loss.activity.enabled);
#: ``loss.neuron.lambda_scale`` / ``lambda_var`` / ``poisson_weight``: the weights inside L_neuron,k.
#: The ensemble's loss is sum_k L_k (each L_k with member k's weights), so member k's gradient is its own.
VARY_KEYS = ("optim.lr", "loss.reg.lambda_l2", "loss.activity.lambda_mean", "loss.activity.lambda_max",
             "loss.neuron.lambda_scale", "loss.neuron.lambda_var", "loss.neuron.poisson_weight")


def ensemble_vary(cfg, size: int) -> dict[str, list[float]]:
    """``cfg.ensemble.vary`` checked: ``{key: [value of member 0, ..., member K-1]}`` (``{}`` when
    unset). Raises :class:`UserError` (one line, naming the key) for a key outside :data:`VARY_KEYS`,
    a list whose length is not ``ensemble.size``, or a value that is not a finite number."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    vary = OmegaConf.select(cfg, "ensemble.vary", default=None)
    if vary is None:
        return {}
    if not isinstance(vary, (DictConfig, dict)):
        raise UserError(f"ensemble.vary must be a mapping {{key: [one value per member]}}, got {vary!r}")
    out: dict[str, list[float]] = {}
    for key, values in (vary.items() if isinstance(vary, dict) else OmegaConf.to_container(vary).items()):
        key = str(key)
        if key not in VARY_KEYS:
            raise UserError(f"ensemble.vary: {key} cannot be varied per member (supported: {', '.join(VARY_KEYS)})")
        if isinstance(values, ListConfig):
            values = OmegaConf.to_container(values)
        if not isinstance(values, (list, tuple)) or len(values) != size:
            n = len(values) if isinstance(values, (list, tuple)) else "not a list"
            raise UserError(f"ensemble.vary: {key} needs a list of ensemble.size={size} values, got {n}: {values!r}")
        try:
            vals = [float(v) for v in values]
        except (TypeError, ValueError):
            raise UserError(f"ensemble.vary: {key} values must be numbers, got {values!r}") from None
        if not all(math.isfinite(v) and v >= 0 for v in vals):
            raise UserError(f"ensemble.vary: {key} values must be finite and >= 0, got {values!r}")
        if key == "loss.neuron.poisson_weight" and not all(v <= 1 for v in vals):
            raise UserError(f"ensemble.vary: {key} values must be in [0, 1], got {values!r}")
        out[key] = vals
    return out


def ensemble_same_seed(cfg) -> bool:
    """``cfg.ensemble.same_seed``: every member starts from ``seed`` (the same initialisation, noise)
    instead of ``seed + k`` (false, the default)."""
    from omegaconf import OmegaConf

    return bool(OmegaConf.select(cfg, "ensemble.same_seed", default=False) or False)


def member_values(vary: Mapping[str, Sequence[float]], k: int) -> dict[str, float]:
    """Member ``k``'s varied values ``{key: value}``."""
    return {key: float(v[k]) for key, v in vary.items()}


def with_values(cfg, values: Mapping[str, Any]):
    """A copy of ``cfg`` with ``values`` (``{"optim.lr": 1e-3, ...}``) set."""
    from omegaconf import OmegaConf, open_dict

    c = copy.deepcopy(cfg)
    with open_dict(c):
        for key, v in values.items():
            OmegaConf.update(c, key, v, force_add=True)
    return c
