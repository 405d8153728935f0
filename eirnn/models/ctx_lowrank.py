"""Trainable low-rank RNN with a fixed random bulk (Mastrogiuseppe & Ostojic 2018).

Dynamics and readout (N units, rank R, phi = tanh)::

    tau dx/dt = -x + J phi(x) + B u(t),     J = g C + (1/N) M N^T
    y(t)      = (1/N) w^T phi(x(t)) + b

Shapes: ``C`` [N, N] fixed random bulk, entries ~ N(0, 1/N) -- a registered buffer (saved in
the ``state_dict``, never trained); ``M``, ``N`` [N, R], ``B`` [N, n_inputs], ``w``
[N, n_outputs], ``b`` [n_outputs] are trained (O(N R) parameters).  ``J phi`` is computed as
``g phi C^T + ((phi N) M^T) / N`` without forming ``J``.

Inputs ``u`` [B, T, n_inputs] are held constant over bins of width ``input_dt`` (the data's
time step); ``integrator`` = euler | rk4 (``dt`` must divide ``input_dt``) | adaptive
(torchdiffeq, ``method``/``rtol``/``atol``, optional ``adjoint``).  The forward pass returns the
readout at the end of every bin, [B, T, n_outputs] (and the states x, [B, T, N], on request).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from eirnn.models import integrators as ode


@dataclass
class TaskOutput:
    """``output`` [B, T, n_out] readout at bin ends; ``states`` [B, T, N] (x, or None)."""

    output: torch.Tensor
    states: Optional[torch.Tensor] = None


class LowRankRNN(nn.Module):
    """Continuous-time rank-R RNN on a fixed random bulk; see the module docstring.

    Args:
        n_units: N. rank: R. n_inputs / n_outputs: input channels / readouts.
        g: bulk gain. tau: time constant (same time unit as the data's ``dt``).
        dt: integration step (Euler/RK4); must divide ``input_dt``. input_dt: the data's step.
        integrator: euler | rk4 | adaptive. method, rtol, atol, adjoint: adaptive solver settings.
        init_std_mn: std of the entries of M and N at initialisation (O(1), so J's structured
            part starts at O(1/sqrt(N))). init_std_input: std of B's entries. init_std_readout:
            std of w's entries. x0: initial state, ``zero`` (the only option: trials begin at rest
            and the burn-in lets the context settle).
        seed: seeds C and the initial parameters.
    """

    def __init__(self, n_units: int = 500, rank: int = 2, n_inputs: int = 4, n_outputs: int = 1,
                 g: float = 0.8, tau: float = 1.0, dt: Optional[float] = None, input_dt: Optional[float] = None,
                 integrator: str = "euler", method: str = "dopri5", rtol: float = 1e-6, atol: float = 1e-8,
                 adjoint: bool = False, init_std_mn: float = 1.0, init_std_input: float = 1.0,
                 init_std_readout: float = 1.0, x0: str = "zero", seed: int = 0):
        super().__init__()
        if int(n_units) < 1 or int(rank) < 1 or int(n_inputs) < 1 or int(n_outputs) < 1:
            raise ValueError(f"n_units, rank, n_inputs, n_outputs must be >= 1 (got {n_units}, {rank}, {n_inputs}, {n_outputs})")
        if integrator not in ode.METHODS:
            raise ValueError(f"integrator must be one of {ode.METHODS}, got {integrator!r}")
        if float(tau) <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        if x0 != "zero":
            raise ValueError(f"x0 must be 'zero', got {x0!r}")
        input_dt = float(input_dt if input_dt is not None else (dt if dt is not None else 0.5))
        dt = float(dt if dt is not None else input_dt)
        self.n_sub = ode.substeps(input_dt, dt) if integrator != "adaptive" else 1
        self.config = dict(n_units=int(n_units), rank=int(rank), n_inputs=int(n_inputs), n_outputs=int(n_outputs),
                           g=float(g), tau=float(tau), dt=dt, input_dt=input_dt, integrator=integrator,
                           method=method, rtol=float(rtol), atol=float(atol), adjoint=bool(adjoint),
                           init_std_mn=float(init_std_mn), init_std_input=float(init_std_input),
                           init_std_readout=float(init_std_readout), x0=x0, seed=int(seed))
        self.n_units, self.rank, self.g, self.tau = int(n_units), int(rank), float(g), float(tau)
        self.dt, self.input_dt, self.integrator = dt, input_dt, integrator
        self.method, self.rtol, self.atol, self.adjoint = method, float(rtol), float(atol), bool(adjoint)
        gen = torch.Generator().manual_seed(int(seed))
        n = self.n_units
        self.register_buffer("C", torch.randn(n, n, generator=gen) / n ** 0.5)
        self.M = nn.Parameter(torch.randn(n, self.rank, generator=gen) * init_std_mn)
        self.N = nn.Parameter(torch.randn(n, self.rank, generator=gen) * init_std_mn)
        self.B = nn.Parameter(torch.randn(n, int(n_inputs), generator=gen) * init_std_input)
        self.w = nn.Parameter(torch.randn(n, int(n_outputs), generator=gen) * init_std_readout)
        self.b = nn.Parameter(torch.zeros(int(n_outputs)))

    # ------------------------------------------------------------------ parts
    def recurrent(self, phi: torch.Tensor) -> torch.Tensor:
        """``J phi`` for a batch of rates [B, N]: ``g phi C^T + (phi N) M^T / N``."""
        low = (phi @ self.N) @ self.M.t() / self.n_units
        return torch.addmm(low, phi, self.C.t(), alpha=self.g)

    def field(self, x: torch.Tensor, drive: torch.Tensor) -> torch.Tensor:
        """``dx/dt = (-x + J phi(x) + drive) / tau`` with ``drive = B u`` [B, N]."""
        return (self.recurrent(torch.tanh(x)) + drive - x) / self.tau

    def readout(self, states: torch.Tensor) -> torch.Tensor:
        """``y = (1/N) phi(x) w + b`` for states [..., N] -> [..., n_outputs]."""
        return torch.tanh(states) @ self.w / self.n_units + self.b

    def connectivity(self) -> torch.Tensor:
        """The full ``J = g C + M N^T / N`` [N, N] (for analysis; never used in the forward pass)."""
        return self.g * self.C + self.M @ self.N.t() / self.n_units

    # ---------------------------------------------------------------- forward
    def forward(self, inputs: torch.Tensor, return_states: bool = False, x0: Optional[torch.Tensor] = None,
                integrator: Optional[str] = None) -> TaskOutput:
        """Integrate over the input bins; ``inputs`` [B, T, n_inputs] -> :class:`TaskOutput`."""
        method = integrator or self.integrator
        bsz, n_bins, _ = inputs.shape
        x = inputs.new_zeros(bsz, self.n_units) if x0 is None else x0
        if method == "adaptive":
            B = self.B
            xs = ode.adaptive(self.field, x, lambda k: inputs[:, k] @ B.t(), n_bins, self.input_dt,
                              method=self.method, rtol=self.rtol, atol=self.atol, adjoint=self.adjoint,
                              params=list(self.parameters()))
        else:
            drive = inputs @ self.B.t()  # [B, T, N], computed once
            if method not in ("euler", "rk4"):
                raise ValueError(f"integrator must be one of {ode.METHODS}, got {method!r}")
            n_sub = ode.substeps(self.input_dt, self.dt)  # (dt may have been changed after construction)
            step = ode.euler if method == "euler" else ode.rk4
            xs = step(self.field, x, drive, self.input_dt / n_sub, n_sub)
        return TaskOutput(self.readout(xs), xs if return_states else None)

    # ------------------------------------------------------------- reporting
    def n_parameters(self) -> dict[str, int]:
        """Trainable and fixed (buffer) parameter counts."""
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        fixed = sum(b.numel() for b in self.buffers())
        return {"trainable": int(trainable), "fixed": int(fixed)}

    def describe(self) -> str:
        c = self.n_parameters()
        solver = (f"{self.integrator} dt={self.dt:g} ({self.n_sub} step(s) per input bin {self.input_dt:g})"
                  if self.integrator != "adaptive" else f"adaptive {self.method} rtol={self.rtol:g} atol={self.atol:g}"
                  + (" adjoint" if self.adjoint else ""))
        return (f"LowRankRNN N={self.n_units} R={self.rank} g={self.g:g} tau={self.tau:g}; {solver}; "
                f"trainable params {c['trainable']} (M, N, B, w, b), fixed {c['fixed']} (bulk C)")

    def extra_repr(self) -> str:
        return f"N={self.n_units}, R={self.rank}, g={self.g}, tau={self.tau}, integrator={self.integrator}"


def constructor_config(model: nn.Module) -> dict[str, Any]:
    """``{"target": "module.Class", "kwargs": {...}}`` to rebuild ``model`` (see eirnn.analysis.common)."""
    cls = type(model)
    return {"target": f"{cls.__module__}.{cls.__qualname__}", "kwargs": dict(getattr(model, "config", {}))}
