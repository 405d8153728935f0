"""Condition- and factor-resolved scores of one predictor (issue 15), used by :mod:`eirnn.evaluate`.

A :class:`ConditionView` is built once per scored trial set from its task inputs (event
onsets, :func:`eirnn.data.conditions.event_onset_bins`) and condition codes (factors,
:func:`eirnn.data.conditions.factors_from_codes`); it then scores any ``[K, T, N]`` rates:

=================================  ==============================================================
``condition_psth_r2`` / ``_corr``  R2 / Pearson r per neuron of the smoothed, event-aligned
                                   condition PSTHs (conditions = location x identity x reward x
                                   salience; the windows of ``windows_ms`` around each event,
                                   concatenated; Gaussian ``smooth_sigma_ms``), on the predictor's
                                   *calibrated* rates; ``*_raw`` on its rates as predicted
``marginal_corr_<f>``              per neuron, r over (level, t) of the level PSTH minus the
                                   grand PSTH (smoothed, aligned) between predictor and data
``selectivity_r_<f>``              Pearson r across neurons between the data's and the
                                   predictor's selectivity (d' of trial-mean rates in
                                   ``selectivity_window_ms`` after ``selectivity_event``; a
                                   predictor's d' includes the Poisson variance of its rates;
                                   two-level factors signed, location / identity mean |d'|
                                   one-vs-rest); ``selectivity_p_<f>`` its p
``selectivity_auc_r_<f>``          the same with the ROC form 2 (AUC - 0.5) (a predictor's AUC
                                   from ``auc_draws`` Poisson draws of its trial-mean rates)
=================================  ==============================================================

Definitions are in :mod:`eirnn.metrics` (issue 15 section); the defaults and their reasons
are in experiments/evaluation.md.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from eirnn.data.conditions import EXCLUDED_LEVELS, FACTORS, POSITIVE_LEVEL, event_onset_bins, factors_from_codes
from eirnn.data.session import INPUT_CHANNELS

__all__ = ["CONDITION_DEFAULTS", "ConditionView", "condition_config"]

#: Defaults of ``evaluation.condition`` (conf/train.yaml); experiments/evaluation.md says why.
CONDITION_DEFAULTS: Dict[str, Any] = {
    "windows_ms": {"target": [-200, 500], "go": [-300, 500]},
    "smooth_sigma_ms": 50.0,
    "selectivity_event": "target",
    "selectivity_window_ms": [50, 350],
    "auc_draws": 20,
}


def condition_config(cfg: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """``CONDITION_DEFAULTS`` updated with ``cfg`` (a plain mapping or a DictConfig)."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in CONDITION_DEFAULTS.items()}
    if cfg is not None:
        try:
            from omegaconf import DictConfig, OmegaConf

            if isinstance(cfg, DictConfig):
                cfg = OmegaConf.to_container(cfg, resolve=True)
        except ImportError:  # pragma: no cover
            pass
        unknown = sorted(set(cfg) - set(CONDITION_DEFAULTS))
        if unknown:
            raise ValueError(f"evaluation.condition: unknown key(s) {unknown}; known: {sorted(CONDITION_DEFAULTS)}")
        out.update({k: v for k, v in cfg.items() if v is not None})
    if not out["windows_ms"]:
        raise ValueError("evaluation.condition.windows_ms: give at least one event window")
    for ev, w in out["windows_ms"].items():
        if len(w) != 2 or not float(w[0]) < float(w[1]):
            raise ValueError(f"evaluation.condition.windows_ms.{ev}: expected [start, stop] with start < stop, got {w}")
    return out


def _bins(ms, bin_size_ms: float) -> Tuple[int, int]:
    return int(round(float(ms[0]) / bin_size_ms)), int(round(float(ms[1]) / bin_size_ms))


class ConditionView:
    """Event-aligned views of one trial set (a :class:`~eirnn.baselines.TrialSet`)."""

    def __init__(self, trials, cfg: Optional[Mapping[str, Any]] = None,
                 channels=INPUT_CHANNELS):
        from eirnn import metrics as M

        self.cfg = condition_config(cfg)
        self.trials = trials
        bs = trials.bin_size_ms
        self.bin_size_ms = bs
        k = trials.n_trials
        if trials.inputs.shape[2] >= len(channels):  # (channels beyond the named ones, e.g. reward context, ignored)
            self.onsets = event_onset_bins(trials.inputs, channels)
        else:  # fewer channels than named: no events
            self.onsets = {}
        self.windows = {ev: _bins(w, bs) for ev, w in self.cfg["windows_ms"].items()}
        unknown = [ev for ev in list(self.windows) + [self.cfg["selectivity_event"]]
                   if ev not in ("fixation", "target", "go", "reward")]
        if unknown:
            raise ValueError(f"evaluation.condition: unknown event(s) {unknown}; known: fixation, target, go, reward")
        nan = np.full(k, np.nan)
        self.onsets = {ev: self.onsets.get(ev, nan) for ev in ("fixation", "target", "go", "reward")}
        self.sigma_bins = float(self.cfg["smooth_sigma_ms"]) / bs
        self.data_a, self.ma, self.seg = M.align_to_events(trials.rates, trials.mask, self.onsets, self.windows)
        self.factors = factors_from_codes(trials.conditions)
        a, b = _bins(self.cfg["selectivity_window_ms"], bs)
        self.sel_bins = (a, b)
        self.data_win, self.dur = M.window_rates(trials.rates, trials.mask, self.onsets[self.cfg["selectivity_event"]],
                                                 a, b, bs)
        self.data_sel = {f: M.selectivity_dprime(self.data_win, self.factors[f], POSITIVE_LEVEL.get(f),
                                                 EXCLUDED_LEVELS.get(f, ())) for f in FACTORS}
        self.data_auc = {f: M.selectivity_auc(self.data_win, self.factors[f], POSITIVE_LEVEL.get(f),
                                              EXCLUDED_LEVELS.get(f, ())) for f in FACTORS}

    def align(self, rates: np.ndarray) -> np.ndarray:
        from eirnn import metrics as M

        return M.align_to_events(rates, self.trials.mask, self.onsets, self.windows)[0]

    def scores(self, calibrated: np.ndarray, raw: Optional[np.ndarray] = None, seed: int = 0
               ) -> Tuple[Dict[str, float], Dict[str, np.ndarray]]:
        """``(summary, per_neuron)`` of one predictor (module docstring); ``raw`` defaults to
        ``calibrated``."""
        from eirnn import metrics as M

        raw = calibrated if raw is None else raw
        out: Dict[str, float] = {}
        per: Dict[str, np.ndarray] = {}
        cal_a = self.align(calibrated)
        for tag, x_a in (("", cal_a), ("_raw", cal_a if raw is calibrated else self.align(raw))):
            sc = M.aligned_condition_scores(x_a, self.data_a, self.ma, self.trials.conditions, self.sigma_bins, self.seg)
            for k, v in sc.items():
                per[k + tag] = v
        for f in FACTORS:
            per[f"marginal_corr_{f}"] = M.marginal_corr_per_neuron(
                cal_a, self.data_a, self.ma, self.factors[f], self.sigma_bins, self.seg, EXCLUDED_LEVELS.get(f, ()))
        a, b = self.sel_bins
        win, dur = M.window_rates(calibrated, self.trials.mask, self.onsets[self.cfg["selectivity_event"]], a, b,
                                  self.bin_size_ms)
        draws = M.poisson_rate_draws(win, dur, int(self.cfg["auc_draws"]), seed)
        for f in FACTORS:
            pos, ex = POSITIVE_LEVEL.get(f), EXCLUDED_LEVELS.get(f, ())
            sel = M.selectivity_dprime(win, self.factors[f], pos, ex, poisson_dur_s=dur)
            per[f"selectivity_{f}"] = sel
            r, p, _ = M.selectivity_r(sel, self.data_sel[f])
            out[f"selectivity_r_{f}"], out[f"selectivity_p_{f}"] = r, p
            if len(draws):
                auc = np.nanmean(np.stack([M.selectivity_auc(d, self.factors[f], pos, ex) for d in draws]), axis=0) \
                    if np.isfinite(draws).any() else np.full(win.shape[1], np.nan)
            else:
                auc = np.full(win.shape[1], np.nan)
            per[f"selectivity_auc_{f}"] = auc
            out[f"selectivity_auc_r_{f}"] = M.selectivity_r(auc, self.data_auc[f])[0]
        for k, v in per.items():
            if k.startswith(("condition_psth", "marginal_corr")):
                out[k] = M._nanmean(v)
        return out, per

    def ceiling(self, reference: "ConditionView", n_splits: int = 50, seed: int = 0, n_target: Optional[int] = None
                ) -> Tuple[Dict[str, float], Dict[str, np.ndarray]]:
        """Split-half ceilings of :meth:`scores`' metrics measured on ``reference`` (a view of
        more trials, e.g. training + scored) and extrapolated to ``n_target`` trials (default
        this view's count); :func:`eirnn.metrics.factor_noise_ceiling`."""
        from eirnn import metrics as M

        c = M.factor_noise_ceiling(reference.data_a, reference.ma, reference.trials.conditions, reference.factors,
                                   reference.data_win, reference.sigma_bins, reference.seg, EXCLUDED_LEVELS,
                                   POSITIVE_LEVEL, n_splits=n_splits, seed=seed,
                                   n_target=self.trials.n_trials if n_target is None else n_target)
        out, per = {}, {}
        for k, v in c.items():
            out[k] = v["mean"]
            if v["per_neuron"] is not None:
                per[k] = v["per_neuron"]
        return out, per
