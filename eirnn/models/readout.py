"""Spike readout: the observation model from a network's rates to its predicted spike rates.

The E-I network's recorded units are firing rates ``r`` (sp/s), fitted by losses that
leave each neuron's single-trial rate *scale* loosely held (the PSTH correlation is blind
to it). Spike counts are modelled as ``k ~ Poisson(lambda dt)`` with, per recorded neuron,

    lambda_n = max(gain_n * r_n + offset_n, floor),        gain_n >= 0

``(gain, offset)`` are fitted after training, by Poisson maximum likelihood on the
*training* trials from the model's expected rates for them
(:func:`eirnn.calibration.fit_affine_calibration`, convex; :mod:`eirnn.fit_readout`):
a Poisson GLM readout of the fitted network, two numbers per neuron. Until it is fitted
the readout is the identity. It is not part of the recurrence and never enters a
training loss (``model(...)`` returns the network's rates unchanged); evaluation and
export apply it to predict spikes.

Shapes: ``rates`` ``[..., N]`` (``N = n_recorded``), ``gain`` / ``offset`` ``[N]``.
"""
from __future__ import annotations

from typing import Any, Dict

import torch
from torch import nn

__all__ = ["SpikeReadout"]


class SpikeReadout(nn.Module):
    """Per-neuron affine Poisson readout (module docstring); buffers only, no parameters."""

    def __init__(self, n: int, floor: float = 1e-3):
        super().__init__()
        self.floor = float(floor)
        self.register_buffer("gain", torch.ones(int(n)))
        self.register_buffer("offset", torch.zeros(int(n)))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self._register_load_state_dict_pre_hook(self._fill_missing)

    def _fill_missing(self, state_dict, prefix, *args, **kwargs) -> None:
        # checkpoints written before the readout existed: the identity readout
        state_dict.setdefault(prefix + "gain", torch.ones_like(self.gain))
        state_dict.setdefault(prefix + "offset", torch.zeros_like(self.offset))
        state_dict.setdefault(prefix + "fitted", torch.zeros_like(self.fitted))

    @property
    def is_fitted(self) -> bool:
        return bool(self.fitted)

    def forward(self, rates: torch.Tensor) -> torch.Tensor:
        """``[..., N] -> [..., N]`` predicted spike rates (the identity until fitted)."""
        if not self.is_fitted:
            return rates
        g, c = self.gain.to(rates), self.offset.to(rates)
        return torch.clamp_min(rates * g + c, self.floor)

    def apply_numpy(self, rates: Any):
        """The same on a numpy ``[..., N]`` array (float64 out)."""
        import numpy as np

        r = np.asarray(rates, dtype=np.float64)
        if not self.is_fitted:
            return r
        return np.maximum(r * self.gain.double().cpu().numpy() + self.offset.double().cpu().numpy(), self.floor)

    def set_affine(self, gain: Any, offset: Any) -> None:
        """Install a fitted ``(gain, offset)`` (``[N]`` each, sp/s)."""
        g = torch.as_tensor(gain, dtype=self.gain.dtype).reshape(-1)
        c = torch.as_tensor(offset, dtype=self.offset.dtype).reshape(-1)
        if g.numel() != self.gain.numel() or c.numel() != self.offset.numel():
            raise ValueError(f"readout of {self.gain.numel()} neurons got gain {g.numel()}, offset {c.numel()}")
        if (g < 0).any() or not torch.isfinite(g).all() or not torch.isfinite(c).all():
            raise ValueError("readout gain must be finite and >= 0, offset finite")
        self.gain.copy_(g)
        self.offset.copy_(c)
        self.fitted.fill_(True)

    def info(self) -> Dict[str, Any]:
        return {"fitted": self.is_fitted, "gain": self.gain.tolist(), "offset_hz": self.offset.tolist(),
                "floor_hz": self.floor}
