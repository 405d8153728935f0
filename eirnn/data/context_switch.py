"""Contextual switch task (after Mastrogiuseppe & Ostojic 2018, Fig. 5): report the sign of
stimulus 1 in context 1 and the sign of stimulus 2 in context 2.

Input channels (n_inputs = 4), on a grid of bins of width ``dt`` (time in units of tau)::

    0  s1(t)   stimulus 1:  0 during the burn-in, then  sign1 * stim_mean_abs + noise_std * xi1(t)
    1  s2(t)   stimulus 2:  0 during the burn-in, then  sign2 * stim_mean_abs + noise_std * xi2(t)
    2  ctx1(t) gamma_on in context 1, gamma_off in context 2 (whole trial)
    3  ctx2(t) gamma_off in context 1, gamma_on in context 2 (whole trial)

``xi`` are independent N(0, 1) draws, one per bin (noise held within a bin).  A trial lasts
``T_burn + T_stim`` (defaults 15 + 85), i.e. ``n_bins = round((T_burn + T_stim) / dt)``;
the stimulus period starts at bin ``round(T_burn / dt)``.  Context, sign1 and sign2 are
drawn independently and uniformly per trial.

Target (n_outputs = 1): the sign of the relevant stimulus (+1 / -1), evaluated (``mask``) over
the last ``decision_window`` time units of the trial; the choice of a trial is the sign of
the mean readout over that window.

Parameters from the lab's README (002) and the paper: stimulus strength 1.2 (the paper's
``Sii``), contextual inputs 0.08 (active) / -0.14 (suppressed), burn-in 15, stimulus 85; the
stimulus noise std 0.4 is the paper's input-noise value (its noisy detection task).  Our
choices: bins of ``dt`` = 0.5, noise drawn per bin, decision window 20, both stimuli present
in every trial (the irrelevant one is a distractor).
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np
import torch

from eirnn.data.task_base import TaskDataModule

CHANNELS = ("stim1", "stim2", "ctx1", "ctx2")


def trial_layout(dt: float, T_burn: float, T_stim: float, decision_window: float) -> Dict[str, int]:
    """Bin indices: ``n_bins``, ``stim_start`` (first stimulus bin), ``decision_start`` (first scored bin)."""
    n_bins = int(round((T_burn + T_stim) / dt))
    stim_start = int(round(T_burn / dt))
    n_dec = int(round(decision_window / dt))
    if n_bins < 1 or not 0 <= stim_start < n_bins:
        raise ValueError(f"T_burn={T_burn}, T_stim={T_stim}, dt={dt} give no stimulus period")
    if not 1 <= n_dec <= n_bins - stim_start:
        raise ValueError(f"decision_window={decision_window} must lie within the stimulus period (T_stim={T_stim})")
    return {"n_bins": n_bins, "stim_start": stim_start, "decision_start": n_bins - n_dec}


def make_trials(context: np.ndarray, signs: np.ndarray, *, dt: float = 0.5, T_burn: float = 15.0,
                T_stim: float = 85.0, stim_mean_abs: float = 1.2, noise_std: float = 0.4,
                gamma_on: float = 0.08, gamma_off: float = -0.14, decision_window: float = 20.0,
                rng: Optional[np.random.Generator] = None) -> Dict[str, torch.Tensor]:
    """Trials for given conditions.

    Args:
        context: [n] in {1, 2}. signs: [n, 2] in {+1, -1} (signs of stimulus 1 and 2).
        rng: noise source; ``None`` or ``noise_std == 0`` gives noise-free trials.

    Returns: ``inputs`` [n, T, 4], ``target`` [n, T, 1], ``mask`` [n, T, 1] (bool),
    ``context`` [n] (int64, 1 or 2), ``signs`` [n, 2] (float32), ``label`` [n] (float32, the
    relevant sign).
    """
    context = np.asarray(context, dtype=np.int64).reshape(-1)
    signs = np.asarray(signs, dtype=np.float64).reshape(-1, 2)
    if context.size != signs.shape[0]:
        raise ValueError("context and signs must describe the same number of trials")
    if not np.isin(context, (1, 2)).all() or not np.isin(signs, (-1.0, 1.0)).all():
        raise ValueError("context must be 1 or 2 and signs +1 or -1")
    lay = trial_layout(dt, T_burn, T_stim, decision_window)
    n, T, s0, d0 = context.size, lay["n_bins"], lay["stim_start"], lay["decision_start"]
    x = np.zeros((n, T, 4), dtype=np.float64)
    x[:, s0:, 0:2] = stim_mean_abs * signs[:, None, :]
    if rng is not None and noise_std > 0:
        x[:, s0:, 0:2] += noise_std * rng.standard_normal((n, T - s0, 2))
    on1 = (context == 1)[:, None]
    x[:, :, 2] = np.where(on1, gamma_on, gamma_off)
    x[:, :, 3] = np.where(on1, gamma_off, gamma_on)
    label = signs[np.arange(n), context - 1]
    target = np.zeros((n, T, 1), dtype=np.float32)
    mask = np.zeros((n, T, 1), dtype=bool)
    target[:, d0:, 0] = label[:, None]
    mask[:, d0:, 0] = True
    return {"inputs": torch.from_numpy(x.astype(np.float32)), "target": torch.from_numpy(target),
            "mask": torch.from_numpy(mask), "context": torch.from_numpy(context),
            "signs": torch.from_numpy(signs.astype(np.float32)), "label": torch.from_numpy(label.astype(np.float32))}


def all_conditions() -> tuple[np.ndarray, np.ndarray]:
    """The 8 conditions (context x sign1 x sign2), context-major: (context [8], signs [8, 2])."""
    ctx, sg = [], []
    for c in (1, 2):
        for s1 in (1.0, -1.0):
            for s2 in (1.0, -1.0):
                ctx.append(c)
                sg.append((s1, s2))
    return np.array(ctx), np.array(sg)


def random_trials(n: int, rng: np.random.Generator, **params: Any) -> Dict[str, torch.Tensor]:
    """``n`` trials with context, sign1, sign2 drawn independently and uniformly."""
    context = rng.integers(1, 3, size=n)
    signs = rng.choice(np.array([-1.0, 1.0]), size=(n, 2))
    return make_trials(context, signs, rng=rng, **params)


def choices(output: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Choice per trial: sign of the mean readout over the scored bins. output, mask [B, T, 1] -> [B]."""
    m = mask.to(output.dtype)
    mean = (output * m).sum((1, 2)) / m.sum((1, 2)).clamp_min(1.0)
    return torch.where(mean >= 0, torch.ones_like(mean), -torch.ones_like(mean))


class ContextSwitchDataModule(TaskDataModule):
    """Fixed training / validation sets of the contextual switch task (see the module docstring).

    The training set comes from ``numpy.random.default_rng([seed, 0])``, the validation set
    from ``default_rng([seed, 1])``: deterministic, and disjoint noise streams.
    """

    n_inputs, n_outputs = 4, 1

    def __init__(self, n_train: int = 10000, n_val: int = 1000, batch_size: int = 32, seed: int = 0,
                 shuffle_seed: Optional[int] = None, dt: float = 0.5, T_burn: float = 15.0, T_stim: float = 85.0,
                 stim_mean_abs: float = 1.2, noise_std: float = 0.4, gamma_on: float = 0.08,
                 gamma_off: float = -0.14, decision_window: float = 20.0):
        super().__init__(n_train, n_val, batch_size, seed, shuffle_seed, dt)
        if float(noise_std) < 0 or float(stim_mean_abs) <= 0:
            raise ValueError(f"noise_std must be >= 0 and stim_mean_abs > 0 (got {noise_std}, {stim_mean_abs})")
        self.params = dict(dt=float(dt), T_burn=float(T_burn), T_stim=float(T_stim), stim_mean_abs=float(stim_mean_abs),
                           noise_std=float(noise_std), gamma_on=float(gamma_on), gamma_off=float(gamma_off),
                           decision_window=float(decision_window))
        self.layout = trial_layout(dt, T_burn, T_stim, decision_window)

    def generate(self, split: str) -> Dict[str, torch.Tensor]:
        n = self.n_train if split == "train" else self.n_val
        rng = np.random.default_rng([self.seed, 0 if split == "train" else 1])
        return random_trials(n, rng, **self.params)

    def config(self) -> Dict[str, Any]:
        return dict(self.params, n_train=self.n_train, n_val=self.n_val, seed=self.seed)

    def describe(self) -> str:
        p = self.params
        return (super().describe() + f"\n  T_burn {p['T_burn']:g} + T_stim {p['T_stim']:g}, |stim| {p['stim_mean_abs']:g}, "
                f"noise {p['noise_std']:g}/bin, gamma on/off {p['gamma_on']:g}/{p['gamma_off']:g}, "
                f"decision window {p['decision_window']:g}")
