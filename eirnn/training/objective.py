"""The fitting objective assembled from the ``loss`` config group.

Terms (each defined in :mod:`eirnn.losses`):

* ``L_neuron`` (main): ``correlation`` (the lab's PSTH loss, default), ``poisson``
  (Poisson NLL of the spike counts) or ``hybrid`` (``w * poisson + (1 - w) * correlation``).
* ``L_trial`` (auxiliary): Sinkhorn trial matching, ``euclidean`` (default) or
  ``poisson`` distance; switched off for the first ``warmup_epochs`` epochs.
* ``L_extra``: ``L_reg = lambda_l2 * sum_W mean(W^2)`` over ``W_rec`` and ``W_in``, plus
  the optional activity regulariser on all units' rates.

How ``L_neuron`` and ``L_trial`` are combined is the balancer's job
(:mod:`eirnn.training.balancer`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from eirnn.losses import (
    activity_regularization,
    condition_neuron_loss_terms,
    hybrid_neuron_loss,
    neuron_loss,
    poisson_neuron_loss,
    trial_loss,
    weight_l2,
)

NEURON_KINDS = ("correlation", "poisson", "hybrid")


def _get(cfg: Mapping[str, Any] | None, key: str, default: Any) -> Any:
    if cfg is None:
        return default
    value = cfg.get(key, default)
    return default if value is None else value


@dataclass
class FitObjective:
    """Computes the loss terms for a batch; built from the ``loss`` config."""

    neuron: Mapping[str, Any] = field(default_factory=dict)
    trial: Mapping[str, Any] = field(default_factory=dict)
    reg: Mapping[str, Any] = field(default_factory=dict)
    activity: Mapping[str, Any] = field(default_factory=dict)
    bin_size_ms: float = 25.0

    def __post_init__(self) -> None:
        kind = str(_get(self.neuron, "kind", "correlation")).lower()
        if kind not in NEURON_KINDS:
            raise ValueError(f"loss.neuron.kind must be one of {NEURON_KINDS}, got {kind!r}")
        self.neuron_kind = kind
        self.trial_enabled = bool(_get(self.trial, "enabled", True))
        self.warmup_epochs = int(_get(self.trial, "warmup_epochs", 0))
        self.activity_enabled = bool(_get(self.activity, "enabled", False))
        sm = _get(self.neuron, "target_smooth_sigma_bins", 0.0)
        if isinstance(sm, str):
            raise ValueError("loss.neuron.target_smooth_sigma_bins must be a number of bins "
                             f"(the training set resolves 'auto' before this point), got {sm!r}")
        if float(sm) < 0:
            raise ValueError(f"loss.neuron.target_smooth_sigma_bins must be >= 0, got {sm}")
        self.target_smooth_sigma_bins = float(sm)
        self.var_noise_correction = bool(_get(self.neuron, "var_noise_correction", False))
        # issue 15: condition-resolved L_neuron and within-condition L_trial
        self.condition_weight = float(_get(self.neuron, "condition_weight", 0.0))
        if not 0.0 <= self.condition_weight <= 1.0:
            raise ValueError(f"loss.neuron.condition_weight must be in [0, 1], got {self.condition_weight}")
        self.condition_min_trials = int(_get(self.neuron, "condition_min_trials", 2))
        self.condition_var_noise_correction = bool(_get(self.neuron, "condition_var_noise_correction", True))
        self.trial_within_condition = bool(_get(self.trial, "within_condition", False))
        #: whether a training step needs the batch's ``condition`` labels
        self.uses_conditions = self.condition_weight > 0 or self.trial_within_condition
        if self.var_noise_correction and self.target_smooth_sigma_bins > 0:
            raise ValueError("loss.neuron.var_noise_correction=true cannot be combined with "
                             f"loss.neuron.target_smooth_sigma_bins={sm} (set one of them off)")

    # -- main -----------------------------------------------------------------
    def neuron_term(self, rates: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None,
                    conditions: torch.Tensor | None = None) -> torch.Tensor:
        """``L_neuron`` on recorded units: ``rates``, ``target``, ``mask`` are ``[B, T, N]``.

        With ``loss.neuron.condition_weight = a > 0`` and the batch's ``conditions`` ``[B]``, the
        lab's PSTH loss ``N`` becomes ``(1 - a) N + a N_cond`` (:func:`condition_neuron_loss_terms`,
        the correlation and variance terms per condition); the Poisson half of ``hybrid`` and
        the grand scale term are unchanged. Without ``conditions`` (validation) it is ``N``.
        """
        ls, lv = float(_get(self.neuron, "lambda_scale", 0.1)), float(_get(self.neuron, "lambda_var", 0.05))
        sm, vc = self.target_smooth_sigma_bins, self.var_noise_correction
        a = self.condition_weight if conditions is not None else 0.0
        if self.neuron_kind == "poisson":
            return poisson_neuron_loss(rates, target, mask, bin_size_ms=self.bin_size_ms)
        if a == 0.0:
            if self.neuron_kind == "correlation":
                return neuron_loss(rates, target, mask, lambda_scale=ls, lambda_var=lv, target_smooth_sigma_bins=sm,
                                   var_noise_correction=vc)
            return hybrid_neuron_loss(
                rates, target, mask, poisson_weight=float(_get(self.neuron, "poisson_weight", 0.5)),
                bin_size_ms=self.bin_size_ms, lambda_scale=ls, lambda_var=lv, target_smooth_sigma_bins=sm,
                var_noise_correction=vc,
            )
        lab = neuron_loss(rates, target, mask, lambda_scale=ls, lambda_var=lv, target_smooth_sigma_bins=sm,
                          var_noise_correction=vc)
        cond = condition_neuron_loss_terms(rates, target, mask, conditions, lambda_var=lv,
                                           min_trials=self.condition_min_trials,
                                           var_noise_correction=self.condition_var_noise_correction)["total"]
        n = (1.0 - a) * lab + a * cond
        if self.neuron_kind == "correlation":
            return n
        w = float(_get(self.neuron, "poisson_weight", 0.5))
        return w * poisson_neuron_loss(rates, target, mask, bin_size_ms=self.bin_size_ms) + (1.0 - w) * n

    # -- auxiliary ------------------------------------------------------------
    def trial_active(self, epoch: int) -> bool:
        return self.trial_enabled and epoch >= self.warmup_epochs

    def trial_term(self, rates: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None,
                   conditions: torch.Tensor | None = None) -> torch.Tensor:
        """``L_trial`` (Sinkhorn trial matching) on recorded units, ``[B, T, N]`` inputs; with
        ``loss.trial.within_condition`` and ``conditions`` ``[B]``, trials are matched within
        their condition only (:func:`eirnn.losses.trial_loss`)."""
        return trial_loss(
            rates, target, mask,
            epsilon=float(_get(self.trial, "epsilon", 0.1)),
            n_iters=int(_get(self.trial, "n_iters", 20)),
            distance=str(_get(self.trial, "distance", "euclidean")),
            smooth_sigma_bins=float(_get(self.trial, "smooth_sigma_bins", 1.0)),
            bin_size_ms=self.bin_size_ms,
            conditions=conditions if self.trial_within_condition else None,
        )

    def trial_term_members(self, rates: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None):
        """``L_trial`` of ``K`` models at once (``rates`` ``[K, B, T, N]``) -> ``[K]``
        (:func:`~eirnn.losses.trial.trial_loss_members`); ``None`` for the Poisson distance (no batched form)."""
        if str(_get(self.trial, "distance", "euclidean")) != "euclidean":
            return None
        from eirnn.losses.trial import trial_loss_members

        return trial_loss_members(
            rates, target, mask,
            epsilon=float(_get(self.trial, "epsilon", 0.1)),
            n_iters=int(_get(self.trial, "n_iters", 20)),
            smooth_sigma_bins=float(_get(self.trial, "smooth_sigma_bins", 1.0)),
            bin_size_ms=self.bin_size_ms,
        )

    # -- extra ----------------------------------------------------------------
    def extra_term(self, model: torch.nn.Module, all_rates: torch.Tensor, mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Regularisers: ``{"L_reg": ..., "L_activity": ...}`` (the latter only when enabled)."""
        out = {"L_reg": weight_l2(model.regularized_weights(), lam=float(_get(self.reg, "lambda_l2", 1e-4)))}
        if self.activity_enabled:
            # The activity regulariser sees every unit; the mask only covers recorded
            # ones, so broadcast its time validity (a bin is valid when any neuron is).
            act_mask = None
            if mask is not None:
                act_mask = mask.any(-1, keepdim=True).expand(-1, -1, all_rates.shape[-1])
            out["L_activity"] = activity_regularization(
                all_rates, act_mask,
                target_mean=float(_get(self.activity, "target_mean", 10.0)),
                target_max=float(_get(self.activity, "target_max", 100.0)),
                lambda_mean=float(_get(self.activity, "lambda_mean", 0.01)),
                lambda_max=float(_get(self.activity, "lambda_max", 0.001)),
            )
        return out
