"""Condition- and factor-resolved figures (issue 15), for the final-model export and TensorBoard.

* :func:`condition_psth_grid` -- neurons (rows) x condition groups (columns): the data's mean
  PSTH with a +-1 SEM band and the model's mean, event-aligned (one window per event, joined
  with a gap), a dashed marker at each event, ms from the event on the x axis.
* :func:`selectivity_scatter` -- one panel per factor: recorded vs model selectivity (d')
  per neuron, E red / I blue, with the Pearson r across neurons and its p.

:func:`condition_figures_from_arrays` builds both from a run's validation arrays.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence

import numpy as np
from matplotlib.figure import Figure

from eirnn.plotting import E_COLOR, I_COLOR, new_figure

__all__ = ["condition_psth_grid", "selectivity_scatter", "condition_figures_from_arrays"]

DATA_COLOR = "0.15"
MODEL_COLOR = "#ff7f0e"
_GAP = 3  # bins between event windows on the x axis


def _trial_smooth(xa: np.ndarray, ma: np.ndarray, sigma_bins: float, seg: np.ndarray) -> np.ndarray:
    from eirnn.metrics import smooth_psths

    return smooth_psths(xa, ma, sigma_bins, seg)


def _mean_sem(x: np.ndarray, m: np.ndarray):
    n = m.sum(0)
    mean = np.where(m, x, 0.0).sum(0) / np.maximum(n, 1)
    var = np.where(m, (x - mean) ** 2, 0.0).sum(0) / np.maximum(n - 1, 1)
    sem = np.sqrt(var / np.maximum(n, 1))
    return np.where(n > 0, mean, np.nan), np.where(n > 1, sem, np.nan)


def condition_psth_grid(model_a: np.ndarray, data_a: np.ndarray, ma: np.ndarray, seg: np.ndarray,
                        windows_ms: Mapping[str, Sequence[float]], bin_ms: float, groups: np.ndarray,
                        group_names: Mapping[int, str], is_excitatory: np.ndarray,
                        neurons: Optional[Sequence[int]] = None, n_neurons: int = 6, sigma_bins: float = 2.0,
                        title: str = "") -> Figure:
    """Neuron x condition grid of event-aligned PSTHs (see the module docstring).

    Args:
        model_a, data_a, ma: aligned ``[K, W, N]`` rates and validity
            (:func:`eirnn.metrics.align_to_events`), ``seg`` ``[W]`` the event of each bin.
        windows_ms: ``{event: (start, stop)}`` in the order of ``seg``; ``groups`` ``[K]`` the
            column of each trial, named by ``group_names``.
        neurons: rows (default: the ``n_neurons`` with the largest across-group variance of
            their data PSTHs, i.e. the most condition-dependent).
    """
    xs = _trial_smooth(data_a, ma, sigma_bins, seg)
    xm = _trial_smooth(model_a, ma, sigma_bins, seg)
    levels = [g for g in sorted(group_names) if np.any(groups == g)]
    means = {g: _mean_sem(xs[groups == g], ma[groups == g]) for g in levels}
    mmeans = {g: _mean_sem(xm[groups == g], ma[groups == g])[0] for g in levels}
    if neurons is None:
        stack = np.stack([means[g][0] for g in levels])                      # [G, W, N]
        with np.errstate(invalid="ignore"):
            spread = np.nanmean(np.nanvar(stack, axis=0), axis=0)
        order = np.argsort(np.where(np.isfinite(spread), -spread, np.inf))
        neurons = list(order[: min(n_neurons, order.size)])
    # x positions: windows side by side with a gap
    events = list(windows_ms)
    x = np.zeros(seg.size)
    starts, pos = [], 0.0
    for i, ev in enumerate(events):
        sl = np.flatnonzero(seg == i)
        x[sl] = pos + np.arange(sl.size)
        starts.append(pos)
        pos += sl.size + _GAP
    a_bins = {ev: int(round(float(windows_ms[ev][0]) / bin_ms)) for ev in events}
    rows, cols = len(neurons), len(levels)
    fig = new_figure(max(2.2 * cols, 6.0), 1.7 * rows + 0.8)
    for r, n in enumerate(neurons):
        ymax = 0.0
        axes = []
        for c, g in enumerate(levels):
            ax = fig.add_subplot(rows, cols, r * cols + c + 1)
            axes.append(ax)
            mean, sem = means[g][0][:, n], means[g][1][:, n]
            for i in range(len(events)):
                sl = seg == i
                ax.fill_between(x[sl], (mean - sem)[sl], (mean + sem)[sl], color=DATA_COLOR, alpha=0.2, lw=0)
                ax.plot(x[sl], mean[sl], color=DATA_COLOR, lw=1.0, label="data" if i == 0 else None)
                ax.plot(x[sl], mmeans[g][sl, n], color=MODEL_COLOR, lw=1.2, label="model" if i == 0 else None)
                ax.axvline(starts[i] - a_bins[events[i]], color="0.5", ls="--", lw=0.7)
            ymax = max(ymax, float(np.nanmax(np.r_[mean + np.nan_to_num(sem), mmeans[g][:, n], 1.0])))
            if r == 0:
                ax.set_title(group_names[g], fontsize=8)
            if c == 0:
                exc = bool(is_excitatory[n])
                ax.set_ylabel(f"n{n} ({'E' if exc else 'I'})\nsp/s", fontsize=7, color=E_COLOR if exc else I_COLOR)
            ticks, labels = [], []
            for i, ev in enumerate(events):
                w0, w1 = (float(v) for v in windows_ms[ev])
                for ms in np.arange(np.ceil(w0 / 400.0) * 400.0, w1, 400.0):
                    if ms == 0.0 or (ms - w0 >= 75.0 and w1 - ms >= 75.0):
                        ticks.append(starts[i] + (ms - w0) / bin_ms)
                        labels.append(f"{ms:+g}" if ms else ev)
            ax.set_xticks(ticks)
            ax.set_xticklabels(labels if r == rows - 1 else [], fontsize=6, rotation=0)
            ax.tick_params(labelsize=6)
            if r == 0 and c == 0:
                ax.legend(fontsize=6, frameon=False, loc="upper left")
        for ax in axes:
            ax.set_ylim(0, 1.05 * ymax)
    fig.supxlabel("ms from each event (dashed: event; SEM band: data)", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def selectivity_scatter(data_sel: Mapping[str, np.ndarray], model_sel: Mapping[str, np.ndarray],
                        is_excitatory: np.ndarray, label: str = "d'", title: str = "") -> Figure:
    """Recorded vs model selectivity per factor, with the Pearson r across neurons and its p."""
    from eirnn.metrics import selectivity_r

    factors = [f for f in data_sel if f in model_sel]
    fig = new_figure(3.0 * max(len(factors), 1), 3.2)
    exc = np.asarray(is_excitatory, bool)
    for i, f in enumerate(factors):
        ax = fig.add_subplot(1, max(len(factors), 1), i + 1)
        d, m = np.asarray(data_sel[f], float), np.asarray(model_sel[f], float)
        ok = np.isfinite(d) & np.isfinite(m)
        ax.scatter(d[ok & exc], m[ok & exc], s=14, color=E_COLOR, label="E")
        ax.scatter(d[ok & ~exc], m[ok & ~exc], s=14, color=I_COLOR, label="I")
        if ok.any():
            lo = float(min(d[ok].min(), m[ok].min(), 0.0))
            hi = float(max(d[ok].max(), m[ok].max(), 0.0))
            ax.plot([lo, hi], [lo, hi], color="0.6", lw=0.8, ls=":")
        r, p, n = selectivity_r(m, d)
        ax.set_title(f"{f}: r = {r:.2f}, p = {p:.2g} (n = {n})" if np.isfinite(r) else f"{f}: r n/a (n = {n})",
                     fontsize=8)
        ax.set_xlabel(f"recorded {label}", fontsize=8)
        ax.set_ylabel(f"model {label}", fontsize=8)
        ax.tick_params(labelsize=7)
        if i == 0:
            ax.legend(fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def condition_figures_from_arrays(model_rates: np.ndarray, target_rates: np.ndarray, mask: np.ndarray,
                                  inputs: np.ndarray, factors: np.ndarray, bin_ms: float,
                                  is_excitatory: np.ndarray, cfg: Optional[Mapping] = None,
                                  channels: Optional[Sequence[str]] = None) -> Dict[str, Figure]:
    """``{"condition_psth_grid", "selectivity_scatter"}`` of a run's validation trials.

    ``factors`` ``[K, 4]`` = (location, identity, reward, salience) (``val_trial_factors`` of
    the export). Columns of the grid: location x reward (8 groups, ~1/8 of the trials each).
    """
    from eirnn.baselines import TrialSet
    from eirnn.condition_scores import ConditionView

    f = np.asarray(factors, np.int64)
    codes = 1000 * f[:, 0] + 100 * f[:, 1] + 10 * f[:, 2] + f[:, 3]
    trials = TrialSet(inputs, np.nan_to_num(target_rates), mask, codes, bin_ms)
    view = ConditionView(trials, cfg) if not channels else ConditionView(trials, cfg, channels=tuple(channels))
    _, per = view.scores(np.asarray(model_rates, np.float64))
    model_a = view.align(np.asarray(model_rates, np.float64))
    groups = 10 * f[:, 0] + f[:, 2]
    names = {10 * loc + rew: f"loc {loc}, {'high' if rew == 1 else 'low'} reward"
             for loc in np.unique(f[:, 0]) for rew in np.unique(f[:, 2])}
    grid = condition_psth_grid(model_a, view.data_a, view.ma, view.seg, view.cfg["windows_ms"], bin_ms, groups, names,
                               is_excitatory, sigma_bins=view.sigma_bins,
                               title="validation trials: data (mean +- SEM) vs model, by target location x reward")
    model_sel = {k: per[f"selectivity_{k}"] for k in view.data_sel}
    sc = selectivity_scatter(view.data_sel, model_sel, is_excitatory,
                             title=f"selectivity (d', {view.cfg['selectivity_window_ms'][0]}-"
                                   f"{view.cfg['selectivity_window_ms'][1]} ms after {view.cfg['selectivity_event']})")
    return {"condition_psth_grid": grid, "selectivity_scatter": sc}
