"""The fit written the obvious way in plain PyTorch, as the lab wrote it: the baseline
every ``ours`` figure of :mod:`benchmarks.run` is divided into.

* :class:`LabStyleRNN` -- a per-step Python loop that rebuilds ``W_rec`` from its raw
  parameter with the Dale sign and zero-diagonal masks at every step::

      W   = |A| * sign[None, :] * offdiag * gain
      x   = (1 - a) * x + a * (r @ W.T + e_t @ W_in.T + b) + sigma * sqrt(a) * xi_t
      r   = softplus(x) * scale + baseline

  (list append + ``torch.stack``; the attention embedding in its einsum form; readout by
  ``index_select`` of the E units). It copies the weights of an
  :class:`~eirnn.models.EIRNN` (full rank, fixed time constants), so both compute the
  same function on the same noise.
* :func:`sinkhorn_reference` -- log-domain Sinkhorn with ``torch.logsumexp``, unrolled
  and recorded by autograd; :func:`trial_loss_reference` uses it in the ``L_trial``
  pipeline of :mod:`eirnn.losses.trial`.
* :func:`reference_step` -- one optimisation step; the balanced (``param``) mode uses
  two ``loss.backward(retain_graph=True)`` passes and combines per-parameter gradients
  with the global norms, ``g = g_neuron + scale * |g_neuron| / |g_trial| * g_trial + g_reg``.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from eirnn.losses.trial import (
    euclidean_trial_cost,
    population_trajectory,
    smooth_trajectory,
    zscore_across_trials,
)


def attention_einsum(emb, u: torch.Tensor) -> torch.Tensor:
    """The attention embedding as first written: softmax weights and two einsums."""
    weights, (va, vb) = emb.attention(u)
    h, dh = emb.n_heads, emb.d_head
    va, vb = va.view(-1, h, dh), vb.view(-1, h, dh)
    o = torch.einsum("...hc,chd->...hd", weights * u.unsqueeze(-2), va) + torch.einsum("...hc,chd->...hd", weights, vb)
    return o.reshape(*o.shape[:-2], h * dh) @ emb.W_O.T


class LabStyleRNN(nn.Module):
    """Plain-PyTorch copy of an :class:`~eirnn.models.EIRNN` (full rank, fixed alpha)."""

    def __init__(self, model):
        super().__init__()
        if getattr(model.recurrent, "rank", None) is not None or model.time_constants.alpha().requires_grad:
            raise ValueError("the reference supports full-rank models with fixed time constants")
        self.n_units, self.n_recorded, self.noise_scale = model.n_units, model.n_recorded, model.noise_scale
        self.raw = nn.Parameter(model.recurrent.raw.detach().clone())
        self.register_buffer("sign", model.recurrent.sign.clone())
        self.register_buffer("offdiag", model.recurrent.offdiag.clone())
        self.gain, self.dale = model.recurrent.gain, model.recurrent.dale
        self.embedding = copy.deepcopy(model.embedding)
        self.attention = type(self.embedding).__name__ == "AttentionEmbedding"
        self.W_in = nn.Parameter(model.W_in.detach().clone())
        self.bias = nn.Parameter(model.bias.detach().clone())
        h0 = model.h0.detach().clone()
        self.h0 = nn.Parameter(h0) if model.h0.requires_grad else None
        if self.h0 is None:
            self.register_buffer("h0_fixed", h0)
        self._rate_scale = nn.Parameter(model._rate_scale.detach().clone())
        self._rate_baseline = nn.Parameter(model._rate_baseline.detach().clone())
        self.register_buffer("alpha", model.alpha().detach().clone())
        self.register_buffer("exc_index", model.exc_index.clone())
        self.n_outputs = model.n_outputs
        if self.n_outputs > 0:
            self.W_out = nn.Parameter(model.W_out.detach().clone())
            self.b_out = nn.Parameter(model.b_out.detach().clone())

    def regularized_weights(self):
        return [self.raw.abs() * (self.gain * self.sign[None, :] * self.offdiag), self.W_in]

    def forward(self, u: torch.Tensor, noise: bool = True, generator: torch.Generator | None = None):
        B, T, _ = u.shape
        a = self.alpha
        e = attention_einsum(self.embedding, u) if self.attention else u
        xi = torch.randn((B, T, self.n_units), generator=generator, device=u.device) if noise else None
        scale, base = F.softplus(self._rate_scale), F.softplus(self._rate_baseline)
        x = (self.h0 if self.h0 is not None else self.h0_fixed).expand(B, self.n_units)
        r = F.softplus(x) * scale + base
        rates = []
        for t in range(T):
            W = self.raw.abs() * self.sign[None, :] * self.offdiag * self.gain
            drive = r @ W.T + e[:, t] @ self.W_in.T + self.bias
            x = (1 - a) * x + a * drive
            if xi is not None:
                x = x + self.noise_scale * torch.sqrt(a) * xi[:, t]
            r = F.softplus(x) * scale + base
            rates.append(r)
        rates = torch.stack(rates, dim=1)
        outputs = rates[..., self.exc_index] @ self.W_out.T + self.b_out if self.n_outputs > 0 else None
        return rates, outputs


def sinkhorn_reference(cost: torch.Tensor, epsilon: float, n_iters: int, a: torch.Tensor, b: torch.Tensor):
    """Unrolled log-domain Sinkhorn, every operation recorded by autograd."""
    log_a, log_b = torch.log(a), torch.log(b)
    log_k = -cost / epsilon
    f = torch.zeros_like(log_a)
    g = torch.zeros_like(log_b)
    for _ in range(n_iters):
        g = log_b - torch.logsumexp(log_k + f.unsqueeze(-1), dim=-2)
        f = log_a - torch.logsumexp(log_k + g.unsqueeze(-2), dim=-1)
    return torch.exp(log_k + f.unsqueeze(-1) + g.unsqueeze(-2))


def trial_loss_reference(rates, target, mask, epsilon=0.1, n_iters=20, smooth_sigma_bins=1.0):
    """``L_trial`` (Euclidean) with :func:`sinkhorn_reference`."""
    pm, valid = population_trajectory(rates, mask)
    pd, _ = population_trajectory(target.to(rates.dtype), mask)
    pm, pd = smooth_trajectory(pm, valid, smooth_sigma_bins), smooth_trajectory(pd, valid, smooth_sigma_bins)
    cost = euclidean_trial_cost(zscore_across_trials(pm, valid), valid, zscore_across_trials(pd, valid), valid)
    has = valid.any(1)
    n = has.sum().clamp_min(1).to(cost.dtype)
    mass = torch.where(has, 1.0 / n, torch.full_like(n, 1e-30))
    return (sinkhorn_reference(cost, epsilon, n_iters, mass, mass) * cost).sum()


def _grads(params):
    return [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in params]


def reference_step(model: LabStyleRNN, opt, objective, batch, generator, mode: str = "param", scale: float = 0.5,
                   lam: float = 0.1, clip: float = 1.0, trial_cfg: dict | None = None):
    """One optimisation step written plainly; ``mode``: param | output | fixed | off."""
    trial_cfg = trial_cfg or {}
    params = [p for p in model.parameters() if p.requires_grad]
    rates, _ = model(batch["inputs"], generator=generator)
    rec = rates[..., : model.n_recorded]
    target, mask = batch["rates"], batch["mask"]
    l_neuron = objective.neuron_term(rec, target, mask)
    l_reg = objective.extra_term(model, rates, mask)["L_reg"]
    l_trial = None if mode == "off" else trial_loss_reference(rec, target, mask, **trial_cfg)
    opt.zero_grad()
    if mode == "param":
        l_neuron.backward(retain_graph=True)
        g_n = _grads(params)
        opt.zero_grad()
        l_trial.backward(retain_graph=True)
        g_t = _grads(params)
        opt.zero_grad()
        l_reg.backward()
        g_r = _grads(params)
        n_n = torch.sqrt(sum(g.norm() ** 2 for g in g_n))
        n_t = torch.sqrt(sum(g.norm() ** 2 for g in g_t))
        w = scale * n_n / n_t.clamp_min(1e-12)
        for p, a, b, c in zip(params, g_n, g_t, g_r):
            p.grad = a + w * b + c
    elif mode == "output":
        go_n = torch.autograd.grad(l_neuron, rec, retain_graph=True)[0]
        go_t = torch.autograd.grad(l_trial, rec, retain_graph=True)[0]
        w = scale * go_n.norm() / go_t.norm().clamp_min(1e-12)
        ((rec * (go_n + w * go_t)).sum() + l_reg).backward()
    elif mode == "fixed":
        (l_neuron + lam * l_trial + l_reg).backward()
    else:
        (l_neuron + l_reg).backward()
    torch.nn.utils.clip_grad_norm_(params, clip)
    opt.step()
    return l_neuron.detach()


def reference_validation(model: LabStyleRNN, objective, batch, generator, bin_size_ms: float, trial_cfg=None):
    """Validation forward (fixed noise seed) and the same metrics as the module computes."""
    from eirnn import metrics as M

    with torch.no_grad():
        rates, _ = model(batch["inputs"], generator=generator)
        rec = rates[..., : model.n_recorded]
        target, mask = batch["rates"], batch["mask"]
        per_neuron = M.psth_correlation(rec, target, mask)
        out = {
            "val/psth_corr": float(torch.nan_to_num(torch.as_tensor(per_neuron)).mean()),
            "val/bits_per_spike": float(M.bits_per_spike(rec, target, mask, bin_size_ms=bin_size_ms)),
            "val/L_neuron": float(objective.neuron_term(rec, target, mask)),
            "val/L_trial": float(trial_loss_reference(rec, target, mask, **(trial_cfg or {}))),
        }
    return out


__all__ = [
    "LabStyleRNN", "attention_einsum", "sinkhorn_reference", "trial_loss_reference", "reference_step",
    "reference_validation",
]
