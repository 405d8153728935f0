"""Integrators for ``dx/dt = field(x, d)`` with a zero-order-hold input drive.

The input is given on a regular grid of bins of width ``input_dt``: bin ``k`` covers
``[k * input_dt, (k+1) * input_dt)`` and during it the drive is the constant ``d_k``
(zero-order hold).  Every integrator returns the state at the END of each bin,
``x((k+1) * input_dt)``, as a tensor ``[B, T, N]`` (T bins), so the three methods
approximate the same trajectory and can be compared point by point:

- ``euler``: ``n_sub`` steps of ``x <- x + h field(x, d_k)`` per bin, ``h = input_dt / n_sub``
  (first order: the error falls like ``h``);
- ``rk4``: ``n_sub`` classical Runge-Kutta steps per bin (``d_k`` held for all four stages;
  the field is smooth within a bin, so the error falls like ``h^4``);
- ``adaptive``: :func:`torchdiffeq.odeint` (default ``dopri5``) with every bin edge declared
  as a jump (``jump_t``), so no step straddles a change of input; gradients flow through
  the solver's operations, or through the adjoint ODE with ``adjoint=True``.

Shapes: ``x0`` [B, N]; ``drive`` [B, T, N] (Euler/RK4) or a callable ``drive_at(k)`` ->
[B, N] (adaptive, so that the drive can be recomputed from parameters inside the solve).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

Field = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

METHODS = ("euler", "rk4", "adaptive")


def euler(field: Field, x0: torch.Tensor, drive: torch.Tensor, h: float, n_sub: int = 1) -> torch.Tensor:
    """Forward Euler, ``n_sub`` steps of size ``h`` per input bin -> states at bin ends [B, T, N]."""
    x, out = x0, []
    for d in drive.unbind(1):  # unbind: a single backward stack instead of a full-size zero tensor per bin
        for _ in range(n_sub):
            x = x + h * field(x, d)
        out.append(x)
    return torch.stack(out, 1)


def rk4(field: Field, x0: torch.Tensor, drive: torch.Tensor, h: float, n_sub: int = 1) -> torch.Tensor:
    """Classical RK4, ``n_sub`` steps of size ``h`` per input bin -> states at bin ends [B, T, N]."""
    x, out = x0, []
    for d in drive.unbind(1):  # unbind: a single backward stack instead of a full-size zero tensor per bin
        for _ in range(n_sub):
            k1 = field(x, d)
            k2 = field(x + 0.5 * h * k1, d)
            k3 = field(x + 0.5 * h * k2, d)
            k4 = field(x + h * k3, d)
            x = x + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
        out.append(x)
    return torch.stack(out, 1)


class _ZOHField(nn.Module):
    """``f(t, x) = field(x, drive_at(k(t)))`` with ``k(t)`` the bin containing ``t``.

    Bins are right-continuous (``t = k * input_dt`` belongs to bin ``k``); the solver
    evaluates just after / just before a declared jump, so each step sees one bin only.
    """

    def __init__(self, field: Field, drive_at: Callable[[int], torch.Tensor], edges: torch.Tensor, n_bins: int,
                 params: Sequence[torch.Tensor] = ()):
        super().__init__()
        self.field, self.drive_at, self.n_bins = field, drive_at, n_bins
        self.register_buffer("edges", edges, persistent=False)
        self._params = nn.ParameterList([p for p in params if isinstance(p, nn.Parameter)])
        self.n_evals = 0

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        self.n_evals += 1
        k = int(torch.searchsorted(self.edges.to(t.dtype), t.reshape(1), right=True)) - 1
        return self.field(x, self.drive_at(min(max(k, 0), self.n_bins - 1)))


def adaptive(field: Field, x0: torch.Tensor, drive_at: Callable[[int], torch.Tensor], n_bins: int,
             input_dt: float, method: str = "dopri5", rtol: float = 1e-6, atol: float = 1e-8,
             adjoint: bool = False, params: Sequence[torch.Tensor] = ()) -> torch.Tensor:
    """Adaptive solve with torchdiffeq over ``n_bins`` bins -> states at bin ends [B, T, N].

    ``params``: the parameters the field depends on (needed by the adjoint method).
    """
    try:
        import torchdiffeq
    except ImportError as err:  # pragma: no cover - the `ode` extra
        raise ImportError("integrator 'adaptive' needs torchdiffeq (pip install 'eirnn[ode]')") from err
    edges = torch.arange(n_bins + 1, dtype=x0.dtype, device=x0.device) * float(input_dt)
    func = _ZOHField(field, drive_at, edges, n_bins, params)
    options = {"jump_t": edges[1:-1]} if n_bins > 1 else {}
    if adjoint:
        ps = tuple(p for p in params if p.requires_grad)
        xs = torchdiffeq.odeint_adjoint(func, x0, edges, rtol=rtol, atol=atol, method=method, options=options,
                                        adjoint_params=ps)
    else:
        xs = torchdiffeq.odeint(func, x0, edges, rtol=rtol, atol=atol, method=method, options=options)
    return xs[1:].transpose(0, 1)


def substeps(input_dt: float, dt: float) -> int:
    """Number of integration steps per input bin; ``dt`` must divide ``input_dt``."""
    if dt <= 0 or input_dt <= 0:
        raise ValueError(f"dt must be > 0 (got dt={dt}, data dt={input_dt})")
    n = round(input_dt / dt)
    if n < 1 or abs(n * dt - input_dt) > 1e-6 * input_dt:
        raise ValueError(f"dt={dt} must divide the data's time step {input_dt} (e.g. dt={input_dt / max(n, 1)})")
    return int(n)
