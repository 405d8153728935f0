"""System A integration/memory task (lab README 004): hold a value proportional to the
duration of an input pulse.

One input channel on a 1 ms grid (``dt``), ``n_steps`` = 7000 steps per trial::

    input(t)  = strength (2.0)  for onset <= t < onset + duration, else 0
    target(t) = thresh_rate * duration   for t >= cost_onset (4500 ms), undefined before
    mask(t)   = t >= cost_onset          (the README's "-1 = not evaluated" marks, as a mask)

``onset`` ~ U[onset - onset_jitter, onset + onset_jitter] (3000 +- 1000 ms) and ``duration`` ~
U[duration - duration_jitter, duration + duration_jitter] (150 +- 100 ms), both rounded to
whole steps (duration >= 1 step).

Interpretation of the README's "The threshold parameter increases at a rate of 0.007": the
value the output must reach and hold (the threshold) grows linearly with the integrated
input, at 0.007 per ms of pulse duration -- 0.35, 1.05 and 2.1 for the 50, 150 and 300 ms
test pulses.  It is fixed across training (not a curriculum).  The loss is the masked MSE
(the README's ``mse_loss1``); precision (``mse_loss2``: error where the target is > 0) is the
same quantity on fixed-duration test trials (:mod:`eirnn.analysis.system_a`).
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch

from eirnn.data.task_base import TaskDataModule


def make_trials(onsets: Sequence[float], durations: Sequence[float], *, dt: float = 1.0, n_steps: int = 7000,
                strength: float = 2.0, cost_onset: float = 4500.0, thresh_rate: float = 0.007) -> Dict[str, torch.Tensor]:
    """Trials with given pulse onsets and durations (ms; rounded to whole steps of ``dt``).

    Returns ``inputs`` [n, T, 1], ``target`` [n, T, 1], ``mask`` [n, T, 1] (bool), ``onset`` and
    ``duration`` [n] (float32, ms, after rounding).
    """
    on = np.rint(np.asarray(onsets, dtype=np.float64).reshape(-1) / dt).astype(np.int64)
    du = np.maximum(np.rint(np.asarray(durations, dtype=np.float64).reshape(-1) / dt).astype(np.int64), 1)
    if on.size != du.size:
        raise ValueError("onsets and durations must have the same length")
    c0 = int(round(cost_onset / dt))
    if not 0 < c0 < n_steps:
        raise ValueError(f"cost_onset={cost_onset} ms must fall inside the trial ({n_steps} steps of {dt} ms)")
    if (on < 0).any() or (on + du > n_steps).any():
        raise ValueError("every pulse must fit inside the trial")
    t = np.arange(n_steps)[None, :]
    inputs = np.where((t >= on[:, None]) & (t < (on + du)[:, None]), strength, 0.0).astype(np.float32)
    level = (thresh_rate * du * dt).astype(np.float32)
    mask = np.broadcast_to(t >= c0, (on.size, n_steps)).copy()
    target = np.where(mask, level[:, None], 0.0).astype(np.float32)
    return {"inputs": torch.from_numpy(inputs[..., None]), "target": torch.from_numpy(target[..., None]),
            "mask": torch.from_numpy(mask[..., None]), "onset": torch.from_numpy((on * dt).astype(np.float32)),
            "duration": torch.from_numpy((du * dt).astype(np.float32))}


class SystemADataModule(TaskDataModule):
    """Fixed training / validation sets of the System A task (see the module docstring).

    Training trials come from ``numpy.random.default_rng([seed, 0])``, validation trials from
    ``default_rng([seed, 1])``.  ``eval_durations`` / ``eval_onset`` define the precision test
    (fixed onset, durations 50/150/300 ms) used by the analysis.
    """

    n_inputs, n_outputs = 1, 1

    def __init__(self, n_train: int = 500, n_val: int = 100, batch_size: int = 32, seed: int = 0,
                 shuffle_seed: Optional[int] = None, dt: float = 1.0, n_steps: int = 7000, onset: float = 3000.0,
                 onset_jitter: float = 1000.0, duration: float = 150.0, duration_jitter: float = 100.0,
                 strength: float = 2.0, cost_onset: float = 4500.0, thresh_rate: float = 0.007,
                 eval_durations: Sequence[float] = (50.0, 150.0, 300.0), eval_onset: Optional[float] = None):
        super().__init__(n_train, n_val, batch_size, seed, shuffle_seed, dt)
        if duration - duration_jitter <= 0 or onset - onset_jitter < 0:
            raise ValueError("duration - duration_jitter must be > 0 and onset - onset_jitter >= 0")
        if onset + onset_jitter + duration + duration_jitter > cost_onset:
            raise ValueError(f"the latest pulse (onset {onset}+{onset_jitter}, duration {duration}+{duration_jitter}) "
                             f"must end before cost_onset={cost_onset}")
        self.params = dict(dt=float(dt), n_steps=int(n_steps), strength=float(strength),
                           cost_onset=float(cost_onset), thresh_rate=float(thresh_rate))
        self.timing = dict(onset=float(onset), onset_jitter=float(onset_jitter), duration=float(duration),
                           duration_jitter=float(duration_jitter))
        self.eval_durations = [float(d) for d in eval_durations]
        self.eval_onset = float(onset if eval_onset is None else eval_onset)

    def sample(self, n: int, rng: np.random.Generator) -> Dict[str, torch.Tensor]:
        t = self.timing
        onsets = rng.uniform(t["onset"] - t["onset_jitter"], t["onset"] + t["onset_jitter"], size=n)
        durs = rng.uniform(t["duration"] - t["duration_jitter"], t["duration"] + t["duration_jitter"], size=n)
        return make_trials(onsets, durs, **self.params)

    def generate(self, split: str) -> Dict[str, torch.Tensor]:
        n = self.n_train if split == "train" else self.n_val
        return self.sample(n, np.random.default_rng([self.seed, 0 if split == "train" else 1]))

    def eval_trials(self, duration: float, n: int = 1) -> Dict[str, torch.Tensor]:
        """``n`` identical test trials: pulse of ``duration`` ms at ``eval_onset``."""
        return make_trials([self.eval_onset] * n, [duration] * n, **self.params)

    def config(self) -> Dict[str, Any]:
        return dict(self.params, **self.timing, n_train=self.n_train, n_val=self.n_val, seed=self.seed,
                    eval_durations=list(self.eval_durations), eval_onset=self.eval_onset)

    def describe(self) -> str:
        p, t = self.params, self.timing
        return (super().describe() + f"\n  pulse {p['strength']:g} at {t['onset']:g}+-{t['onset_jitter']:g} ms for "
                f"{t['duration']:g}+-{t['duration_jitter']:g} ms; target {p['thresh_rate']:g}*duration from "
                f"{p['cost_onset']:g} ms; {p['n_steps']} steps of {p['dt']:g} ms")
