"""The training step: a LightningModule that fits an :class:`~eirnn.models.EIRNN` to trials.

One optimisation step (manual optimisation, one call of :meth:`FitModule.training_step`)::

    rates = model(inputs)                        # [B, T, n] all units, state noise on
    rec   = rates[..., :n_recorded]              # recorded units
    L_neuron = objective.neuron_term(rec, target, mask)
    L_trial  = objective.trial_term(rec, target, mask)      # unless disabled / warming up
    L_extra  = L_reg (+ L_activity)
    balancer.backward(...)                       # g = g_neuron + w g_trial + g_extra
    clip_grad_norm(g, 1.0); optimizer.step() at lr * min(1, (k+1)/optim.warmup_steps)   # eirnn/training/lr_warmup.py
    (undone on the device if any gradient was not finite; optim.max_skipped_steps in a row stop the run)

Validation runs the model on the validation trials with a fixed noise seed (so the
metric depends on the weights only) and computes, over the whole validation set,
``val/psth_corr`` (the lab's metric; the checkpoint monitor), its E and I means,
Poisson bits/spike, ``L_neuron``/``L_trial`` and, for synthetic data, the PSTH
correlation with the teacher's true rates.
"""
from __future__ import annotations

import inspect
import logging
import math
from contextlib import contextmanager
from typing import Any, Mapping

import numpy as np
import torch

from eirnn import metrics as M
from eirnn.losses import masked_psth
from eirnn.training import dashboard
from eirnn.training.balancer import GradientBalancer
from eirnn.training.base import LifecycleModule, cfg_get, cosine_with_warmup  # noqa: F401 (re-exported)
from eirnn.training.lr_warmup import scaled_lr, step_unless_nonfinite, warmup_factor
from eirnn.training.objective import FitObjective
from eirnn.training.rebuild import save_spec

MONITOR = "val/psth_corr"
log = logging.getLogger(__name__)


_cfg_get = cfg_get  # the old private name


class FitModule(LifecycleModule):
    """Wraps the model, the objective and the balanced optimisation step.

    Args:
        model: the network (an :class:`~eirnn.models.EIRNN` or compatible module with
            ``n_recorded``, ``is_excitatory`` and ``regularized_weights()``).
        loss: the ``loss`` config (``neuron``, ``trial``, ``reg``, ``activity``, ``balance``).
        optim: ``name`` (adam | adamw), ``lr``, ``weight_decay``, ``grad_clip``, ``warmup_steps``
            (linear lr ramp over the first optimiser steps), ``max_skipped_steps`` (non-finite
            steps in a row before training stops as diverged).
        scheduler: ``name`` (none | plateau | cosine) and its settings.
        bin_size_ms: data bin width (for Poisson terms and bits/spike).
        val_seed: seed of the validation noise (default ``train_seed + 1000003``).
        train_seed: seed of the training noise generator (saved in checkpoints).
        max_epochs: needed by the cosine schedule.
        cuda_graphs: ``auto`` (default: on when training on a CUDA device), ``true`` or ``false``.
            On: each training step (forward, losses, balanced backward, clipping, Adam) and each
            validation forward is replayed as a CUDA graph captured at the first batch of its
            shape (:mod:`eirnn.training.cuda_graph`); Adam then keeps its step count on the
            device (``capturable``). Ignored on a CPU.
        monitor: the validation metric (maximised) that defines ``best_val`` and drives the
            plateau scheduler (default ``val/psth_corr``; ``conf/module/fit.yaml`` passes
            ``optimized_metric``); ``val/psth_cond_score`` includes the condition PSTHs.
        mode: ``max`` (default; ``conf/module/fit.yaml``) or ``min``: the monitor's direction for
            ``best_val`` and the plateau scheduler.
    """

    ensemble_machinery = "eirnn.training.ensemble.fit"

    def __init__(
        self,
        model: torch.nn.Module,
        loss: Mapping[str, Any] | None = None,
        optim: Mapping[str, Any] | None = None,
        scheduler: Mapping[str, Any] | None = None,
        bin_size_ms: float = 25.0,
        val_seed: int | None = None,
        train_seed: int = 0,
        max_epochs: int = 500,
        cuda_graphs: str | bool = "auto",
        monitor: str | None = None,
        mode: str = "max",
    ):
        super().__init__()
        graphs = str(cuda_graphs).lower()
        if graphs not in ("auto", "true", "false"):
            raise ValueError(f"module.cuda_graphs must be auto, true or false, got {cuda_graphs!r}")
        self.cuda_graphs = graphs
        self._graphs = None  # StepGraphs on a CUDA device
        self._graph_lrs: dict = {}  # key -> the device learning rate its graph reads
        self.model = model
        self.init_lifecycle(optim, scheduler, MONITOR if monitor is None else str(monitor), mode, max_epochs)
        loss = dict(loss or {})
        self.loss_cfg = loss
        self.objective = FitObjective(
            neuron=loss.get("neuron") or {}, trial=loss.get("trial") or {}, reg=loss.get("reg") or {},
            activity=loss.get("activity") or {}, bin_size_ms=bin_size_ms,
        )
        bal = loss.get("balance") or {}
        self.balancer = GradientBalancer(
            mode=_cfg_get(bal, "mode", "param"), scale=_cfg_get(bal, "ltrial_scale", 0.5),
            lambda_fixed=_cfg_get(bal, "lambda_trial", 0.1),
        )
        self.bin_size_ms = float(bin_size_ms)
        self.train_seed = int(train_seed)
        self.val_seed = self.train_seed + 1_000_003 if val_seed is None else int(val_seed)
        self._train_gen: torch.Generator | None = None
        self._train_gen_state: torch.Tensor | None = None
        self._val_noise_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self.last_val_arrays: dict[str, np.ndarray] = {}
        self._train_wsums: dict[str, torch.Tensor] = {}  # batch-size-weighted sums of the logged step scalars
        self._train_bs = 0
        self.skipped_steps = 0          # steps undone for a non-finite gradient (whole run)
        self._skips: torch.Tensor | None = None  # on the device: [undone this epoch, undone in a row]
        self.diverged: str | None = None  # why training stopped as diverged, if it did

    # ------------------------------------------------------------- generators
    def _train_generator(self) -> torch.Generator:
        if self._train_gen is None or self._train_gen.device != self.device:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(self.train_seed)
            if self._train_gen_state is not None:
                gen.set_state(self._train_gen_state)
                self._train_gen_state = None
            self._train_gen = gen
        return self._train_gen

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["eirnn"] = {
            "train_generator": self._train_generator().get_state(),
            "best_val": dict(self.best_val),
            "history": list(self.history),
            "skipped_steps": self.skipped_steps,
        }
        save_spec(self, checkpoint)  # constructor spec: the checkpoint rebuilds without Hydra

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("eirnn", {})
        if "train_generator" in state:
            self._train_gen = None
            self._train_gen_state = state["train_generator"].cpu()
        self.best_val = dict(state.get("best_val", {}))
        self.history = list(state.get("history", []))
        self.skipped_steps = int(state.get("skipped_steps", 0))

    # ------------------------------------------------------------------ step
    def forward(self, inputs: torch.Tensor, noise: bool = True, generator: torch.Generator | None = None):
        return self.model(inputs, noise=noise, generator=generator)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        if self.graphs_enabled():
            return self._graphed_training_step(batch)
        opt = self.optimizers()
        out = self.model(batch["inputs"], noise=True, generator=self._train_generator())
        n_rec = self.model.n_recorded
        rec = out.rates[..., :n_rec]
        target, mask = batch["rates"], batch["mask"]

        # issue 15: the batch's conditions, only for the condition-resolved options
        cond = (batch.get("condition"),) if self.objective.uses_conditions else ()
        l_neuron = self.objective.neuron_term(rec, target, mask, *cond)
        l_trial = (self.objective.trial_term(rec, target, mask, *cond)
                   if self.objective.trial_active(self.current_epoch) else None)
        extras = self.objective.extra_term(self.model, out.rates, mask)
        l_extra = sum(extras.values())

        opt.zero_grad(set_to_none=True)
        params = list(self.model.parameters())
        stats = self.balancer.backward(params, l_neuron, l_trial, l_extra, outputs=rec)
        clip = float(_cfg_get(self.optim_cfg, "grad_clip", 1.0))
        inner = opt.optimizer if hasattr(opt, "optimizer") else opt

        def step() -> None:
            if clip > 0:
                self.clip_gradients(opt, gradient_clip_val=clip, gradient_clip_algorithm="norm")
            with scaled_lr(inner, self.lr_factor()):
                opt.step()

        finite = step_unless_nonfinite(inner, params, step)  # no host sync: counted on the device
        self._record_step(finite, l_neuron, l_trial, extras, l_extra, stats, int(target.shape[0]))

    def _record_step(self, finite, l_neuron, l_trial, extras, l_extra, stats, bs: int) -> None:
        """The bookkeeping of one optimiser step (no host synchronisation): skipped steps, logs, epoch sums."""
        if self._skips is None:
            self._skips = torch.zeros(2, dtype=torch.long, device=finite.device)  # [total this epoch, in a row]
        bad = (~finite).long()
        self._skips = torch.stack([self._skips[0] + bad, (self._skips[1] + 1) * bad])

        w = stats["weight"]
        total = l_neuron.detach() + l_extra.detach() + (w * l_trial.detach() if l_trial is not None else 0.0)
        log = {"train/loss": total, "train/L_neuron": l_neuron.detach(), "train/balance_weight": w}
        if l_trial is not None:
            log["train/L_trial"] = l_trial.detach()
        for k, v in extras.items():
            log[f"train/{k}"] = v.detach()
        for k in ("grad_norm_main", "grad_norm_aux"):
            if k in stats:
                log[f"balance/{k.replace('main', 'neuron').replace('aux', 'trial')}"] = stats[k]
        self._accumulate_train_logs(log, bs)
        for k, v in log.items():  # epoch means for the history (no host sync here); float64 so that
            # one huge step (a transient blow-up) does not swallow the later ones in round-off
            self._train_sums[k] = self._train_sums.get(k, 0.0) + v.double()
        self._train_count += 1

    # ------------------------------------------------------------ CUDA graphs
    def graphs_enabled(self) -> bool:
        """Whether steps run as CUDA graphs (``cuda_graphs`` on and the module on a CUDA device)."""
        if self.cuda_graphs == "false" or self.device.type != "cuda":
            return False
        return "noise_sample" in inspect.signature(self.model.forward).parameters

    def _step_graphs(self):
        from eirnn.training.cuda_graph import StepGraphs

        if self._graphs is None or self._graphs.device != self.device:
            self._graphs = StepGraphs(self.device)
        return self._graphs

    def _step_compute(self, inputs, rates, mask, noise, *, trial_on: bool, inner, condition=None) -> dict:
        """What :meth:`training_step` computes, as a function of device tensors only (captured as a
        CUDA graph): the forward with the given state noise, the losses, the balanced backward,
        clipping and the optimiser step (undone if a gradient is not finite)."""
        out = self.model(inputs, noise=noise is not None, noise_sample=noise)
        rec = out.rates[..., : self.model.n_recorded]
        cond = (condition,) if condition is not None else ()
        l_neuron = self.objective.neuron_term(rec, rates, mask, *cond)
        l_trial = self.objective.trial_term(rec, rates, mask, *cond) if trial_on else None
        extras = self.objective.extra_term(self.model, out.rates, mask)
        l_extra = sum(extras.values())
        inner.zero_grad(set_to_none=True)
        params = list(self.model.parameters())
        stats = self.balancer.backward(params, l_neuron, l_trial, l_extra, outputs=rec)
        clip = float(_cfg_get(self.optim_cfg, "grad_clip", 1.0))
        opt_params = [p for g in inner.param_groups for p in g["params"]]

        def step() -> None:
            if clip > 0:
                torch.nn.utils.clip_grad_norm_([p for p in opt_params if p.grad is not None], clip)
            inner.step()

        finite = step_unless_nonfinite(inner, params, step)
        res = {"finite": finite, "l_neuron": l_neuron.detach(), "l_trial": None if l_trial is None else l_trial.detach(),
               "l_extra": l_extra.detach()}
        res.update({f"extra/{k}": v.detach() for k, v in extras.items()})
        res.update({f"stat/{k}": v for k, v in stats.items()})
        return res

    def _graphed_training_step(self, batch: dict[str, torch.Tensor]) -> None:
        """:meth:`training_step` with the step replayed as a CUDA graph (one per batch shape)."""
        opt = self.optimizers()
        inner = opt.optimizer if hasattr(opt, "optimizer") else opt
        trial_on = self.objective.trial_active(self.current_epoch)
        inputs, rates, mask = batch["inputs"], batch["rates"], batch["mask"]
        key = ("train", tuple(inputs.shape), tuple(rates.shape), None if mask is None else tuple(mask.shape),
               trial_on, self.balancer.mode)
        dyn = {"inputs": inputs, "rates": rates, "mask": mask}
        if self.objective.uses_conditions:  # issue 15: the batch's conditions are a graph input
            dyn["condition"] = batch.get("condition")
        if getattr(self.model, "noise_scale", 1.0) > 0:  # the draw of the eager step: randn([B, T, n])
            dtype = next(self.model.parameters()).dtype
            shape = (int(inputs.shape[0]), int(inputs.shape[1]), int(self.model.n_units))
            dyn["noise"] = torch.empty(shape, device=inputs.device, dtype=dtype).normal_(generator=self._train_generator())

        def fn(**kw):
            return self._step_compute(kw["inputs"], kw["rates"], kw.get("mask"), kw.get("noise"),
                                      trial_on=trial_on, inner=inner, condition=kw.get("condition"))

        res = self._run_graphed_step(opt, key, fn, dyn, float(inner.param_groups[0]["lr"]) * self.lr_factor())
        extras = {k[len("extra/"):]: v for k, v in res.items() if k.startswith("extra/")}
        stats = {k[len("stat/"):]: v for k, v in res.items() if k.startswith("stat/")}
        self._record_step(res["finite"], res["l_neuron"], res["l_trial"], extras, res["l_extra"], stats,
                          int(rates.shape[0]))

    def _run_graphed_step(self, opt, key, fn, dyn: dict, lr: float) -> dict:
        """Run ``fn(**dyn)`` (one optimiser step of ``opt`` at learning rate ``lr``) through the
        module's :class:`~eirnn.training.cuda_graph.StepGraphs`, counted as one optimiser step."""
        inner = opt.optimizer if hasattr(opt, "optimizer") else opt
        if key in self._graph_lrs:
            self._graph_lrs[key].fill_(lr)  # read by the replay (no host synchronisation)
        before, after = getattr(opt, "_on_before_step", None), getattr(opt, "_on_after_step", None)
        if callable(before):
            before()  # Lightning's step count (global_step), as opt.step() would
        res = self._step_graphs().run(key, fn, {k: v for k, v in dyn.items() if v is not None},
                                      setup=lambda capture: self._graph_lr(inner, lr, key, capture))
        if callable(after):
            after()
        return res

    @contextmanager
    def _graph_lr(self, inner, lr: float, key, capture: bool):
        """The learning rate of a graphed step: a float for the eager first step, a device tensor
        (refilled before every replay) while the graph is captured."""
        saved = [g["lr"] for g in inner.param_groups]
        if capture:
            lr_t = self._graph_lrs[key] = torch.full((), lr, dtype=torch.float32, device=self.device)
        try:
            for g in inner.param_groups:
                g["lr"] = lr_t if capture else lr
            yield
        finally:
            for g, v in zip(inner.param_groups, saved):
                g["lr"] = v

    def lr_factor(self, step: int | None = None) -> float:
        """Warmup multiplier of optimiser step ``step`` (default: the next one;
        :func:`~eirnn.training.lr_warmup.warmup_factor`)."""
        step = self.global_step if step is None else step
        return warmup_factor(step, int(_cfg_get(self.optim_cfg, "warmup_steps", 0)))

    def _check_skipped_steps(self) -> None:
        """Once per epoch (one host read): count the undone steps, stop after too many in a row."""
        if self._skips is None:
            return
        epoch_total, in_a_row = (int(v) for v in self._skips.tolist())
        self._skips = torch.stack([self._skips[0] * 0, self._skips[1]])
        if not epoch_total:
            return
        self.skipped_steps += epoch_total
        log.warning("epoch %d: %d optimiser step(s) had a non-finite gradient and were undone",
                    self.current_epoch + 1, epoch_total)  # epochs counted from 1, like every console line
        limit = int(_cfg_get(self.optim_cfg, "max_skipped_steps", 20))
        if limit > 0 and in_a_row >= limit and self._trainer is not None:
            self.diverged = (f"{in_a_row} optimiser steps in a row had a non-finite gradient "
                             f"(epoch {self.current_epoch + 1}); lower optim.lr or raise optim.warmup_steps")
            self.trainer.should_stop = True

    def _accumulate_train_logs(self, log: dict[str, torch.Tensor], bs: int) -> None:
        """Add one step's scalars to the epoch's batch-size-weighted sums (on the device). They are
        logged once per epoch by :meth:`on_train_epoch_end`: the weighted mean is what
        ``self.log(..., on_epoch=True, batch_size=bs)`` at every step gives, but Lightning's cost
        per ``self.log`` call (~0.5 ms) made up a third of a GPU epoch."""
        for k, v in log.items():
            self._train_wsums[k] = self._train_wsums.get(k, 0.0) + v.double() * bs
        self._train_bs += bs

    def on_train_epoch_start(self) -> None:
        self._train_sums, self._train_count = {}, 0
        self._train_wsums, self._train_bs = {}, 0

    def on_train_epoch_end(self) -> None:
        if self._train_wsums:  # the epoch means of the step scalars (see _accumulate_train_logs)
            self.log_dict({k: (v / self._train_bs).float() for k, v in self._train_wsums.items()},
                          on_step=False, on_epoch=True)
            self._train_wsums, self._train_bs = {}, 0
        self._check_skipped_steps()
        self.step_epoch_scheduler()

    # ------------------------------------------------------------ validation
    def on_validation_epoch_start(self) -> None:
        self._val_outputs = []
        self._val_gen = torch.Generator(device=self.device)
        self._val_gen.manual_seed(self.val_seed)

    def _validation_noise(self, inputs: torch.Tensor, batch_idx: int) -> torch.Tensor | None:
        """The validation noise of batch ``batch_idx``, drawn once and reused at every epoch.

        The validation generator is re-seeded at each epoch start, so every epoch draws the
        same noise; it is kept (with the generator state after the draw, so that a later
        batch that is not cached draws exactly what it would have). ``None`` when the model
        does not take a ``noise_sample``.
        """
        n_units = getattr(self.model, "n_units", None)
        if n_units is None or "noise_sample" not in inspect.signature(self.model.forward).parameters:
            return None
        dtype = next(self.model.parameters()).dtype
        shape = (int(inputs.shape[0]), int(inputs.shape[1]), int(n_units))
        key = (batch_idx, shape, str(inputs.device), dtype, self.val_seed)
        hit = self._val_noise_cache.get(key)
        if hit is None:
            xi = torch.randn(shape, generator=self._val_gen, device=inputs.device, dtype=dtype)
            hit = self._val_noise_cache[key] = (xi, self._val_gen.get_state())
        else:
            self._val_gen.set_state(hit[1])
        return hit[0]

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        xi = self._validation_noise(batch["inputs"], batch_idx)
        n_rec = self.model.n_recorded

        def forward(inputs, mask, **noise) -> dict[str, torch.Tensor]:
            r = self.model(inputs, noise=True, **noise).rates
            # + per-batch sums of all units' rates for the E/I currents (eirnn/training/dashboard.py)
            return {"rates": r[..., :n_rec], **dashboard.validation_sums(r, mask)}

        if xi is None:
            res = forward(batch["inputs"], batch["mask"], generator=self._val_gen)
        elif self.graphs_enabled():  # the forward as a CUDA graph (the fixed noise of this batch baked in)
            key = ("val", batch_idx, tuple(batch["inputs"].shape), xi.data_ptr())
            res = self._step_graphs().run(
                key, lambda inputs, mask: forward(inputs, mask, noise_sample=xi),
                {"inputs": batch["inputs"], "mask": batch["mask"]})
            res = {k: v.clone() for k, v in res.items()}  # the graph's buffers are overwritten by its next replay
        else:
            res = forward(batch["inputs"], batch["mask"], noise_sample=xi)
        item = {**res, "target": batch["rates"], "mask": batch["mask"]}
        if "condition" in batch and "inputs" in batch:  # condition-resolved validation metrics (issue 15)
            item["inputs"] = batch["inputs"]
        if "true_rates" in batch:
            item["true_rates"] = batch["true_rates"]
        if "condition" in batch:
            item["condition"] = batch["condition"]
        self._val_outputs.append(item)

    def _gather_val(self) -> dict[str, torch.Tensor]:
        return self.gather_val(0)

    def compute_val_metrics(self, v: dict[str, torch.Tensor]) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """All validation metrics from gathered ``rates``/``target``/``mask`` ``[B, T, N]``."""
        rates, target, mask = v["rates"].float(), v["target"].float(), v["mask"]
        exc = self.model.is_excitatory[: self.model.n_recorded].cpu().numpy()
        if rates.device.type != "cpu":  # computed on the device, read back in one transfer
            per_neuron, bps, l_neuron, l_trial, psth_model, psth_data = self._device_val_metrics(rates, target, mask)
        else:
            per_neuron = M.psth_correlation(rates, target, mask)
            bps = float(M.bits_per_spike(rates, target, mask, bin_size_ms=self.bin_size_ms))
            with torch.no_grad():
                l_neuron = float(self.objective.neuron_term(rates, target, mask))
                l_trial = (float(self.objective.trial_term(rates, target, mask)) if self.objective.trial_enabled
                           else float("nan"))
            psth_model, _ = masked_psth(rates, mask)
            psth_data, valid = masked_psth(target, mask)
            psth_model = psth_model.detach().cpu().numpy()
            psth_data = torch.where(valid, psth_data, torch.nan).cpu().numpy()
        by_type = M.psth_corr_by_type(per_neuron, exc)
        out = {
            "val/psth_corr": by_type["all"],
            "val/psth_corr_E": by_type["E"],
            "val/psth_corr_I": by_type["I"],
            "val/bits_per_spike": bps,
            "val/L_neuron": l_neuron,
            "val/L_trial": l_trial,
        }
        arrays = {
            "per_neuron_corr": np.asarray(per_neuron),
            # NaN where no validation trial has data (past the longest trial), as for the data: not 0 sp/s
            "psth_model": np.where(np.isnan(psth_data), np.nan, psth_model),
            "psth_data": psth_data,
        }
        out.update(self._condition_val_metrics(v, out["val/psth_corr"]))
        if getattr(self, "_condition_arrays", None):
            arrays["condition"] = self._condition_arrays
        if "true_rates" in v:
            true_pn = M.psth_correlation(rates, v["true_rates"].float(), mask)
            out["val/true_psth_corr"] = float(np.nanmean(true_pn))
            arrays["per_neuron_true_corr"] = np.asarray(true_pn)
        return out, arrays

    @torch.no_grad()
    def _device_val_metrics(self, rates, target, mask):
        """``psth_correlation`` (per neuron), ``bits_per_spike`` (:mod:`eirnn.metrics`, the same
        formulas in float64), ``L_neuron``, ``L_trial`` and both PSTHs, evaluated where the tensors
        are (a GPU) and copied to the host together: one synchronisation instead of a dozen."""
        per_neuron, bps = device_psth_corr_and_bps(rates, target, mask, self.bin_size_ms)
        l_neuron = self.objective.neuron_term(rates, target, mask)
        l_trial = (self.objective.trial_term(rates, target, mask) if self.objective.trial_enabled
                   else torch.full((), float("nan"), device=rates.device))
        psth_model, _ = masked_psth(rates, mask)
        psth_data, valid = masked_psth(target, mask)
        psth_data = torch.where(valid, psth_data, torch.nan)
        parts = [per_neuron, bps.reshape(1), l_neuron.double().reshape(1), l_trial.double().reshape(1),
                 psth_model.double().reshape(-1), psth_data.double().reshape(-1)]
        flat = torch.cat(parts).cpu().numpy()
        n, tn = per_neuron.numel(), psth_model.numel()
        shape = tuple(psth_model.shape)
        return (flat[:n], float(flat[n]), float(flat[n + 1]), float(flat[n + 2]),
                flat[n + 3:n + 3 + tn].reshape(shape).astype(np.float32),
                flat[n + 3 + tn:].reshape(shape).astype(np.float32))

    def _condition_val_metrics(self, v: dict[str, torch.Tensor], psth_corr: float) -> dict[str, float]:
        """``val/condition_psth_corr`` (smoothed, event-aligned condition PSTHs, the default
        windows of :mod:`eirnn.condition_scores`; on this draw of the network's rates) and
        ``val/psth_cond_score = (val/psth_corr + val/condition_psth_corr) / 2``, a checkpoint /
        early-stopping monitor that includes the conditions (issue 15). Empty when the batch
        has no SC task inputs. One host copy per validation epoch."""
        if "condition" not in v or "inputs" not in v or v["inputs"].shape[-1] < 14:
            return {}
        from eirnn.condition_scores import CONDITION_DEFAULTS
        from eirnn.data.conditions import event_onset_bins

        cfg = CONDITION_DEFAULTS
        bs = self.bin_size_ms
        onsets = event_onset_bins(v["inputs"].cpu().numpy())
        windows = {ev: (int(round(w[0] / bs)), int(round(w[1] / bs))) for ev, w in cfg["windows_ms"].items()}
        mask = v["mask"].cpu().numpy()
        xa, ma, seg = M.align_to_events(v["rates"].float().cpu().numpy(), mask, onsets, windows)
        da, _, _ = M.align_to_events(v["target"].float().cpu().numpy(), mask, onsets, windows)
        sc = M.aligned_condition_scores(xa, da, ma, v["condition"].cpu().numpy(), float(cfg["smooth_sigma_ms"]) / bs, seg)
        corr = M._nanmean(sc["condition_psth_corr"])
        loc = np.zeros(xa.shape[0], np.int64)  # target location from the inputs (TensorBoard figure)
        tgt = onsets["target"]
        ok = np.isfinite(tgt)
        if ok.any():
            u = v["inputs"][..., 1:5].cpu().numpy()
            loc[ok] = 1 + np.argmax(u[np.flatnonzero(ok), tgt[ok].astype(np.int64)], axis=-1)
        self._condition_arrays = {"model_a": xa, "data_a": da, "mask_a": ma, "seg": seg, "location": loc,
                                  "windows_ms": dict(cfg["windows_ms"]), "sigma_bins": float(cfg["smooth_sigma_ms"]) / bs}
        return {"val/condition_psth_corr": corr, "val/psth_cond_score": 0.5 * (psth_corr + corr)}

    def on_validation_epoch_end(self) -> None:
        if not self._val_outputs:
            return
        gathered = self._gather_val()
        import warnings

        with warnings.catch_warnings():  # a diverging model's NaN rates: the metric says NaN, stderr stays clean
            warnings.simplefilter("ignore", RuntimeWarning)
            vals, arrays = self.compute_val_metrics(gathered)
        # spectral radius, currents, E/I rates, ...; its fixation-aligned val/condition_psth_corr only where
        # the event-aligned one of issue 15 (_condition_val_metrics) could not be computed
        vals.update({k: x for k, x in dashboard.epoch_scalars(self.model, gathered).items() if k not in vals})
        del gathered
        self._val_outputs = []
        if self.trainer.sanity_checking:
            return
        self.log_val(vals, MONITOR)  # MONITOR logged even when NaN: early stopping then stops
        self._check_skipped_steps()  # before the record (training ends its epoch after validation)
        lr = self.optimizers().param_groups[0]["lr"] * self.lr_factor(max(self.global_step - 1, 0))  # the last step's
        self.log("lr", lr)
        self.log("train/skipped_steps", float(self.skipped_steps))  # non-finite steps undone so far (run total)
        for k, v in self.model.time_constants.summary().items():
            self.log(f"time_constants/{k}", v)
        record = {"epoch": int(self.current_epoch), "lr": float(lr), "epoch_time_s": float(self.epoch_time()), **vals}
        if self.skipped_steps:
            record["train/skipped_steps"] = float(self.skipped_steps)
        record.update(self.train_means())
        self.last_val_arrays = arrays
        self.end_epoch(record, vals.get(self.monitor, float("nan")))

    # ------------------------------------------------------------ optimisers
    def capturable_optimizer(self) -> bool:
        """Adam keeps its step count on the device when steps are CUDA graphs."""
        return self.device.type == "cuda" and self.graphs_enabled()


@torch.no_grad()
def device_psth_corr_and_bps(rates: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                             bin_size_ms: float) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`eirnn.metrics.psth_correlation` (``[N]``) and :func:`eirnn.metrics.bits_per_spike`
    (0-d) of ``[B, T, N]`` tensors, computed in float64 with torch where the tensors are (no
    host transfer; the same formulas: masked trial means, Pearson r over the valid bins,
    Poisson gain over a per-neuron constant rate)."""
    m = mask.bool()
    x = torch.where(m, rates.double(), 0.0)
    y = torch.where(m, target.double(), 0.0)
    count = m.sum(0)  # [T, N]
    px = x.sum(0) / count.clamp_min(1)
    py = y.sum(0) / count.clamp_min(1)
    valid = count > 0
    n = valid.sum(0)  # [N]
    nn_ = n.clamp_min(1)
    xm = torch.where(valid, px, 0.0).sum(0) / nn_
    ym = torch.where(valid, py, 0.0).sum(0) / nn_
    xc = torch.where(valid, px - xm, 0.0)
    yc = torch.where(valid, py - ym, 0.0)
    sxx, syy = (xc ** 2).sum(0), (yc ** 2).sum(0)
    tiny_x = 1e-24 * (torch.where(valid, px, 0.0) ** 2).sum(0).clamp_min(1e-300)
    tiny_y = 1e-24 * (torch.where(valid, py, 0.0) ** 2).sum(0).clamp_min(1e-300)
    ok = (n >= 2) & (sxx > tiny_x) & (syy > tiny_y)
    r = torch.where(ok, ((xc * yc).sum(0) / torch.sqrt(sxx * syy)).clamp(-1.0, 1.0), torch.nan)
    dt = bin_size_ms / 1000.0
    k = torch.where(m, torch.round(y * dt), 0.0)
    lam = (x * dt).clamp_min(M._LAM_FLOOR)
    n_bins = m.sum((0, 1))
    lam0 = (k.sum((0, 1)) / n_bins.clamp_min(1)).clamp_min(M._LAM_FLOOR)
    gain = torch.where(m, k * (torch.log(lam) - torch.log(lam0)) - lam + lam0, 0.0).sum((0, 1))
    total = k.sum()
    bps = torch.where(total > 0, gain.sum() / (total * math.log(2.0)), torch.nan)
    return r, bps
