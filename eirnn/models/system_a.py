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

from typing import Optional, Sequence

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


# ----------------------------------------------------------------------------- K members stacked
_SAME = ("n_units", "n_inputs", "n_outputs", "tau", "dt", "g_G", "h0", "impl")


# ----------------------------------------------------------------------------- model
STRATEGIES = ("auto", "bmm", "loop")


class SystemAEnsembleRNN(nn.Module):
    """``K`` :class:`SystemARNN` stacked; ``forward(inputs [K, B, T, n_in]) -> output [K, B, T, n_out]``.

    Member ``k`` computes exactly ``members[k](inputs[k])`` (the same equations).  ``strategy``:

    - ``bmm``: one recurrence over all members, a batched ``baddbmm`` per time step;
    - ``loop``: the fused single-model recurrence once per member, inside the same forward
      (the single model's own kernels, so bit-for-bit its arithmetic);
    - ``auto`` (default): ``loop`` on a CPU when ``N >= 256``, else ``bmm``.  On one CPU core
      ``bmm`` was 1.45x faster at K=20, N=100 (the products are small, the per-step overhead
      is shared) and ``loop`` 1.2x faster at K=4, N=500 (compute-bound; one member's weights
      stay in cache); see experiments/tasks.md.

    ``impl="autograd"`` members run the batched plain autograd loop.
    """

    def __init__(self, members: Sequence[SystemARNN], strategy: str = "auto"):
        super().__init__()
        if strategy not in STRATEGIES:
            raise ValueError(f"ensemble strategy must be one of {STRATEGIES}, got {strategy!r}")
        self.strategy = strategy
        members = list(members)
        if not members or not all(isinstance(m, SystemARNN) for m in members):
            raise ValueError("SystemAEnsembleRNN needs one or more SystemARNN members")
        ref = members[0].config
        for m in members[1:]:
            diff = [k for k in _SAME if m.config[k] != ref[k]]
            if diff:
                raise ValueError(f"ensemble members must share {', '.join(diff)}")
        self.size = len(members)
        self.member_configs = [dict(m.config) for m in members]
        self.seeds = [int(c["seed"]) for c in self.member_configs]
        self.n_units, self.tau, self.dt, self.g_G = members[0].n_units, members[0].tau, members[0].dt, members[0].g_G
        self.alpha, self.impl = members[0].alpha, members[0].impl
        self.config = {"members": self.member_configs}
        self.register_buffer("G", torch.stack([m.G.detach() for m in members]).clone())
        self.register_buffer("h0", torch.stack([m.h0.detach() for m in members]).clone())
        self.I = nn.Parameter(torch.stack([m.I.detach() for m in members]).clone())
        self.w = nn.Parameter(torch.stack([m.w.detach() for m in members]).clone())

    def forward(self, inputs: torch.Tensor, return_states: bool = False) -> TaskOutput:
        """``inputs`` [K, B, T, n_in] -> output [K, B, T, n_out] (and h [K, B, T, N] on request)."""
        if inputs.dim() != 4 or inputs.shape[0] != self.size:
            raise ValueError(f"inputs must be [K={self.size}, B, T, n_inputs], got {tuple(inputs.shape)}")
        a = self.alpha
        h0 = self.h0.to(inputs.dtype)[:, None, :]  # [K, 1, N]
        if self.impl == "fused" and self.resolved_strategy(inputs.device) == "loop":
            res = [tanh_rnn(inputs[k].transpose(0, 1), (a * self.I[k]).t(), (a * self.g_G) * self.G[k].t(), self.w[k],
                            h0[k, 0], 1.0 - a, return_states) for k in range(self.size)]
            y = torch.stack([r[0] for r in res], 1)                     # [T, K, B, n_out]
            x = torch.stack([r[1] for r in res], 1) if return_states else None
            return TaskOutput(y.permute(1, 2, 0, 3), None if x is None else x.permute(1, 2, 0, 3))
        if self.impl == "fused":
            y, x = tanh_rnn(inputs.permute(2, 0, 1, 3), (a * self.I).transpose(1, 2),
                            (a * self.g_G) * self.G.transpose(1, 2), self.w, h0, 1.0 - a, return_states)
            return TaskOutput(y.permute(1, 2, 0, 3), None if x is None else x.permute(1, 2, 0, 3))
        h = h0.expand(self.size, inputs.shape[1], self.n_units)
        drive = (a * inputs) @ self.I.transpose(1, 2)            # [K, B, T, N]
        rec = (a * self.g_G) * self.G.transpose(1, 2)
        r, outs, states = torch.tanh(h), [], []
        for d_t in drive.unbind(2):
            h = torch.baddbmm(torch.add(d_t, h, alpha=1.0 - a), r, rec)
            r = torch.tanh(h)
            outs.append(torch.bmm(r, self.w))
            if return_states:
                states.append(h)
        return TaskOutput(torch.stack(outs, 2), torch.stack(states, 2) if return_states else None)

    def resolved_strategy(self, device: torch.device) -> str:
        """``bmm`` or ``loop`` (what ``auto`` means on ``device``; see the class docstring)."""
        if self.strategy != "auto":
            return self.strategy
        return "loop" if torch.device(device).type == "cpu" and self.n_units >= 256 else "bmm"

    def member_state_dict(self, k: int) -> dict[str, torch.Tensor]:
        """Member ``k``'s weights as a :class:`SystemARNN` state dict (copies)."""
        return {"G": self.G[k].detach().clone(), "h0": self.h0[k].detach().clone(),
                "I": self.I[k].detach().clone(), "w": self.w[k].detach().clone()}

    def member(self, k: int) -> SystemARNN:
        """A standalone :class:`SystemARNN` holding member ``k``'s current weights."""
        m = SystemARNN(**self.member_configs[k])
        m.load_state_dict(self.member_state_dict(k))
        return m

    def n_parameters(self) -> dict[str, int]:
        return {"trainable": int(sum(p.numel() for p in self.parameters() if p.requires_grad)),
                "fixed": int(sum(b.numel() for b in self.buffers()))}

    def describe(self) -> str:
        c = self.n_parameters()
        return (f"SystemAEnsembleRNN: {self.size} x SystemARNN N={self.n_units} tau={self.tau:g} ms dt={self.dt:g} ms "
                f"g_G={self.g_G:g} (seeds {self.seeds[0]}..{self.seeds[-1]}; strategy {self.strategy}, on a CPU "
                f"{self.resolved_strategy(torch.device('cpu'))}); trainable params {c['trainable']} "
                f"({c['trainable'] // self.size} per member), fixed {c['fixed']}")
