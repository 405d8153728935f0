"""The E-I recurrent network fitted to recordings (the recurrence lives here).

Dynamics (one step per data bin, ``dt`` = bin size, ``alpha = dt / tau``)::

    x[t] = (1 - alpha) * x[t-1] + alpha * (W_rec r[t-1] + W_in e(u[t]) + b) + sigma * sqrt(alpha) * xi[t]
    r[t] = softplus(x[t]) * rate_scale + rate_baseline          # sp/s, >= 0
    y[t] = W_out r_E[t] + b_out                                 # readout from E units only

``xi[t] ~ N(0, I)``; ``e`` is the input embedding (identity or attention, see
:mod:`eirnn.models.embedding`); ``W_rec`` obeys Dale's law and has no self-connections
(:mod:`eirnn.models.connectivity`); ``alpha`` is fixed or learned
(:mod:`eirnn.models.time_constants`).

Units: the first ``n_recorded`` units are the recorded neurons, in recording order and
of the recorded neuron's type (E or I); then ``n_hidden`` hidden units, E first, split
E:I by ``hidden_ei_ratio`` (the lab used 4:1).

Shapes: inputs ``u`` ``[B, T, C]``; rates ``[B, T, n]``; outputs ``[B, T, n_outputs]``.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .connectivity import build_recurrent_weights
from .embedding import build_embedding
from .fastops import RepeatedRows, attention_pool
from .readout import SpikeReadout
from .recurrence import IMPLS as RECURRENCE_IMPLS
from .recurrence import FusedRecurrence
from .time_constants import TimeConstants


class RNNOutput(NamedTuple):
    rates: torch.Tensor  # [B, T, n] firing rates (sp/s)
    outputs: torch.Tensor | None  # [B, T, n_outputs] readout, or None when n_outputs == 0
    states: torch.Tensor | None  # [B, T, n] pre-activations x, when requested


def _inv_softplus(y: float) -> float:
    return float(np.log(np.expm1(y)))


def hidden_split(n_hidden: int, ratio: float) -> tuple[int, int]:
    """Split ``n_hidden`` units into ``(n_E, n_I)`` with ``n_E / n_I ~= ratio``."""
    n_hidden = int(n_hidden)
    if n_hidden <= 0:
        return 0, 0
    n_inh = int(round(n_hidden / (1.0 + float(ratio))))
    return n_hidden - n_inh, n_inh


class EIRNN(nn.Module):
    """Excitatory-inhibitory rate RNN; see the module docstring for the equations.

    Args:
        n_inputs: number of input channels ``C``.
        recorded_is_excitatory: bool ``[n_recorded]``, E/I type of each recorded neuron.
        n_hidden: hidden (unrecorded) units added to the recorded ones.
        n_hidden_per_neuron: if set, ``n_hidden = round(n_hidden_per_neuron * n_recorded)``
            instead, so the network grows and shrinks with the session (issue 15).
        hidden_ei_ratio: E:I ratio of the hidden units.
        dt, tau: step and membrane time constant (ms); ``tau_inh`` for I units (default ``tau``).
        noise_scale: ``sigma`` of the state noise (scaled by ``sqrt(alpha)``).
        spectral_radius: initial spectral radius of ``rate_scale * W_rec`` (the loop gain
            at unit softplus slope), after an exactly E/I-balanced initialisation.
        rank: ``None`` for full rank, else the rank of ``W_rec = U V^T``;
            ``lowrank_dale``: ``product`` or ``factors`` (see connectivity).
        dale: ``False`` gives the unconstrained baseline (no sign constraint).
        input_embedding: ``linear`` or ``attention`` (``embed_dim``, ``n_heads``).
        learnable_h0 / h0_init: initial state ``x[-1]`` (learned, init ``h0_init``) or zeros.
        learnable_alpha, learnable_tau, tau_min, tau_max, tau_bound, freeze_time_constants:
            see :class:`~eirnn.models.time_constants.TimeConstants`.
        rate_scale, rate_baseline: initial values of the positive output scaling.
        n_outputs: readout dimension (0 disables the readout).
        seed: seed of the initialisation.
        recurrence_impl: ``fused`` (one autograd node with a hand-written backward through
            time, :mod:`eirnn.models.recurrence`) or ``autograd`` (the step loop recorded by
            autograd). Same values and gradients up to float round-off.
        init_signs: the unconstrained baseline's (``dale=False``) starting ``W_rec``: ``dale``
            (the E-I matrix of the Dale model, then free) or ``random`` (the same magnitudes
            with random signs); :class:`~eirnn.models.connectivity.FullRankWeights`.
    """

    def __init__(
        self,
        n_inputs: int,
        recorded_is_excitatory,
        n_hidden: int = 39,
        n_hidden_per_neuron: float | None = None,
        hidden_ei_ratio: float = 4.0,
        dt: float = 25.0,
        tau: float = 50.0,
        tau_inh: float | None = None,
        noise_scale: float = 0.1,
        spectral_radius: float = 0.9,
        rank: int | None = None,
        lowrank_dale: str = "product",
        dale: bool = True,
        input_embedding: str = "linear",
        embed_dim: int = 56,
        n_heads: int = 4,
        input_scale: float = 1.0,
        learnable_h0: bool = False,
        h0_init: float = 0.1,
        learnable_alpha: str = "none",
        learnable_tau: str = "none",
        tau_min: float | None = None,
        tau_max: float = 500.0,
        tau_bound: str = "smooth",
        freeze_time_constants: bool = False,
        rate_scale: float = 10.0,
        rate_baseline: float = 0.5,
        n_outputs: int = 2,
        seed: int = 0,
        recurrence_impl: str = "fused",
        init_signs: str = "dale",
    ):
        super().__init__()
        recurrence_impl = str(recurrence_impl).lower()
        if recurrence_impl not in RECURRENCE_IMPLS:
            raise ValueError(f"model.recurrence_impl must be one of {RECURRENCE_IMPLS}, got {recurrence_impl!r}")
        self.recurrence_impl = recurrence_impl
        self._repeated_inputs = RepeatedRows()  # fused path: the input drive once per distinct input row
        g = torch.Generator().manual_seed(int(seed))
        rec_exc = torch.as_tensor(np.asarray(recorded_is_excitatory, dtype=bool))
        if n_hidden_per_neuron is not None:
            if not float(n_hidden_per_neuron) >= 0:
                raise ValueError(f"model.n_hidden_per_neuron must be >= 0 or null, got {n_hidden_per_neuron}")
            n_hidden = int(round(float(n_hidden_per_neuron) * int(rec_exc.numel())))
        n_he, n_hi = hidden_split(n_hidden, hidden_ei_ratio)
        is_exc = torch.cat([rec_exc, torch.ones(n_he, dtype=torch.bool), torch.zeros(n_hi, dtype=torch.bool)])
        self.n_inputs = int(n_inputs)
        self.n_recorded = int(rec_exc.numel())
        self.n_units = int(is_exc.numel())
        self.dt = float(dt)
        self.noise_scale = float(noise_scale)
        self.register_buffer("is_excitatory", is_exc)
        self.register_buffer("exc_index", torch.nonzero(is_exc).flatten(), persistent=False)
        # observation model of the recorded units' spikes, fitted after training (identity until then)
        self.spike_readout = SpikeReadout(self.n_recorded)

        # gain 1/(rate_scale sqrt(n)): raw weights O(1) per entry while W_rec acts on rates in
        # sp/s, so an optimiser step of size lr changes W_rec by ~lr relative to its entries
        # (a coherent step over all entries of a balanced E-I matrix moves its uniform-mode
        # eigenvalue by ~n * step * gain; with gain 1/rate_scale alone, Adam at lr 1e-3 pushed
        # the spectral radius past 1 within two steps on the real session).
        self.recurrent = build_recurrent_weights(
            is_exc, rank=rank, dale=dale, lowrank_dale=lowrank_dale, generator=g,
            gain=1.0 / (float(rate_scale) * float(np.sqrt(self.n_units))), init_signs=str(init_signs),
        )
        self.recurrent.set_spectral_radius_(float(spectral_radius) / float(rate_scale))
        self.embedding = build_embedding(input_embedding, self.n_inputs, embed_dim, n_heads, generator=g)
        d_in = self.embedding.out_dim
        self.W_in = nn.Parameter(torch.randn(self.n_units, d_in, generator=g) * (float(input_scale) / np.sqrt(d_in)))
        self.bias = nn.Parameter(torch.zeros(self.n_units))
        self.time_constants = TimeConstants(
            is_exc, dt=dt, tau=tau, tau_inh=tau_inh, learnable_alpha=learnable_alpha, learnable_tau=learnable_tau,
            tau_min=tau_min, tau_max=tau_max, tau_bound=tau_bound, freeze=freeze_time_constants,
        )
        if learnable_h0:
            self.h0 = nn.Parameter(torch.full((self.n_units,), float(h0_init)))
        else:
            self.register_buffer("h0", torch.zeros(self.n_units))
        self._rate_scale = nn.Parameter(torch.tensor(_inv_softplus(rate_scale)))
        self._rate_baseline = nn.Parameter(torch.tensor(_inv_softplus(max(rate_baseline, 1e-4))))
        self.n_outputs = int(n_outputs)
        if self.n_outputs > 0:
            n_exc = int(is_exc.sum())
            self.W_out = nn.Parameter(torch.randn(self.n_outputs, n_exc, generator=g) / np.sqrt(max(n_exc, 1)) * 0.1)
            self.b_out = nn.Parameter(torch.zeros(self.n_outputs))

    # ------------------------------------------------------------------ weights
    @property
    def W_rec(self) -> torch.Tensor:
        """Effective recurrent matrix ``[n, n]`` (Dale's law and zero diagonal applied)."""
        return self.recurrent.weight()

    @property
    def rate_scale(self) -> torch.Tensor:
        return F.softplus(self._rate_scale)

    @property
    def rate_baseline(self) -> torch.Tensor:
        return F.softplus(self._rate_baseline)

    def alpha(self) -> torch.Tensor:
        """``[n]`` integration constants ``dt / tau``."""
        return self.time_constants.alpha()

    def rate(self, x: torch.Tensor) -> torch.Tensor:
        """``r = softplus(x) * rate_scale + rate_baseline``."""
        return F.softplus(x) * self.rate_scale + self.rate_baseline

    def regularized_weights(self) -> list[torch.Tensor]:
        """Weights penalised by ``L_reg``: ``W_rec`` and ``W_in``."""
        return [self.W_rec, self.W_in]

    def input_drive(self, u: torch.Tensor) -> torch.Tensor:
        """``W_in e(u[t]) + b`` for all steps at once: ``[B, T, C] -> [B, T, n]``."""
        return torch.matmul(self.embedding(u), self.W_in.T) + self.bias

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        u: torch.Tensor,
        noise: bool = True,
        generator: torch.Generator | None = None,
        return_states: bool = False,
        noise_sample: torch.Tensor | None = None,
    ) -> RNNOutput:
        """Run the network on inputs ``u`` ``[B, T, C]``; returns :class:`RNNOutput`.

        The state noise is ``xi ~ N(0, I)`` ``[B, T, n]`` drawn from ``generator``, or
        ``noise_sample`` when given (the same draw, made earlier: ``torch.randn((B, T, n))``).
        """
        if u.dim() != 3 or u.shape[-1] != self.n_inputs:
            raise ValueError(f"inputs must be [batch, time, {self.n_inputs}], got {tuple(u.shape)}")
        B = u.shape[0]
        alpha = self.alpha()  # [n]
        decay = 1.0 - alpha
        w_t = (self.W_rec * alpha[:, None]).T  # r @ w_t == alpha * (W_rec r)
        scale, base = self.rate_scale, self.rate_baseline
        if self.recurrence_impl == "fused":
            # The drive alpha * (W_in e + b) = e (alpha W_in)^T + alpha b, time-major [T, B, n] or, for
            # an input tensor seen before, once per distinct input row [U, n] with the row index inv [T, B].
            T = u.shape[1]
            u_tm = u.transpose(0, 1).contiguous()  # [T, B, C]
            w_in_t = (self.W_in * alpha[:, None]).T  # [d, n]
            rows = u_tm.view(T * B, -1)
            inv = None
            if hasattr(self.embedding, "pool_factors"):  # attention: W_in folded into the value maps
                qa, qb, vab = self.embedding.pool_factors()
                seen = self._repeated_inputs.lookup(rows, u)  # same tensor as before: its distinct rows
                if seen is not None:
                    rows, inv = seen[0], seen[1].view(T, B)
                drive = attention_pool(rows, qa, qb, vab @ w_in_t, alpha * self.bias)
            else:
                drive = torch.addmm(alpha * self.bias, self.embedding(rows), w_in_t)
            if inv is None:
                drive = drive.view(T, B, self.n_units)
            xi = coef = None
            if noise and self.noise_scale > 0:
                # drawn [B, T, n] as in the autograd path: same noise for the same generator state
                xi = self._noise(noise_sample, (B, T, self.n_units), generator, drive)
                coef = self.noise_scale * alpha.sqrt()
            h0 = self.h0.to(drive.dtype)
            need = torch.is_grad_enabled() and any(
                t is not None and t.requires_grad for t in (drive, w_t, decay, scale, base, h0, coef))
            rates_tm, states_tm = FusedRecurrence.apply(
                drive, inv, xi, coef, w_t, decay, scale, base, h0, bool(return_states), need
            )  # time-major [T, B, n]
            rates_t = rates_tm.transpose(0, 1)  # [B, T, n] views
            states_t = None if states_tm is None else states_tm.transpose(0, 1)
        else:
            # Everything that does not depend on the state is computed before the loop.
            inp = alpha * self.input_drive(u)  # [B, T, n]
            if noise and self.noise_scale > 0:
                xi = self._noise(noise_sample, tuple(inp.shape), generator, inp)
                inp = inp + (self.noise_scale * alpha.sqrt()) * xi
            x = self.h0.expand(B, self.n_units)
            r = F.softplus(x) * scale + base
            rates, states = [], []
            # unbind (one backward op for all steps), not inp[:, t]: the backward of each
            # indexing op would materialise a zero tensor of the whole [B, T, n] input.
            for inp_t in inp.unbind(1):
                x = torch.addmm(inp_t, r, w_t) + decay * x
                r = F.softplus(x) * scale + base
                rates.append(r)
                if return_states:
                    states.append(x)
            rates_t = torch.stack(rates, dim=1)
            states_t = torch.stack(states, dim=1) if return_states else None
        outputs = None
        if self.n_outputs > 0:
            # y = W_out r_E + b_out as one product with W_out scattered onto the E columns
            # (index_select along the unit axis of a [B, T, n] tensor is very slow on CPU).
            w_full = self.W_out.new_zeros((self.n_outputs, self.n_units)).index_copy(1, self.exc_index, self.W_out)
            if self.recurrence_impl == "fused":
                outputs = F.linear(rates_tm, w_full, self.b_out).transpose(0, 1)
            else:
                outputs = F.linear(rates_t, w_full, self.b_out)
        return RNNOutput(rates_t, outputs, states_t)

    @staticmethod
    def _noise(sample, shape, generator, like):
        if sample is None:
            return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)
        if tuple(sample.shape) != tuple(shape):
            raise ValueError(f"noise_sample must be {tuple(shape)}, got {tuple(sample.shape)}")
        return sample.to(device=like.device, dtype=like.dtype)

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def describe(self) -> str:
        """One line: units by role and type, connectivity, trainable parameter count."""
        exc, n_rec = self.is_excitatory, self.n_recorded
        rank = getattr(self.recurrent, "rank", None)
        conn = "full rank" if rank is None else f"rank {rank} ({self.recurrent.mode})"
        return (
            f"EIRNN, {self.n_units} units ({n_rec} recorded: {int(exc[:n_rec].sum())} E / {int((~exc[:n_rec]).sum())} I; "
            f"{self.n_units - n_rec} hidden: {int(exc[n_rec:].sum())} E / {int((~exc[n_rec:]).sum())} I), "
            f"W_rec {conn}{'' if self.recurrent.dale else ', no Dale constraint'}, "
            f"{type(self.embedding).__name__}, {self.n_parameters()} trainable parameters"
        )
