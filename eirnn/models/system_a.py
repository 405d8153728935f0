"""System A network (lab README 004): continuous-time RNN with a fixed random recurrent
matrix, trained input and output weights.

Dynamics (Euler, one step per input sample; ``a = dt / tau``) and output::

    h(t+dt) = h(t) + a * (-h(t) + g_G tanh(h(t)) G^T + u(t) I^T)
    y(t)    = tanh(h(t+dt)) w                      (read after the update of step t)

Shapes: ``G`` [N, N] fixed, entries ~ N(0, 1/N) (a buffer: in the ``state_dict``, never
trained); ``I`` [N, n_inputs] and ``w`` [N, n_outputs] trained; ``h0`` [N] fixed buffer (zero,
or ~ N(0, h0_std^2) with ``h0="random"``).

The recurrence runs in one autograd node with a hand-written backward through time
(:func:`eirnn.models.tanh_recurrence.tanh_rnn`, ``impl="fused"``, the default): per step one
in-place ``addmm`` (``(1-a) h + tanh(h) (a g_G G^T)``), the input term ``u (a I^T)`` only on
steps with a non-zero input, one ``tanh``; the readout ``tanh(h) w`` is one product after the
loop.  Only the rates ``tanh(h)`` are kept for the backward pass.  ``impl="autograd"`` is the
same computation as a plain autograd loop (the reference of the tests).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from eirnn.models.ctx_lowrank import TaskOutput
from eirnn.models.tanh_recurrence import tanh_rnn

IMPLS = ("fused", "autograd")


class SystemARNN(nn.Module):
    """See the module docstring.

    Args:
        n_units: N (500). n_inputs, n_outputs: 1 and 1 in the task. tau, dt: ms (100, 1).
        g_G: gain of the random matrix (1.5, chaotic regime). h0: ``zero`` | ``random``.
        h0_std: std of the random initial state. init_std_input: std of I's entries (1.0).
        init_std_readout: std of w's entries (null = 1/sqrt(N), an O(1) initial output).
        seed: seeds G, h0 and the initial I and w.
        impl: ``fused`` (one autograd node, default) | ``autograd`` (plain loop; same maths).
    """

    def __init__(self, n_units: int = 500, n_inputs: int = 1, n_outputs: int = 1, tau: float = 100.0,
                 dt: Optional[float] = None, input_dt: Optional[float] = None, g_G: float = 1.5, h0: str = "zero",
                 h0_std: float = 1.0, init_std_input: float = 1.0, init_std_readout: Optional[float] = None,
                 seed: int = 0, impl: str = "fused"):
        super().__init__()
        dt = float(dt if dt is not None else (input_dt if input_dt is not None else 1.0))
        if input_dt is not None and abs(float(input_dt) - dt) > 1e-9 * dt:
            raise ValueError(f"dt={dt} must equal the data's time step {input_dt} (one Euler step per sample)")
        if int(n_units) < 1 or float(tau) <= 0 or dt <= 0 or dt > float(tau):
            raise ValueError(f"need n_units >= 1 and 0 < dt <= tau (got n_units={n_units}, dt={dt}, tau={tau})")
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        if h0 not in ("zero", "random"):
            raise ValueError(f"h0 must be 'zero' or 'random', got {h0!r}")
        n = int(n_units)
        std_w = float(init_std_readout) if init_std_readout is not None else n ** -0.5
        self.config = dict(n_units=n, n_inputs=int(n_inputs), n_outputs=int(n_outputs), tau=float(tau), dt=dt,
                           input_dt=dt, g_G=float(g_G), h0=h0, h0_std=float(h0_std),
                           init_std_input=float(init_std_input), init_std_readout=std_w, seed=int(seed), impl=impl)
        self.n_units, self.tau, self.dt, self.g_G = n, float(tau), dt, float(g_G)
        self.alpha = dt / self.tau
        self.impl = impl
        gen = torch.Generator().manual_seed(int(seed))
        self.register_buffer("G", torch.randn(n, n, generator=gen) / n ** 0.5)
        h0_vec = torch.randn(n, generator=gen) * float(h0_std)
        self.register_buffer("h0", h0_vec if h0 == "random" else torch.zeros(n))
        self.I = nn.Parameter(torch.randn(n, int(n_inputs), generator=gen) * float(init_std_input))
        self.w = nn.Parameter(torch.randn(n, int(n_outputs), generator=gen) * std_w)

    def forward(self, inputs: torch.Tensor, return_states: bool = False, h0: Optional[torch.Tensor] = None) -> TaskOutput:
        """``inputs`` [B, T, n_inputs] -> output [B, T, n_outputs] (and h [B, T, N] on request)."""
        a = self.alpha
        h0 = (self.h0 if h0 is None else h0).to(inputs.dtype)
        if self.impl == "fused":
            y, x = tanh_rnn(inputs.transpose(0, 1), (a * self.I).t(), (a * self.g_G) * self.G.t(), self.w, h0,
                            1.0 - a, return_states)
            return TaskOutput(y.transpose(0, 1), None if x is None else x.transpose(0, 1))
        return self._forward_autograd(inputs, return_states, h0)

    def _forward_autograd(self, inputs: torch.Tensor, return_states: bool, h0: torch.Tensor) -> TaskOutput:
        """The same recurrence as a plain autograd loop (``impl="autograd"``)."""
        a = self.alpha
        h = h0.expand(inputs.shape[0], self.n_units)
        drive = (a * inputs) @ self.I.t()                       # [B, T, N]
        rec = (a * self.g_G) * self.G.t()                        # [N, N]
        outs, states = [], []
        r = torch.tanh(h)
        for d_t in drive.unbind(1):  # unbind: one backward stack, not one [B, T, N] zero tensor per step
            h = torch.addmm(torch.add(d_t, h, alpha=1.0 - a), r, rec)
            r = torch.tanh(h)
            outs.append(r @ self.w)
            if return_states:
                states.append(h)
        out = torch.stack(outs, 1)
        return TaskOutput(out, torch.stack(states, 1) if return_states else None)

    def rates(self, inputs: torch.Tensor, h0: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Firing rates ``tanh(h)`` [B, T, N] (no gradient)."""
        with torch.no_grad():
            return torch.tanh(self.forward(inputs, return_states=True, h0=h0).states)

    def n_parameters(self) -> dict[str, int]:
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return {"trainable": int(trainable), "fixed": int(sum(b.numel() for b in self.buffers()))}

    def describe(self) -> str:
        c = self.n_parameters()
        return (f"SystemARNN N={self.n_units} tau={self.tau:g} ms dt={self.dt:g} ms g_G={self.g_G:g} "
                f"h0={self.config['h0']}; trainable params {c['trainable']} (I, w), fixed {c['fixed']} (G, h0)")
