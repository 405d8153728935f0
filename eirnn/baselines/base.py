"""Common ground of the baselines: the :class:`TrialSet` they see and the fit/predict API.

A baseline is fitted on training trials and predicts a rate for every (trial, bin,
neuron) of other trials, from what is known about those trials before their spikes are
seen: their task inputs and their condition. Predictions are scored by exactly the code
that scores the RNN (:mod:`eirnn.evaluate`), on exactly the same trials.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

import numpy as np

__all__ = ["TrialSet", "Baseline", "condition_codes"]


def condition_codes(session, idx: Optional[np.ndarray] = None) -> np.ndarray:
    """[K] int64 code of each trial's (location, identity, reward, salience) condition.

    ``code = 1000 location + 100 identity + 10 reward + salience``: unlike
    ``Session.condition_ids`` (dense ids of one session), the same condition has the
    same code in any subset of any session, so train and validation sets (filtered or
    not) can be matched condition by condition. Other sessions: ``code = sum_f v_f 1000^(F-1-f)``
    over ``session.factors`` (0 when it has none).
    """
    if getattr(session, "trial_location", None) is not None:
        code = (1000 * session.trial_location + 100 * session.trial_identity + 10 * session.trial_reward
                + session.trial_salience).astype(np.int64)
    else:  # any other factors: mixed radix 1000 (codes 0..999 per factor, up to 6 factors)
        code = np.zeros(session.n_trials, np.int64)
        for v in session.factors.values():
            code = code * 1000 + np.asarray(v, np.int64)
    return code if idx is None else code[np.asarray(idx, dtype=np.int64)]


@dataclass
class TrialSet:
    """Trials as the baselines and the scorer see them (numpy; K trials, T bins, N neurons).

    Attributes:
        inputs: ``[K, T, C]`` task inputs (NaN replaced by 0).
        rates: ``[K, T, N]`` recorded rates in sp/s (values at masked entries unused).
        mask: ``[K, T, N]`` bool, True = valid bin.
        conditions: ``[K]`` int64 condition codes (:func:`condition_codes`).
        bin_size_ms: bin width.
    """

    inputs: np.ndarray
    rates: np.ndarray
    mask: np.ndarray
    conditions: np.ndarray
    bin_size_ms: float

    def __post_init__(self) -> None:
        self.inputs = np.nan_to_num(np.asarray(self.inputs, dtype=np.float64))
        self.rates = np.asarray(self.rates, dtype=np.float64)
        self.mask = np.asarray(self.mask, dtype=bool)
        self.conditions = np.asarray(self.conditions).reshape(-1).astype(np.int64)
        k = self.rates.shape[0]
        if self.rates.ndim != 3 or self.mask.shape != self.rates.shape:
            raise ValueError(f"rates {self.rates.shape} and mask {self.mask.shape} must be the same [K, T, N]")
        if self.inputs.shape[:2] != self.rates.shape[:2] or self.conditions.shape != (k,):
            raise ValueError("inputs [K, T, C] and conditions [K] must match rates [K, T, N]")
        self.rates = np.where(self.mask, np.nan_to_num(self.rates), 0.0)
        self.bin_size_ms = float(self.bin_size_ms)

    @property
    def n_trials(self) -> int:
        return int(self.rates.shape[0])

    @property
    def counts(self) -> np.ndarray:
        """``[K, T, N]`` spike counts ``round(rates * dt)`` (0 where masked)."""
        return np.round(self.rates * (self.bin_size_ms / 1000.0))

    def subset(self, idx: np.ndarray) -> "TrialSet":
        idx = np.asarray(idx)
        return TrialSet(self.inputs[idx], self.rates[idx], self.mask[idx], self.conditions[idx], self.bin_size_ms)

    @classmethod
    def concat(cls, *sets: "TrialSet") -> "TrialSet":
        """The trials of several sets, in order (same T, N, bin size)."""
        return cls(np.concatenate([s.inputs for s in sets]), np.concatenate([s.rates for s in sets]),
                   np.concatenate([s.mask for s in sets]), np.concatenate([s.conditions for s in sets]),
                   sets[0].bin_size_ms)

    @classmethod
    def from_session(cls, session, idx: Optional[np.ndarray] = None) -> "TrialSet":
        """The trials ``idx`` (default all) of a :class:`~eirnn.data.Session`."""
        idx = np.arange(session.n_trials) if idx is None else np.asarray(idx, dtype=np.int64)
        mask = session.missing_mask()[idx]
        return cls(session.inputs[idx], session.rates[idx], mask, condition_codes(session, idx),
                   session.bin_size_ms)

    @classmethod
    def from_tensors(cls, tensors: Dict[str, Any], session, bin_size_ms: float) -> "TrialSet":
        """From a data module's stored tensors (``trial`` indexes ``session``)."""
        trial = tensors["trial"].cpu().numpy()
        return cls(tensors["inputs"].cpu().numpy(), tensors["rates"].cpu().numpy(),
                   tensors["mask"].cpu().numpy(), condition_codes(session, trial), bin_size_ms)


class Baseline:
    """Interface: ``fit(train) -> self``; ``predict(trials) -> [K, T, N]`` rates (sp/s)."""

    name = "baseline"

    def fit(self, train: TrialSet) -> "Baseline":  # pragma: no cover - interface
        raise NotImplementedError

    def predict(self, trials: TrialSet) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self) -> str:
        """One line: what was fitted (chosen hyperparameters)."""
        return self.name

    def info(self) -> Dict[str, Any]:
        """JSON-serialisable fitted hyperparameters."""
        return {}
