"""Task networks, ``K`` seeds at once as one batched model (System A):
``python -m eirnn.train experiment=system_a_small ensemble.size=20`` (seeds ``seed .. seed+K-1``).

Member ``k`` is the single run with ``seed = seed + k``, batched:

- its data module is built from the config with ``seed + k`` (so with ``data.seed: ${seed}``
  it has its own trials and its own batch order, as the single run);
- its network is built as that single run's :class:`~eirnn.models.system_a.SystemARNN`,
  then the ``K`` networks are stacked (:class:`~eirnn.models.system_a.SystemAEnsembleRNN`: ``G`` [K, N, N], ``h0``
  [K, N], ``I`` [K, N, n_in], ``w`` [K, N, n_out]) and run in one forward, either as one
  recurrence with ``bmm`` or member by member (``ensemble.strategy=auto|bmm|loop``, see
  :class:`~eirnn.models.system_a.SystemAEnsembleRNN`; :func:`eirnn.models.tanh_recurrence.tanh_rnn`);
- one step (:meth:`SystemAEnsembleModule.training_step`)::

      y[k]    = member k's output on member k's batch          [K, B, T, n_out]
      L[k]    = sum(mask_k (y[k] - target_k)^2) / sum(mask_k)  masked MSE per member
      backward of sum_k L[k]     -> slice k of every gradient is member k's own gradient
      clip each member's gradient to norm grad_clip (if > 0), Adam step

  Adam is element-wise, so member ``k``'s update is the single run's (up to float round-off).

Per member: training loss and gradient norms per step, validation metrics per epoch, the
best (lowest ``val/loss``) and last weights.  Files (:class:`EnsembleArtifacts`)::

    <run>/members/m{k}/checkpoints/last.ckpt, best.ckpt    member checkpoints (single-model task checkpoints)
    <run>/members/m{k}/loss.png, grad_norms.png, metrics.json, training_log.json
    <run>/ensemble_metrics.json, members_loss.png           all members
    <run>/checkpoints/last.ckpt                             the whole ensemble (resume with ckpt_path)

``python -m eirnn.analysis.system_a <run>`` analyses the members like the runs of a
``--multirun``.  Not supported with an ensemble (one-line errors): early stopping, the plateau
scheduler (both would act on all members at once), task modules other than System A.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import lightning as L
import numpy as np
import torch

from eirnn.models.system_a import STRATEGIES, SystemAEnsembleRNN, SystemARNN  # noqa: F401 (re-exported)
from eirnn.training.base import cfg_get as _get
from eirnn.training.ensemble.members import MemberArtifacts, clip_member_grad_norms_, finite_stats, member_checkpoint
from eirnn.training.task_module import SystemAModule
from eirnn.utils import fmt_num

__all__ = ["SystemAEnsembleRNN", "EnsembleTaskDataModule", "SystemAEnsembleModule", "EnsembleArtifacts",
           "member_masked_mse", "ENSEMBLE_MODULE", "OWN_DATA", "check_config", "stack_data", "member_datamodules",
           "stack_models", "ensemble_callbacks", "ensemble_report_lines"]

# ----------------------------------------------------------------------------- data
class _StackedLoader:
    """Zips the members' batch loaders; every tensor of a batch gets a leading member dimension."""

    def __init__(self, loaders: list):
        self.loaders = loaders
        lengths = {len(ld) for ld in loaders}
        if len(lengths) != 1:
            raise ValueError(f"ensemble members must have the same number of batches, got {sorted(lengths)}")

    def __len__(self) -> int:
        return len(self.loaders[0])

    def __iter__(self):
        for batches in zip(*self.loaders):
            yield {key: torch.stack([b[key] for b in batches]) for key in batches[0]}


class EnsembleTaskDataModule(L.LightningDataModule):
    """The ``K`` members' task data modules; batches are stacked ``[K, B, ...]`` (member ``k``'s own
    trials and batch order, exactly those of its single run)."""

    def __init__(self, members: Sequence[Any]):
        super().__init__()
        self.members = list(members)
        first = self.members[0]
        for m in self.members[1:]:
            if (m.n_train, m.n_val, m.batch_size, m.dt) != (first.n_train, first.n_val, first.batch_size, first.dt):
                raise ValueError("ensemble members' data must share n_train, n_val, batch_size and dt")
        self.n_inputs, self.n_outputs = first.n_inputs, first.n_outputs

    def setup(self, stage: Optional[str] = None) -> None:
        for m in self.members:
            m.setup(stage)

    def _attach(self) -> None:
        for m in self.members:  # the members' shuffling follows the trainer's epoch, as in a single run
            m.trainer = self.trainer

    def train_dataloader(self) -> _StackedLoader:
        self._attach()
        return _StackedLoader([m.train_dataloader() for m in self.members])

    def val_dataloader(self) -> _StackedLoader:
        self._attach()
        return _StackedLoader([m.val_dataloader() for m in self.members])

    def model_kwargs(self) -> dict[str, Any]:
        return self.members[0].model_kwargs()

    def module_kwargs(self) -> dict[str, Any]:
        confs = [m.module_kwargs()["task_config"] for m in self.members]
        return {"task_config": confs[0], "member_task_configs": confs}

    def summary(self) -> dict[str, Any]:
        return {**self.members[0].summary(), "members": len(self.members), "seeds": [m.seed for m in self.members]}

    def describe(self) -> str:
        seeds = [m.seed for m in self.members]
        return (self.members[0].describe() + f"\n  x {len(self.members)} ensemble members, each with its own trials "
                f"and batch order (data seeds {seeds[0]}..{seeds[-1]})")


# ----------------------------------------------------------------------------- module
def member_masked_mse(output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[K]``: ``sum(mask_k (y_k - target_k)^2) / sum(mask_k)`` over each member's batch; tensors [K, B, T, n]."""
    m = mask.to(output.dtype)
    dims = tuple(range(1, output.dim()))
    return ((output - target) ** 2 * m).sum(dims) / m.sum(dims).clamp_min(1.0)


class SystemAEnsembleModule(SystemAModule):
    """:class:`~eirnn.training.task_module.SystemAModule` for a :class:`SystemAEnsembleRNN`; see the module docstring.

    The logged ``val/loss`` and ``val/rmse`` (and ``train/loss``, ``grad_norm/*``) are means over
    the members; ``val/loss/m{k}``, ``val/loss_std`` and ``member/grad_norm/*/m{k}`` per member.
    Per member it keeps ``member_history`` (one record per epoch, the single run's
    ``training_log.json``), ``member_step_log``, ``member_best`` (the best record) and
    ``member_best_state``.
    """

    def __init__(self, model: SystemAEnsembleRNN, optim: Optional[Mapping[str, Any]] = None,
                 scheduler: Optional[Mapping[str, Any]] = None, monitor: Optional[str] = None,
                 mode: Optional[str] = None, task_config: Optional[Mapping[str, Any]] = None, max_epochs: int = 100,
                 member_task_configs: Optional[Sequence[Mapping[str, Any]]] = None):
        if not isinstance(model, SystemAEnsembleRNN):
            raise TypeError(f"SystemAEnsembleModule needs a SystemAEnsembleRNN, got {type(model).__name__}")
        super().__init__(model, optim, scheduler, monitor, mode, task_config, max_epochs)
        if str(_get(self.sched_cfg, "name", "none")).lower() == "plateau":
            raise ValueError("scheduler=plateau is not supported with ensemble.size > 1 (one plateau state would "
                             "drive every member); use scheduler=none or cosine")
        K = self.size = model.size
        confs = list(member_task_configs) if member_task_configs is not None else [self.task_config] * K
        if len(confs) != K:
            raise ValueError(f"{len(confs)} member task configs for {K} members")
        self.member_task_configs = [dict(c) for c in confs]
        self.member_history: list[list[dict]] = [[] for _ in range(K)]
        self.member_step_log: list[list[dict]] = [[] for _ in range(K)]
        self.member_best: list[dict] = [{} for _ in range(K)]
        self.member_best_state: list[Optional[dict]] = [None] * K
        self.improved_members: list[int] = []
        self._msum: Optional[np.ndarray] = None  # [K, keys] sums of the epoch's per-step values
        self._mkeys: list[str] = []

    # ------------------------------------------------------------ checkpoint
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["eirnn_task_ensemble"] = {
            "members": list(self.model.member_configs), "task": list(self.member_task_configs),
            "history": list(self.history), "best_val": dict(self.best_val), "step_log": list(self.step_log),
            "member_history": self.member_history, "member_step_log": self.member_step_log,
            "member_best": self.member_best, "member_best_state": self.member_best_state}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        st = checkpoint.get("eirnn_task_ensemble", {})
        self.history = list(st.get("history", []))
        self.best_val = dict(st.get("best_val", {}))
        self.step_log = list(st.get("step_log", []))
        self.last_val = dict(self.history[-1]) if self.history else {}
        for key in ("member_history", "member_step_log", "member_best", "member_best_state"):
            if key in st:
                setattr(self, key, list(st[key]))

    # ------------------------------------------------------------------ step
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        opt = self.optimizers()
        K = self.size
        out = self.model(batch["inputs"]).output
        losses = member_masked_mse(out, batch["target"], batch["mask"])
        opt.zero_grad(set_to_none=True)
        self.manual_backward(losses.sum())
        params = [(n, p) for n, p in self.model.named_parameters() if p.grad is not None]
        norms = {n: p.grad.detach().reshape(K, -1).norm(dim=1) for n, p in params}
        clip = float(_get(self.optim_cfg, "grad_clip", 1.0))
        if clip > 0:
            clip_member_grad_norms_([p for _, p in params], clip, K)
        opt.step()
        loss_k = losses.detach().tolist()
        norm_k = {f"grad_norm/{n}": v.tolist() for n, v in norms.items()}
        step, epoch = int(self.global_step), int(self.current_epoch)
        mean = {"train/loss": float(np.mean(loss_k)), **{k: float(np.mean(v)) for k, v in norm_k.items()}}
        self.log("train/loss", mean["train/loss"], on_step=False, on_epoch=True,
                 batch_size=int(batch["inputs"].shape[1]))
        # epoch means, like every scalar (one TensorBoard axis); per step: step_log
        self.log_dict({k: v for k, v in mean.items() if k != "train/loss"}, on_step=False, on_epoch=True, batch_size=1)
        self.log_dict({f"member/{k}/m{i}": v[i] for k, v in norm_k.items() for i in range(K)},
                      on_step=False, on_epoch=True, batch_size=1)
        self.step_log.append({"step": step, "epoch": epoch, **mean})
        self._mkeys = ["train/loss", *norm_k]
        cols = [loss_k, *norm_k.values()]
        for i in range(K):
            self.member_step_log[i].append({"step": step, "epoch": epoch, **{k: c[i] for k, c in zip(self._mkeys, cols)}})
        row = np.array(cols, dtype=float).T  # [K, keys]
        self._msum = row if self._msum is None else self._msum + row
        for k, v in mean.items():
            self._train_sums[k] = self._train_sums.get(k, 0.0) + v
        self._train_count += 1

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self._msum = None

    # ------------------------------------------------------------ validation
    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        out = self.model(batch["inputs"]).output
        self._val_outputs.append({"output": out.detach(), "target": batch["target"], "mask": batch["mask"]})

    def on_validation_epoch_end(self) -> None:
        if not self._val_outputs:
            return
        v = self.gather_val(1)  # [K, B, T, n]
        self._val_outputs = []
        member_vals = [self.compute_val_metrics({k: t[i] for k, t in v.items()}) for i in range(self.size)]
        if self.trainer.sanity_checking:
            return
        K, epoch = self.size, int(self.current_epoch)
        vals: dict[str, float] = {}
        for key in member_vals[0]:
            col = np.array([mv[key] for mv in member_vals], dtype=float)
            vals[key] = float(np.nanmean(col)) if np.isfinite(col).any() else math.nan
        per = np.array([mv.get(self.monitor, math.nan) for mv in member_vals], dtype=float)
        vals[f"{self.monitor}_std"] = float(np.nanstd(per)) if np.isfinite(per).any() else math.nan
        for i in range(K):
            vals[f"{self.monitor}/m{i}"] = float(per[i])
        lr = float(self.optimizers().param_groups[0]["lr"])
        self.log_val(vals, self.monitor)
        self.log("lr", lr)
        epoch_time = self.epoch_time()
        record = {"epoch": epoch, "lr": lr, "epoch_time_s": epoch_time, **vals, **self.train_means()}
        self.end_epoch(record, vals.get(self.monitor, math.nan))  # (no plateau: refused above)
        # per member: the single run's history record and best
        keys = self._mkeys if self._msum is not None else []
        means = self._msum / max(self._train_count, 1) if self._msum is not None else np.zeros((K, 0))
        self.improved_members = []
        for i in range(K):
            rec = {"epoch": epoch, "lr": lr, "epoch_time_s": epoch_time, **member_vals[i],
                   **{k: float(means[i, j]) for j, k in enumerate(keys)}}
            self.member_history[i].append(rec)
            if self.is_better(rec.get(self.monitor, math.nan), self.member_best[i]):
                self.member_best[i] = rec
                self.member_best_state[i] = self.model.member_state_dict(i)
                self.improved_members.append(i)

    # ------------------------------------------------------------ summary
    def member_checkpoint(self, k: int, which: str = "last") -> Optional[dict]:
        """Member ``k`` in the member checkpoint format, with the single run's ``eirnn_task`` block
        (what :func:`eirnn.analysis.common.load_checkpoint` reads)."""
        state = self.model.member_state_dict(k) if which == "last" else self.member_best_state[k]
        if state is None:
            return None
        info = {"model": {"target": f"{SystemARNN.__module__}.{SystemARNN.__qualname__}",
                          "kwargs": dict(self.model.member_configs[k])},
                "task": self.member_task_configs[k], "history": list(self.member_history[k]),
                "best_val": dict(self.member_best[k]), "step_log": list(self.member_step_log[k]),
                "ensemble_member": k}
        hist = self.member_history[k]
        record = self.member_best[k] if which == "best" else (hist[-1] if hist else {})
        return member_checkpoint(state, k, self.model.seeds[k], record, int(self.current_epoch),
                                 int(self.global_step), eirnn_task=info)

    def ensemble_summary(self) -> dict[str, Any]:
        """Per-member best / final monitored metric and their mean, std, min, max (``ensemble_metrics.json``)."""
        mon = self.monitor
        members = []
        for k in range(self.size):
            best, hist = self.member_best[k], self.member_history[k]
            members.append({"member": k, "seed": self.model.seeds[k], f"best_{mon}": best.get(mon),
                            "best_epoch": best.get("epoch"), f"final_{mon}": hist[-1].get(mon) if hist else None,
                            "dir": f"members/m{k}"})
        out: dict[str, Any] = {"size": self.size, "seeds": list(self.model.seeds), "monitor": mon, "mode": self.mode,
                               "members": members, "all_stopped": False}
        for which in ("best", "final"):
            out.update(finite_stats([m[f"{which}_{mon}"] for m in members], f"{which}_{mon}"))
        return out


# ----------------------------------------------------------------------------- files
class EnsembleArtifacts(MemberArtifacts):
    """Per member: ``members/m{k}/checkpoints/last.ckpt`` after every validation, ``best.ckpt`` when
    it improved; at the end ``loss.png``, ``grad_norms.png``, ``metrics.json``, ``training_log.json``
    per member, ``members_loss.png`` and ``ensemble_metrics.json`` for all."""

    save_last = True

    def on_train_end(self, trainer: L.Trainer, pl_module: SystemAEnsembleModule) -> None:
        if not trainer.is_global_zero:
            return
        from eirnn.analysis.common import plot_grad_norms, plot_losses, plot_member_losses
        from eirnn.utils import write_json_atomic

        for k in range(pl_module.size):
            d = self.member_dir(k)
            d.mkdir(parents=True, exist_ok=True)
            steps, hist = pl_module.member_step_log[k], pl_module.member_history[k]
            seed = pl_module.model.seeds[k]
            if steps or hist:
                plot_losses(steps, hist, d / "loss.png", title=f"seed {seed}: loss")
            if steps:
                plot_grad_norms(steps, d / "grad_norms.png", title=f"seed {seed}: gradient magnitudes")
            write_json_atomic(d / "metrics.json", {"member": k, "seed": seed, "best": dict(pl_module.member_best[k]),
                                                   "final": dict(hist[-1]) if hist else {},
                                                   "epochs_trained": len(hist)})
            write_json_atomic(d / "training_log.json", hist)
        if pl_module.member_history[0]:
            plot_member_losses(pl_module.member_history, pl_module.model.seeds, self.output_dir / "members_loss.png")
        self.write_summary(pl_module)


# ----------------------------------------------------------------------------- wiring (eirnn.train)
ENSEMBLE_MODULE = SystemAEnsembleModule
OWN_DATA = True  # member k gets the trials and batch order of seed + k


def check_config(cfg) -> None:
    """Nothing beyond what :class:`SystemAEnsembleModule` and :func:`ensemble_callbacks` refuse."""


def stack_data(members: list) -> EnsembleTaskDataModule:
    return EnsembleTaskDataModule(members)


def member_datamodules(dm: EnsembleTaskDataModule, size: int) -> list:
    if not isinstance(dm, EnsembleTaskDataModule) or len(dm.members) != size:
        raise ValueError("task ensembles need the stacked data of eirnn.runs.ensemble.build_datamodule")
    return list(dm.members)


def stack_models(members: list, seeds: list[int], cfg=None) -> SystemAEnsembleRNN:
    """The single-run networks stacked, batched by ``ensemble.strategy`` (auto | bmm | loop)."""
    from omegaconf import OmegaConf

    strategy = "auto" if cfg is None else str(OmegaConf.select(cfg, "ensemble.strategy", default="auto") or "auto")
    return SystemAEnsembleRNN(members, strategy)


def ensemble_callbacks(callbacks: list, module: SystemAEnsembleModule, output_dir: str) -> list:
    """Adds :class:`EnsembleArtifacts`; early stopping (it would stop every member at once) is refused."""
    from lightning.pytorch.callbacks import EarlyStopping

    from eirnn.training.task_callbacks import RunAnalysis

    if any(isinstance(cb, EarlyStopping) for cb in callbacks):
        raise ValueError("early stopping is not supported with ensemble.size > 1 for task RNNs "
                         "(set callbacks.early_stopping=null)")
    out = [cb for cb in callbacks if not isinstance(cb, RunAnalysis)]
    out.append(EnsembleArtifacts(str(output_dir)))
    return out


def ensemble_report_lines(summary: Mapping[str, Any], output_dir: str | Path) -> list[str]:
    """Console lines: members, best monitored metric mean +- std (range), where the files are."""
    mon = summary["monitor"]

    def f(v):
        return fmt_num(v, ".4g", nan=None)

    return [
        f"ensemble: {summary['size']} members (seeds {summary['seeds'][0]}..{summary['seeds'][-1]})",
        f"  best {mon} per member: mean {f(summary[f'best_{mon}_mean'])} +- {f(summary[f'best_{mon}_std'])} "
        f"(min {f(summary[f'best_{mon}_min'])}, max {f(summary[f'best_{mon}_max'])}); final mean "
        f"{f(summary[f'final_{mon}_mean'])}",
        f"  {Path(output_dir) / 'members'}/m{{k}}/: checkpoints/, loss.png, grad_norms.png; "
        f"analysis: python -m eirnn.analysis.system_a {output_dir}",
    ]
