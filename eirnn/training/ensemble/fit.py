"""Fits to recorded data, ``K`` seeds at once: ``python -m eirnn.train ensemble.size=K`` (module=fit).

The ``K`` members (:class:`~eirnn.models.ensemble.EnsembleEIRNN`, member ``k`` initialised
as the single model with seed ``seed + k``) are trained as one batched model on the same
data split and batches. Each optimisation step (:meth:`EnsembleFitModule.training_step`)::

    rates = model(inputs)                              # [K, B, T, n], one batched recurrence
    L_neuron[k], L_trial[k], L_extra[k]                # per member, exactly the single-model terms
    balancer.backward(..., members=K)                  # per-member balancing (param / output / fixed / off)
    clip each member's gradient to norm grad_clip      # per-member norm, not the global one
    optimizer.step()                                   # Adam is element-wise: member k gets its own update
    per-member learning rate (plateau) and freezing    # p = old + f_k * (p - old), f_k = lr_k / lr (0: stopped)

The loss is the *sum* of the members' losses, so the gradient of every stacked parameter
holds each member's own gradient in its slice, and Adam's element-wise moments are those
of ``K`` separate runs.

Member ``k`` draws its training noise from a generator seeded ``train_seed + k`` and its
validation noise from one seeded ``train_seed + k + 1000003`` (or ``module.val_seed`` when
set), i.e. what the single run with ``seed = seed + k`` draws: a member fed the same data
split (``data.split_seed``) follows the single run's trajectory (up to float round-off).

Validation: every member's metrics (``compute_val_metrics``) are computed; the logged
``val/psth_corr`` (the checkpoint monitor) is their mean over the members with a finite
value (a member whose metric is NaN has diverged and is stopped; ``ensemble/nan_members``
counts them), ``val/psth_corr/m{k}`` each member's, ``val/psth_corr_std`` the spread.
Per member the module keeps the best metric, its epoch and its weights
(:attr:`member_best_state`, a single-model ``EIRNN`` state dict), an early-stopping
counter (``patience`` epochs without improvement freeze the member: its updates are
masked to zero and its losses are no longer computed) and, with ``scheduler=plateau``,
its own ReduceLROnPlateau state. Training ends when every member
has stopped (or at ``max_epochs``). :class:`EnsembleArtifacts` writes
``members/m{k}/checkpoints/best.ckpt`` (the member checkpoint format of
:mod:`eirnn.training.ensemble.members`; + ``members/m{k}/best.json``) and ``ensemble_metrics.json``.

Members that differ in scalars (``ensemble.vary={key: [v_0, ..., v_{K-1}]}``,
:meth:`EnsembleFitModule.set_member_settings`; keys: ``members.VARY_KEYS``): member ``k`` is the
single run with ``key=v_k``::

    optim.lr:  member k steps at lr_k (f_k = lr_k / lr, lr = max_k lr_k the optimiser's; warmup,
               cosine and plateau act on lr_k as in the single run)
    loss.*:    loss = sum_k L_k, L_k = member k's terms with its weights w_k (L_reg: lambda_l2,k;
               activity: lambda_mean,k, lambda_max,k; L_neuron: lambda_scale,k, lambda_var,k, poisson_weight,k)

``ensemble.same_seed=true``: every member is initialised with ``seed`` and draws the noise of
``seed`` (member offsets 0), so members differ only in the varied values.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from eirnn.models.ensemble import EnsembleEIRNN
from eirnn.training.balancer import GradientBalancer
from eirnn.training.base import cfg_get as _cfg_get
from eirnn.training.ensemble.members import (MemberArtifacts, MemberPlateau, clip_member_grad_norms_,  # noqa: F401
                                             finite_stats, member_checkpoint, member_grad_norms)
from eirnn.training.ensemble.members import member_values as _member_values
from eirnn.training.ensemble.members import per_member as _per_member
from eirnn.training.lr_warmup import scaled_lr, warmup_factor
from eirnn.training.module import MONITOR, FitModule
from eirnn.training.objective import FitObjective
from eirnn.utils import fmt_num

__all__ = ["EnsembleFitModule", "EnsembleArtifacts", "ensemble_backward", "member_grad_norms",
           "clip_member_grad_norms_", "MemberPlateau", "ENSEMBLE_MODULE", "OWN_DATA", "check_config",
           "member_datamodules", "stack_models", "ensemble_callbacks", "ensemble_report_lines"]


# ----------------------------------------------------------------------------- gradients


def ensemble_backward(
    balancer: GradientBalancer,
    params: Sequence[torch.nn.Parameter],
    main: torch.Tensor,
    aux: torch.Tensor | None,
    extra: torch.Tensor | None = None,
    outputs: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """:meth:`GradientBalancer.backward` with the member axis (``members=K``): ``main``, ``aux``,
    ``extra`` are ``[K]`` per-member losses, every parameter is stacked ``[K, ...]``; member ``k``'s
    combined gradient (slice ``k``) is what the single-model balancer gives member ``k``'s losses."""
    return balancer.backward(params, main, aux, extra, outputs, members=int(main.shape[0]))


class _MemberWeights:
    """What ``FitObjective.extra_term`` asks of a model, for one member."""

    def __init__(self, weights: list[torch.Tensor]):
        self._weights = weights

    def regularized_weights(self) -> list[torch.Tensor]:
        return self._weights


# ----------------------------------------------------------------------------- the module


class EnsembleFitModule(FitModule):
    """:class:`~eirnn.training.module.FitModule` for an :class:`EnsembleEIRNN`; see the module docstring.

    Extra argument: ``patience`` -- epochs without improvement of a member's
    ``val/psth_corr`` after which the member is frozen (``None``: never; ``eirnn.train``
    takes it from ``callbacks.early_stopping.patience``).
    """

    def __init__(
        self,
        model: EnsembleEIRNN,
        loss: Mapping[str, Any] | None = None,
        optim: Mapping[str, Any] | None = None,
        scheduler: Mapping[str, Any] | None = None,
        bin_size_ms: float = 25.0,
        val_seed: int | None = None,
        train_seed: int = 0,
        max_epochs: int = 500,
        patience: int | None = None,
        cuda_graphs: str | bool = "auto",
        monitor: str | None = None,   # the ensemble monitors val/psth_corr (checked by eirnn.train)
        mode: str = "max",            # (maximised)
    ):
        if not isinstance(model, EnsembleEIRNN):
            raise TypeError(f"EnsembleFitModule needs an EnsembleEIRNN, got {type(model).__name__}")
        super().__init__(model, loss, optim, scheduler, bin_size_ms, val_seed, train_seed, max_epochs, cuda_graphs)
        K = self.size = model.size
        self.patience = None if patience is None else int(patience)
        self.member_train_seeds = [self.train_seed + k for k in range(K)]
        # the single run with seed + k validates with val_seed when set, else seed + k + 1000003
        self._explicit_val_seed = val_seed is not None
        self.member_val_seeds = [self.val_seed if val_seed is not None else self.val_seed + k for k in range(K)]
        self._train_gens: list[torch.Generator] | None = None
        self._train_gen_states: list[torch.Tensor] | None = None
        self._workspace: dict = {}
        self._val_workspaces: dict = {}
        self.member_best = [-math.inf] * K  # early stopping: best val/psth_corr (strict improvement)
        self.member_best_epoch: list[int | None] = [None] * K
        self.member_wait = [0] * K
        self.member_stopped_epoch: list[int | None] = [None] * K
        self.member_best_state: list[dict | None] = [None] * K
        self.member_best_record: list[dict] = [{} for _ in range(K)]
        self.improved_members: list[int] = []
        self._plateaus: list[MemberPlateau] | None = None
        self._vmap_neuron = True
        self.vary: dict[str, list[float]] = {}       # ensemble.vary: {key: [value of member k]}
        self.lr_ratios = [1.0] * K                   # lr_k / the optimiser's lr
        self.member_objectives: list[FitObjective] | None = None  # per member when loss weights vary

    def set_member_settings(self, vary: Mapping[str, Sequence[float]], seed_offsets: Sequence[int]) -> None:
        """Members that differ in scalars (``ensemble.vary``, see the module docstring) and their
        noise seeds: member ``k`` draws the training noise of ``train_seed + seed_offsets[k]`` and
        the validation noise of the single run of that seed (``seed_offsets = 0, ..., K-1`` by
        default; all 0 with ``ensemble.same_seed``). Call before training."""
        K = self.size
        self.vary = {str(key): [float(v) for v in vals] for key, vals in vary.items()}
        offsets = [int(o) for o in seed_offsets]
        self.member_train_seeds = [self.train_seed + o for o in offsets]
        self.member_val_seeds = [self.val_seed if self._explicit_val_seed else self.val_seed + o for o in offsets]
        self._train_gens = None
        lrs = self.vary.get("optim.lr")
        base = float(_cfg_get(self.optim_cfg, "lr", 1e-3))
        self.lr_ratios = [1.0] * K if lrs is None or base <= 0 else [lr / base for lr in lrs]
        loss_keys = [key for key in self.vary if key.startswith("loss.")]
        if loss_keys:
            self.member_objectives = []
            for k in range(K):
                parts = {name: dict(self.loss_cfg.get(name) or {}) for name in ("neuron", "trial", "reg", "activity")}
                for key in loss_keys:
                    _, group, name = key.split(".")
                    parts[group][name] = self.vary[key][k]
                self.member_objectives.append(FitObjective(**parts, bin_size_ms=self.objective.bin_size_ms))
            if any(key.startswith("loss.neuron.") for key in loss_keys):
                self._vmap_neuron = False  # one objective per member: a loop over members

    def member_values(self, k: int) -> dict[str, float]:
        """Member ``k``'s varied values (``ensemble.vary``; ``{}`` without)."""
        return _member_values(self.vary, k)

    def _objective(self, k: int) -> FitObjective:
        return self.objective if self.member_objectives is None else self.member_objectives[k]

    # ------------------------------------------------------------- state
    @property
    def stopped(self) -> list[bool]:
        return [e is not None for e in self.member_stopped_epoch]

    def active_members(self) -> list[int]:
        return [k for k in range(self.size) if self.member_stopped_epoch[k] is None]

    def member_lrs(self) -> list[float]:
        """Each member's learning rate (0 once stopped)."""
        base = float(self.optimizers().param_groups[0]["lr"]) if self._trainer is not None else float(
            _cfg_get(self.optim_cfg, "lr", 1e-3))
        out = []
        for k in range(self.size):
            if self.member_stopped_epoch[k] is not None:
                out.append(0.0)
            elif self._plateaus is not None:
                out.append(self._plateaus[k].lr)
            else:
                out.append(base * self.lr_ratios[k])
        return out

    def _train_generators(self) -> list[torch.Generator]:
        if self._train_gens is None or self._train_gens[0].device != self.device:
            gens = []
            for k, seed in enumerate(self.member_train_seeds):
                g = torch.Generator(device=self.device)
                g.manual_seed(seed)
                if self._train_gen_states is not None:
                    g.set_state(self._train_gen_states[k])
                gens.append(g)
            self._train_gen_states = None
            self._train_gens = gens
        return self._train_gens

    def member_checkpoint(self, k: int, which: str = "best") -> dict | None:
        """Member ``k``'s best weights in the member checkpoint format (only ``best`` is kept)."""
        state = self.member_best_state[k] if which == "best" else None
        if state is None:
            return None
        return member_checkpoint(state, k, self.model.seeds[k], self.member_best_record[k],
                                 int(self.current_epoch), int(self.global_step))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["eirnn"] = {"best_val": dict(self.best_val), "history": list(self.history)}
        checkpoint["eirnn_ensemble"] = {
            "train_generators": [g.get_state() for g in self._train_generators()],
            "member_best": list(self.member_best), "member_best_epoch": list(self.member_best_epoch),
            "member_wait": list(self.member_wait), "member_stopped_epoch": list(self.member_stopped_epoch),
            "member_best_state": list(self.member_best_state), "member_best_record": list(self.member_best_record),
            "plateaus": None if self._plateaus is None else [p.state_dict() for p in self._plateaus],
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("eirnn", {})
        self.best_val = dict(state.get("best_val", {}))
        self.history = list(state.get("history", []))
        ens = checkpoint.get("eirnn_ensemble", {})
        if "train_generators" in ens:
            self._train_gens = None
            self._train_gen_states = [s.cpu() for s in ens["train_generators"]]
        for key in ("member_best", "member_best_epoch", "member_wait", "member_stopped_epoch",
                    "member_best_state", "member_best_record"):
            if key in ens:
                setattr(self, key, list(ens[key]))
        self._plateau_states = ens.get("plateaus")
        if self._plateaus is not None and self._plateau_states:
            for p, st in zip(self._plateaus, self._plateau_states):
                p.load_state_dict(st)

    # ------------------------------------------------------------------ step
    def _device_const(self, name: str, values: list, dtype, device) -> torch.Tensor:
        """``torch.tensor(values)`` on ``device``, kept while ``values`` do not change: a copy from
        host memory at every step would make the host wait for a GPU."""
        cache = self.__dict__.setdefault("_consts", {})
        key = (tuple(values), dtype, str(device))
        hit = cache.get(name)
        if hit is None or hit[0] != key:
            hit = cache[name] = (key, torch.tensor(values, dtype=dtype, device=device))
        return hit[1]

    def _neuron_terms(self, rec: torch.Tensor, target, mask) -> torch.Tensor:
        """``[K]`` ``L_neuron`` of every member: ``torch.func.vmap`` of the single-model term (the
        data side is then computed once), or a loop over members where vmap cannot run it."""
        if self._vmap_neuron:
            try:
                return torch.func.vmap(self.objective.neuron_term, in_dims=(0, None, None))(rec, target, mask)
            except Exception:  # an op without a batching rule: same values by a loop
                self._vmap_neuron = False
        return torch.stack([self._objective(k).neuron_term(r, target, mask) for k, r in enumerate(rec.unbind(0))])

    def _losses(self, rates: torch.Tensor, target, mask, members: list[int]):
        """Per-member loss terms ``[K]`` (0 for members not in ``members``: no gradient)."""
        K = self.size
        rec = self.model.member_recorded(rates, self._workspace if rates.requires_grad else None)
        zero = rates.new_zeros(())
        keep = self._device_const("keep", [k in members for k in range(K)], torch.bool, rates.device)
        l_neuron = torch.where(keep, self._neuron_terms(rec, target, mask), zero)
        l_trial = None
        if self.objective.trial_active(self.current_epoch):
            # on a GPU, every member's L_trial in one batched evaluation (K times fewer kernels); the
            # CPU keeps the per-member loop (its results stay as they were)
            if rates.device.type != "cpu" and len(members) == K:
                l_trial = self.objective.trial_term_members(rec, target, mask)
            if l_trial is None:
                recs = rec.unbind(0)
                l_trial = torch.stack([self.objective.trial_term(recs[k], target, mask) if k in members else zero
                                       for k in range(K)])
        alls = rates.unbind(0) if self.objective.activity_enabled else [None] * K
        weights = self.model.member_regularized_weights()
        extras: dict[str, list] = {}
        for k in members:
            for name, v in self._objective(k).extra_term(_MemberWeights(weights[k]), alls[k], mask).items():
                extras.setdefault(name, [zero] * K)[k] = v
        return l_neuron, l_trial, {name: torch.stack(v) for name, v in extras.items()}, rec

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        opt = self.optimizers()
        K = self.size
        active = self.active_members()
        if not active:  # every member stopped (the trainer stops at the epoch's end)
            return
        if self.graphs_enabled():
            return self._graphed_training_step(batch, opt, active)
        out = self.model(batch["inputs"], noise=True, generator=self._train_generators(), workspace=self._workspace)
        target, mask = batch["rates"], batch["mask"]
        l_neuron, l_trial, extras, rec = self._losses(out.rates, target, mask, active)
        l_extra = sum(extras.values()) if extras else None

        params = [p for p in self.model.parameters() if p.requires_grad]
        opt.zero_grad(set_to_none=True)
        stats = ensemble_backward(self.balancer, params, l_neuron, l_trial, l_extra, outputs=rec)
        clip = float(_cfg_get(self.optim_cfg, "grad_clip", 1.0))
        if clip > 0:
            clip_member_grad_norms_(params, clip, K)
        lrs = self.member_lrs()
        base = float(opt.param_groups[0]["lr"])
        factors = [lr / base if base > 0 else 0.0 for lr in lrs]
        old = [p.detach().clone() for p in params] if any(f != 1.0 for f in factors) else None
        warm = warmup_factor(self.global_step, int(_cfg_get(self.optim_cfg, "warmup_steps", 0)))
        with scaled_lr(opt.optimizer if hasattr(opt, "optimizer") else opt, warm):  # the same ramp for every member
            opt.step()
        if old is not None:  # member k moves by f_k times Adam's step (f = 0: frozen, exactly)
            with torch.no_grad():
                f = self._device_const("factors", factors, params[0].dtype, params[0].device)
                for p, p0 in zip(params, old):  # exact for f = 1 and f = 0 (even if the step was NaN)
                    fk = _per_member(f, p)
                    p.copy_(torch.where(fk == 1.0, p, torch.where(fk == 0.0, p0, p0 + fk * (p - p0))))

        self._record_ensemble_step(l_neuron, l_trial, extras, l_extra, stats, active, int(target.shape[0]))

    def _record_ensemble_step(self, l_neuron, l_trial, extras, l_extra, stats, active: list[int], bs: int) -> None:
        """Logging of one step: means over the members still training, and each member's total loss."""
        sel = self._device_const("active", active, torch.long, l_neuron.device)
        w = stats["weight"]
        total = l_neuron.detach() + (l_extra.detach() if l_extra is not None else 0.0)
        if l_trial is not None:
            total = total + w * l_trial.detach()
        mean = lambda v: v.index_select(0, sel).mean()  # noqa: E731
        log = {"train/loss": mean(total), "train/L_neuron": mean(l_neuron.detach()), "train/balance_weight": mean(w)}
        if l_trial is not None:
            log["train/L_trial"] = mean(l_trial.detach())
        for name, v in extras.items():
            log[f"train/{name}"] = mean(v.detach())
        for name in ("grad_norm_main", "grad_norm_aux"):
            if name in stats:
                log[f"balance/{name.replace('main', 'neuron').replace('aux', 'trial')}"] = mean(stats[name])
        for k in active:
            log[f"member_train/loss/m{k}"] = total[k]  # not train/*: the console line lists every train/* key
        self._accumulate_train_logs(log, bs)  # logged once per epoch (FitModule.on_train_epoch_end)
        for name, v in log.items():
            self._train_sums[name] = self._train_sums.get(name, 0.0) + v
        self._train_count += 1

    # ------------------------------------------------------------ CUDA graphs
    def _graphed_training_step(self, batch: dict[str, torch.Tensor], opt, active: list[int]) -> None:
        """:meth:`training_step` replayed as a CUDA graph: one per batch shape, set of active
        members and L_trial state; the members' lr factors are a device input of the graph."""
        K = self.size
        inner = opt.optimizer if hasattr(opt, "optimizer") else opt
        inputs, target, mask = batch["inputs"], batch["rates"], batch["mask"]
        trial_on = self.objective.trial_active(self.current_epoch)
        lrs = self.member_lrs()
        base = float(inner.param_groups[0]["lr"])
        factors = [lr / base if base > 0 else 0.0 for lr in lrs]
        scaled = any(f != 1.0 for f in factors)
        key = ("ens-train", tuple(inputs.shape), tuple(target.shape), tuple(active), trial_on, scaled,
               self.balancer.mode)
        dtype = next(self.model.parameters()).dtype
        shape = (int(inputs.shape[0]), int(inputs.shape[1]), int(self.model.n_units))
        dyn = {"inputs": inputs, "target": target, "mask": mask,
               "factors": self._device_const("factors", factors, dtype, inputs.device)}
        if self.model.noise_scale > 0:  # member k's draw of the eager step (generator k)
            xi = torch.empty((K, *shape), device=inputs.device, dtype=dtype)
            for k, g in enumerate(self._train_generators()):
                torch.randn(shape, generator=g, device=inputs.device, dtype=dtype, out=xi[k])
            dyn["noise"] = xi
        ws = self.__dict__.setdefault("_graph_workspaces", {}).setdefault(key, {})  # owned by this key's graph
        clip = float(_cfg_get(self.optim_cfg, "grad_clip", 1.0))

        def fn(inputs, target, mask, factors, noise=None):
            out = self.model(inputs, noise=noise is not None, noise_sample=noise, workspace=ws)
            l_neuron, l_trial, extras, rec = self._losses(out.rates, target, mask, active)  # (trial_on: in the key)
            l_extra = sum(extras.values()) if extras else None
            params = [p for p in self.model.parameters() if p.requires_grad]
            inner.zero_grad(set_to_none=True)
            stats = ensemble_backward(self.balancer, params, l_neuron, l_trial, l_extra, outputs=rec)
            if clip > 0:
                clip_member_grad_norms_(params, clip, K)
            old = [p.detach().clone() for p in params] if scaled else None
            inner.step()
            if old is not None:  # as the eager step: member k moves by f_k times Adam's step
                with torch.no_grad():
                    for p, p0 in zip(params, old):
                        fk = _per_member(factors, p)
                        p.copy_(torch.where(fk == 1.0, p, torch.where(fk == 0.0, p0, p0 + fk * (p - p0))))
            res = {"l_neuron": l_neuron.detach(), "l_trial": None if l_trial is None else l_trial.detach(),
                   "l_extra": None if l_extra is None else l_extra.detach()}
            res.update({f"extra/{k}": v.detach() for k, v in extras.items()})
            res.update({f"stat/{k}": v for k, v in stats.items()})
            return res

        warm = warmup_factor(self.global_step, int(_cfg_get(self.optim_cfg, "warmup_steps", 0)))
        res = self._run_graphed_step(opt, key, fn, dyn, base * warm)
        extras = {k[len("extra/"):]: v for k, v in res.items() if k.startswith("extra/")}
        stats = {k[len("stat/"):]: v for k, v in res.items() if k.startswith("stat/")}
        self._record_ensemble_step(res["l_neuron"], res["l_trial"], extras, res["l_extra"], stats, active,
                                   int(target.shape[0]))

    # ------------------------------------------------------------ validation
    def on_validation_epoch_start(self) -> None:
        self._val_outputs = []
        gens = []
        for seed in self.member_val_seeds:
            g = torch.Generator(device=self.device)
            g.manual_seed(seed)
            gens.append(g)
        self._val_gens = gens

    def _validation_noise(self, inputs: torch.Tensor, batch_idx: int) -> torch.Tensor:
        """``[K, B, T, n]``: member ``k``'s validation noise (generator ``member_val_seeds[k]``,
        re-seeded every epoch), drawn once per batch and reused (as in :class:`FitModule`)."""
        dtype = next(self.model.parameters()).dtype
        shape = (int(inputs.shape[0]), int(inputs.shape[1]), int(self.model.n_units))
        key = (batch_idx, shape, str(inputs.device), dtype, tuple(self.member_val_seeds))
        hit = self._val_noise_cache.get(key)
        if hit is None:
            xi = torch.empty((self.size, *shape), device=inputs.device, dtype=dtype)
            for k, g in enumerate(self._val_gens):
                torch.randn(shape, generator=g, device=inputs.device, dtype=dtype, out=xi[k])
            hit = self._val_noise_cache[key] = (xi, [g.get_state() for g in self._val_gens])
        else:
            for g, st in zip(self._val_gens, hit[1]):
                g.set_state(st)
        return hit[0]

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        xi = self._validation_noise(batch["inputs"], batch_idx)
        n_rec = self.model.n_recorded
        if self.graphs_enabled():  # the forward as a CUDA graph (this batch's fixed noise baked in)
            key = ("ens-val", batch_idx, tuple(batch["inputs"].shape), xi.data_ptr())
            ws = self.__dict__.setdefault("_graph_workspaces", {}).setdefault(key, {})

            def fn(inputs):
                with torch.no_grad():
                    return {"rates": self.model(inputs, noise=True, noise_sample=xi, workspace=ws).rates[..., :n_rec]}

            rates = self._step_graphs().run(key, fn, {"inputs": batch["inputs"]})["rates"].clone()
        else:
            ws = self._val_workspaces.setdefault(batch_idx, {})  # one per batch: all are read at the epoch's end
            with torch.no_grad():
                rates = self.model(batch["inputs"], noise=True, noise_sample=xi, workspace=ws).rates[..., :n_rec]
        item = {"rates": rates, "target": batch["rates"], "mask": batch["mask"]}
        if "true_rates" in batch:
            item["true_rates"] = batch["true_rates"]
        self._val_outputs.append(item)

    def _gather_val(self) -> dict[str, torch.Tensor]:
        out = {"rates": torch.cat([o["rates"] for o in self._val_outputs], 1)}  # [K, B, T, N]
        for key in self._val_outputs[0]:
            if key != "rates":
                out[key] = torch.cat([o[key] for o in self._val_outputs], 0)
        return out

    def member_val_metrics(self, v: dict[str, torch.Tensor]) -> tuple[list[dict], list[dict]]:
        """:meth:`compute_val_metrics` of every member (``v["rates"]`` is ``[K, B, T, N]``)."""
        vals, arrays = [], []
        for k in range(self.size):
            vk = dict(v)
            vk["rates"] = v["rates"][k]
            a, b = self.compute_val_metrics(vk)
            vals.append(a)
            arrays.append(b)
        return vals, arrays

    def on_validation_epoch_end(self) -> None:
        if not self._val_outputs:
            return
        member_vals, member_arrays = self.member_val_metrics(self._gather_val())
        self._val_outputs = []
        if self.trainer.sanity_checking:
            return
        K, epoch = self.size, int(self.current_epoch)
        vals = {}
        for key in member_vals[0]:
            col = np.array([mv[key] for mv in member_vals], dtype=float)
            vals[key] = float(np.nanmean(col)) if np.isfinite(col).any() else float("nan")
        per = np.array([mv[MONITOR] for mv in member_vals], dtype=float)
        finite = per[np.isfinite(per)]  # a diverged (NaN) member is stopped and left out of the mean
        vals[MONITOR] = float(finite.mean()) if finite.size else float("nan")
        vals["val/psth_corr_std"] = float(finite.std()) if finite.size else float("nan")
        vals["ensemble/nan_members"] = float(per.size - finite.size)
        for k in range(K):
            vals[f"{MONITOR}/m{k}"] = float(per[k])
            if "val/true_psth_corr" in member_vals[k]:
                vals[f"val/true_psth_corr/m{k}"] = member_vals[k]["val/true_psth_corr"]

        # per-member early stopping (as lightning's EarlyStopping: strict improvement; NaN stops)
        self.improved_members = []
        for k in self.active_members():
            cur = per[k]
            if math.isfinite(cur) and cur > self.member_best[k]:
                self.member_best[k], self.member_best_epoch[k], self.member_wait[k] = float(cur), epoch, 0
                self.member_best_state[k] = self.model.member_state_dict(k)
                self.improved_members.append(k)
            else:
                self.member_wait[k] += 1
            if not math.isfinite(cur) or (self.patience is not None and self.member_wait[k] >= self.patience):
                self.member_stopped_epoch[k] = epoch
            elif self._plateaus is not None:
                self._plateaus[k].step(cur)
        for k in self.improved_members:
            self.member_best_record[k] = {"epoch": epoch, **member_vals[k]}
        lrs = self.member_lrs()
        active = self.active_members()
        lr = float(np.mean([lrs[k] for k in active])) if active else 0.0

        self.log_val(vals, MONITOR)
        self.log("lr", lr)
        self.log("ensemble/active_members", float(len(active)))
        with torch.no_grad():
            tc = self.model.alpha()  # [K, n]
            exc = self.model.is_excitatory
            for name, sel in (("E", exc), ("I", ~exc)):
                if sel.any():
                    a = tc[:, sel]
                    self.log(f"time_constants/alpha_{name}", float(a.mean()))
                    self.log(f"time_constants/tau_{name}", float((self.model.dt / a).mean()))
        record = {"epoch": epoch, "lr": lr, "epoch_time_s": float(self.epoch_time()), **vals,
                  "ensemble/active_members": len(active), **self.train_means()}
        for k in range(K):
            record[f"lr/m{k}"] = lrs[k]
        self.last_val_arrays = member_arrays[0]  # figures: member 0
        self.end_epoch(record, vals[MONITOR])  # (a plateau schedule is per member: MemberPlateau)
        if not active:
            self.trainer.should_stop = True

    # ------------------------------------------------------------ optimisers
    def configure_optimizers(self):
        conf = super().configure_optimizers()
        if isinstance(conf, dict) and isinstance(conf["lr_scheduler"]["scheduler"],
                                                 torch.optim.lr_scheduler.ReduceLROnPlateau):
            sch = conf["lr_scheduler"]["scheduler"]  # replaced by one plateau state per member
            lr = float(conf["optimizer"].param_groups[0]["lr"])
            self._plateaus = [
                MemberPlateau(lr * self.lr_ratios[k], factor=sch.factor, patience=sch.patience, min_lr=float(sch.min_lrs[0]),
                              threshold=sch.threshold, eps=sch.eps)
                for k in range(self.size)
            ]
            saved = getattr(self, "_plateau_states", None)
            if saved:
                for p, st in zip(self._plateaus, saved):
                    p.load_state_dict(st)
            return conf["optimizer"]
        return conf

    # ------------------------------------------------------------ summary
    def ensemble_summary(self) -> dict[str, Any]:
        """Per-member best metric / epoch / stop epoch and their mean and std (``ensemble_metrics.json``)."""
        members = []
        for k in range(self.size):
            rec = self.member_best_record[k]
            members.append({
                "member": k, "seed": self.model.seeds[k], "values": self.member_values(k),
                "best_val/psth_corr": None if not math.isfinite(self.member_best[k]) else self.member_best[k],
                "best_epoch": self.member_best_epoch[k],
                "stopped_epoch": self.member_stopped_epoch[k],
                "best": {key: v for key, v in rec.items() if key != "epoch"},
                "checkpoint": f"members/m{k}/checkpoints/best.ckpt",
            })
        out = {
            "size": self.size, "seeds": list(self.model.seeds), "vary": dict(self.vary), "monitor": MONITOR, "patience": self.patience,
            "members": members, **finite_stats(self.member_best, "best_val/psth_corr"),
            "all_stopped": all(self.stopped),
        }
        for key in ("val/true_psth_corr", "val/bits_per_spike"):
            col = np.array([self.member_best_record[k].get(key, np.nan) for k in range(self.size)], dtype=float)
            if np.isfinite(col).any():
                out[f"best_{key}_mean"] = float(np.nanmean(col))
                out[f"best_{key}_std"] = float(np.nanstd(col))
        return out


# ----------------------------------------------------------------------------- files


class EnsembleArtifacts(MemberArtifacts):
    """Writes each member's best weights when it improves, and ``ensemble_metrics.json`` at the end.

    ``<output_dir>/members/m{k}/checkpoints/best.ckpt``: the member checkpoint
    (:func:`~eirnn.training.ensemble.members.load_member_checkpoint` gives a single-model ``EIRNN``
    state dict); ``members/m{k}/best.json`` beside it: member, seed, epoch and validation metrics.
    """

    def member_improved(self, pl_module: EnsembleFitModule, k: int) -> None:
        from eirnn.utils import write_json_atomic

        rec = pl_module.member_best_record[k]
        write_json_atomic(self.member_dir(k) / "best.json", {"member": k, "seed": pl_module.model.seeds[k],
                                                             "values": pl_module.member_values(k),
                                                             "epoch": rec.get("epoch"), "metrics": rec})


# ----------------------------------------------------------------------------- wiring (eirnn.train)


ENSEMBLE_MODULE = EnsembleFitModule
OWN_DATA = False  # every member fits the same data split and batches


def check_config(cfg) -> None:
    """The fit ensemble monitors ``val/psth_corr`` (maximised)."""
    from eirnn.errors import UserError

    if str(cfg.get("optimized_metric") or MONITOR) != MONITOR or str(cfg.get("optimized_mode") or "max") != "max":
        raise UserError(f"ensemble.size > 1 monitors {MONITOR} (max); optimized_metric={cfg.get('optimized_metric')}")


def member_datamodules(dm, size: int) -> list:
    return [dm] * size


def stack_models(members: list, seeds: list[int], cfg=None) -> EnsembleEIRNN:
    """The single-run ``EIRNN`` of every seed, stacked (:class:`~eirnn.models.ensemble.EnsembleEIRNN`)."""
    from eirnn.errors import UserError
    from eirnn.models import EIRNN

    for m in members:
        if not isinstance(m, EIRNN):
            raise UserError(f"ensemble.size > 1 needs an EIRNN model (model=eirnn, lowrank, unconstrained), "
                            f"got {type(m).__name__}")
    return EnsembleEIRNN(members, seeds)


def ensemble_callbacks(callbacks: list, module: EnsembleFitModule, output_dir: str) -> list:
    """Lightning's ``EarlyStopping`` is replaced by the module's per-member early stopping
    (same ``patience``), and :class:`EnsembleArtifacts` is added."""
    from lightning.pytorch.callbacks import EarlyStopping

    out = []
    for cb in callbacks:
        if isinstance(cb, EarlyStopping):
            if cb.monitor != MONITOR:
                raise ValueError(f"ensemble early stopping monitors {MONITOR}, not {cb.monitor}")
            module.patience = int(cb.patience)
            continue
        out.append(cb)
    out.append(EnsembleArtifacts(str(output_dir)))
    return out


def ensemble_report_lines(summary: Mapping[str, Any], output_dir: str | Path) -> list[str]:
    """A few console lines: members, best metric mean +- std, range, where the files are."""

    def f(v):
        return fmt_num(v, nan=None)

    stopped = sum(m["stopped_epoch"] is not None for m in summary["members"])
    varied = [f"  m{m['member']}: " + ", ".join(f"{key}={v:g}" for key, v in m["values"].items())
              + f" -> best {MONITOR} {f(m['best_val/psth_corr'])}"
              for m in summary["members"] if m.get("values")]
    seeds = summary["seeds"]
    seed_text = (f"seed {seeds[0]} for every member" if len(set(seeds)) == 1 and len(seeds) > 1
                 else f"seeds {seeds[0]}..{seeds[-1]}")
    return [
        f"ensemble: {summary['size']} members ({seed_text}), {stopped} stopped early",
        *varied,
        f"  best {MONITOR} per member: mean {f(summary['best_val/psth_corr_mean'])} +- "
        f"{f(summary['best_val/psth_corr_std'])} (min {f(summary['best_val/psth_corr_min'])}, "
        f"max {f(summary['best_val/psth_corr_max'])})",
        f"  {Path(output_dir) / 'ensemble_metrics.json'}, members/m{{k}}/checkpoints/best.ckpt (member checkpoints: "
        f"single-model EIRNN weights)",
    ]
