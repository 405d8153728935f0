"""Integration constants ``alpha = dt / tau`` of the discretised rate dynamics.

The recurrence ``x[t] = (1 - alpha) x[t-1] + alpha * drive[t]`` is a forward-Euler
step of ``tau dx/dt = -x + drive``. It is a stable, non-oscillating low-pass filter
only for ``0 < alpha < 1``, i.e. ``tau > dt``. With ``alpha > 1`` the factor
``(1 - alpha)`` is negative and the state flips sign every step (``alpha >= 2``
diverges). This is what broke the lab's learnable time constants: with
``dt = 25 ms`` and an inhibitory ``tau`` initialised at 20 ms and hard-clamped to
``[10, 200]`` ms, ``alpha_I = 1.25`` (up to 2.5) -- a collapse that happens even
when ``tau`` is frozen, and that no gradient can repair (see ``tau_bound``).

Options (``model.learnable_alpha`` / ``model.learnable_tau``, at most one of them):

* ``learnable_alpha``: ``none`` | ``scalar`` | ``population`` (one per E/I) | ``neuron``.
  ``alpha = sigmoid(logit)`` lies in ``(0, 1)`` for every value of the parameter.
* ``learnable_tau``: ``none`` | ``population`` | ``neuron``, with a smooth bound
  ``tau = tau_min + (tau_max - tau_min) * sigmoid(raw)`` (``tau_min`` defaults to
  ``dt`` so that ``alpha < 1``); ``tau_bound="clamp"`` reproduces the lab's hard
  clamp ``tau = clamp(raw, tau_min, tau_max)`` for diagnosis.
* ``freeze``: keep the parametrisation but do not train it (``requires_grad=False``).

:meth:`TimeConstants.alpha` returns a ``[n]`` tensor (one value per unit).
"""
from __future__ import annotations

import math

import torch
from torch import nn

ALPHA_MODES = ("none", "scalar", "population", "neuron")
TAU_MODES = ("none", "population", "neuron")


def _logit(p: float) -> float:
    p = min(max(p, 1e-4), 1 - 1e-4)
    return math.log(p / (1 - p))


class TimeConstants(nn.Module):
    """Per-unit ``alpha`` (``[n]``) for ``n`` units with E/I labels ``is_excitatory``."""

    def __init__(
        self,
        is_excitatory: torch.Tensor,
        dt: float,
        tau: float,
        tau_inh: float | None = None,
        learnable_alpha: str = "none",
        learnable_tau: str = "none",
        tau_min: float | None = None,
        tau_max: float = 500.0,
        tau_bound: str = "smooth",
        freeze: bool = False,
    ):
        super().__init__()
        learnable_alpha = str(learnable_alpha or "none").lower()
        learnable_tau = str(learnable_tau or "none").lower()
        if learnable_alpha not in ALPHA_MODES:
            raise ValueError(f"model.learnable_alpha must be one of {ALPHA_MODES}, got {learnable_alpha!r}")
        if learnable_tau not in TAU_MODES:
            raise ValueError(f"model.learnable_tau must be one of {TAU_MODES}, got {learnable_tau!r}")
        if learnable_alpha != "none" and learnable_tau != "none":
            raise ValueError("set at most one of model.learnable_alpha and model.learnable_tau")
        if tau_bound not in ("smooth", "clamp"):
            raise ValueError(f"model.tau_bound must be 'smooth' or 'clamp', got {tau_bound!r}")
        self.dt = float(dt)
        self.learnable_alpha = learnable_alpha
        self.learnable_tau = learnable_tau
        self.tau_bound = tau_bound
        self.tau_min = float(self.dt if tau_min is None else tau_min)
        self.tau_max = float(tau_max)
        exc = is_excitatory.bool()
        self.register_buffer("is_excitatory", exc.clone(), persistent=False)
        tau_e = float(tau)
        tau_i = float(tau if tau_inh is None else tau_inh)
        n = exc.numel()
        tau_init = torch.where(exc, torch.tensor(tau_e), torch.tensor(tau_i)).float()

        if learnable_alpha == "none" and learnable_tau == "none":
            self.register_buffer("_alpha_fixed", self.dt / tau_init)
        elif learnable_alpha != "none":
            a_e, a_i = self.dt / tau_e, self.dt / tau_i
            if learnable_alpha == "scalar":
                init = torch.tensor([_logit(a_e)])
            elif learnable_alpha == "population":
                init = torch.tensor([_logit(a_e), _logit(a_i)])
            else:
                init = torch.tensor([_logit(a_e) if e else _logit(a_i) for e in exc.tolist()])
            self.alpha_logit = nn.Parameter(init.float(), requires_grad=not freeze)
        else:
            if learnable_tau == "population":
                taus = torch.tensor([tau_e, tau_i])
            else:
                taus = tau_init.clone()
            if tau_bound == "smooth":
                if not (self.tau_min < taus.min() and taus.max() < self.tau_max):
                    raise ValueError(
                        f"initial tau {taus.tolist()} must lie strictly inside (tau_min, tau_max) = "
                        f"({self.tau_min}, {self.tau_max})"
                    )
                frac = (taus - self.tau_min) / (self.tau_max - self.tau_min)
                init = torch.log(frac / (1 - frac))
            else:
                init = taus
            self.tau_raw = nn.Parameter(init.float(), requires_grad=not freeze)
        self.n = n

    def _expand(self, values: torch.Tensor) -> torch.Tensor:
        """Map scalar / (E, I) / per-unit parameters to ``[n]``."""
        if values.numel() == 1:
            return values.expand(self.n)
        if values.numel() == 2 and self.n != 2:
            return torch.where(self.is_excitatory, values[0], values[1])
        return values

    def tau(self) -> torch.Tensor:
        """Time constant per unit in ms, ``[n]`` (``dt / alpha`` for alpha parametrisations)."""
        if self.learnable_tau == "none":
            return self.dt / self.alpha()
        raw = self._expand(self.tau_raw)
        if self.tau_bound == "smooth":
            return self.tau_min + (self.tau_max - self.tau_min) * torch.sigmoid(raw)
        return raw.clamp(self.tau_min, self.tau_max)

    def alpha(self) -> torch.Tensor:
        """``alpha = dt / tau`` per unit, ``[n]``."""
        if self.learnable_alpha == "none" and self.learnable_tau == "none":
            return self._alpha_fixed
        if self.learnable_alpha != "none":
            return torch.sigmoid(self._expand(self.alpha_logit))
        return self.dt / self.tau()

    def summary(self) -> dict[str, float]:
        """Mean ``tau`` and ``alpha`` of E and I units (for logging)."""
        with torch.no_grad():
            a, t = self.alpha(), self.tau()
            exc = self.is_excitatory
            out = {}
            for name, sel in (("E", exc), ("I", ~exc)):
                if sel.any():
                    out[f"alpha_{name}"] = float(a[sel].mean())
                    out[f"tau_{name}"] = float(t[sel].mean())
            return out
