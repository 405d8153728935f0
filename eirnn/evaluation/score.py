"""Scores of predictors on recorded trials, baselines and the noise ceiling.

``score_prediction(pred [K, T, N], trials, is_excitatory [N])`` -> ``({metric: float},
{metric: [N]})``: ``psth_corr`` (per-neuron Pearson r over time of the trial-averaged PSTHs),
condition PSTH corr / R2, ``bits_per_spike`` (Poisson log-likelihood gain over each neuron's
mean rate, bits per spike), Fano factors (counts in ``FANO_WINDOW_MS`` windows), ``L_trial``.
``noise_ceiling``: split-half reliability with the Spearman-Brown correction.
``evaluate_modules(dm, modules, baselines)`` scores models and baselines on ``dm``'s
validation trials. Definitions and the reasons for them: experiments/evaluation.md,
"What eirnn.evaluate computes".
"""
from __future__ import annotations

import logging
import math
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from eirnn.errors import UserError
from eirnn.evaluation.predict import DEFAULT_NOISE_DRAWS, model_predictions

log = logging.getLogger("eirnn.evaluate")

#: Baselines fitted by default (names of :data:`eirnn.baselines.BASELINES`).
DEFAULT_BASELINES: Tuple[str, ...] = ("train_mean", "train_mean_smoothed", "condition_mean", "condition_mean_shrunk",
                                      "glm")
#: Count window of the Fano factors (ms; rounded to whole bins, at least one). Single
#: 25 ms bins hold ~0.3 spikes, where any count distribution has a Fano factor near 1; the
#: literature counts in windows of 100 ms or more.
FANO_WINDOW_MS = 200.0
#: Summary metrics of one predictor, in table order.
PER_NEURON_METRICS = ("psth_corr", "condition_psth_corr", "condition_psth_r2", "bits_per_spike", "fano_within_2x")
#: Ceilings of :func:`eirnn.metrics.psth_noise_ceiling` (the condition ones fixation-aligned,
#: unsmoothed: the metrics before issue 15, kept as ``*_fixaligned``).
CEILING_METRICS = ("psth_corr", "condition_psth_corr", "condition_psth_r2")
#: Condition- and factor-resolved metrics (issue 15, :mod:`eirnn.condition_scores`).
FACTOR_METRICS = tuple(f"{m}_{f}" for m in ("marginal_corr", "selectivity_r", "selectivity_auc_r")
                       for f in ("location", "identity", "salience", "reward"))


class EvaluationError(UserError):
    """A problem with the user's input (missing run folder, config or checkpoint)."""


# --------------------------------------------------------------------------- scoring


def _by_type(per_neuron: np.ndarray, exc: np.ndarray, name: str) -> Dict[str, float]:
    from eirnn.metrics import mean_by_type

    m = mean_by_type(per_neuron, exc)
    return {name: m["all"], f"{name}_E": m["E"], f"{name}_I": m["I"]}


def score_prediction(pred: np.ndarray, trials, is_excitatory: np.ndarray,
                     trial_term=None, sample: Optional[np.ndarray] = None,
                     calibrated: Optional[np.ndarray] = None, view=None, seed: int = 0
                     ) -> Tuple[Dict[str, float], Dict[str, np.ndarray]]:
    """All metrics of one predictor (definitions: experiments/evaluation.md).

    Args:
        pred: ``[K, T, N]`` predicted (expected) rates (sp/s) for ``trials``.
        trials: :class:`~eirnn.baselines.TrialSet` (recorded rates, mask, conditions).
        is_excitatory: bool ``[N]``.
        trial_term: optional callable ``(rates, target, mask) -> scalar tensor``
            (``FitObjective.trial_term``) for ``L_trial``.
        sample: ``[K, T, N]`` one noise draw of a stochastic model (default ``pred``):
            scored by the Fano factor and ``L_trial``.
        calibrated: ``[K, T, N]`` the predictor's calibrated rates (default ``pred``), scored
            by the condition- and factor-resolved metrics (:mod:`eirnn.condition_scores`;
            their ``*_raw`` versions score ``pred``).
        view: a :class:`~eirnn.condition_scores.ConditionView` of ``trials`` (default: one
            with the default windows).

    Returns:
        ``(summary {metric: float}, per_neuron {metric: [N]})``.
    """
    from eirnn import metrics as M

    pred = np.asarray(pred, dtype=np.float64)
    if pred.shape != trials.rates.shape:
        raise ValueError(f"prediction {pred.shape} does not match the trials {trials.rates.shape}")
    sample = pred if sample is None else np.asarray(sample, dtype=np.float64)
    if sample.shape != pred.shape:
        raise ValueError(f"sample {sample.shape} does not match the prediction {pred.shape}")
    exc = np.asarray(is_excitatory, dtype=bool)
    y, m, c, bs = trials.rates, trials.mask, trials.conditions, trials.bin_size_ms
    fw = max(1, int(round(FANO_WINDOW_MS / bs)))
    per = {
        "psth_corr": M.psth_correlation(pred, y, m),
        "condition_psth_corr_fixaligned": M.condition_psth_corr_per_neuron(pred, y, c, m),
        "condition_psth_r2_fixaligned": M.condition_psth_r2_per_neuron(pred, y, c, m),
        "bits_per_spike": M.bits_per_spike_per_neuron(pred, y, m, bin_size_ms=bs),
        "fano_model": M.condition_fano_factor(sample, c, m, bin_size_ms=bs, poisson_model=True, count_bins=fw),
        "fano_data": M.condition_fano_factor(y, c, m, bin_size_ms=bs, count_bins=fw),
    }
    ok = np.isfinite(per["fano_model"]) & np.isfinite(per["fano_data"]) & (per["fano_model"] > 0) & (per["fano_data"] > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        within = np.abs(np.log(per["fano_model"] / per["fano_data"])) <= math.log(2.0) + 1e-12
    per["fano_within_2x"] = np.where(ok, within.astype(float), np.nan)
    from eirnn.condition_scores import ConditionView

    view = ConditionView(trials) if view is None else view
    cs, cper = view.scores(pred if calibrated is None else np.asarray(calibrated, dtype=np.float64), pred, seed=seed)
    per.update(cper)
    out: Dict[str, float] = {}
    for name in ("psth_corr", "condition_psth_corr", "condition_psth_r2", "condition_psth_corr_raw",
                 "condition_psth_r2_raw", "condition_psth_corr_fixaligned", "condition_psth_r2_fixaligned",
                 "fano_within_2x"):
        out.update(_by_type(per[name], exc, name))
    out.update({k: v for k, v in cs.items() if k not in out})
    # bits/spike pooled over the neurons of each group (NLB pools over all neurons)
    out["bits_per_spike"] = M.bits_per_spike(pred, y, m, bin_size_ms=bs)
    for tag, sel in (("E", exc), ("I", ~exc)):
        out[f"bits_per_spike_{tag}"] = (M.bits_per_spike(pred[..., sel], y[..., sel], m[..., sel], bin_size_ms=bs)
                                        if sel.any() else float("nan"))
    for k in ("fano_model", "fano_data"):
        v = per[k][np.isfinite(per[k])]
        out[f"{k}_median"] = float(np.median(v)) if v.size else float("nan")
    out["L_trial"] = float("nan")
    if trial_term is not None:
        import torch

        with torch.no_grad():
            out["L_trial"] = float(trial_term(torch.as_tensor(sample, dtype=torch.float32),
                                              torch.as_tensor(y, dtype=torch.float32), torch.as_tensor(m)))
    return out, per


def _bits_scores(pred: np.ndarray, trials, exc: np.ndarray) -> Tuple[Dict[str, float], np.ndarray]:
    """``bits_per_spike`` (pooled over all / E / I neurons) and its per-neuron values."""
    from eirnn import metrics as M

    y, m, bs = trials.rates, trials.mask, trials.bin_size_ms
    out = {"bits_per_spike": M.bits_per_spike(pred, y, m, bin_size_ms=bs)}
    for tag, sel in (("E", exc), ("I", ~exc)):
        out[f"bits_per_spike_{tag}"] = (M.bits_per_spike(pred[..., sel], y[..., sel], m[..., sel], bin_size_ms=bs)
                                        if sel.any() else float("nan"))
    return out, M.bits_per_spike_per_neuron(pred, y, m, bin_size_ms=bs)


def noise_ceiling(trials, is_excitatory: np.ndarray, n_splits: int = 50, seed: int = 0, reference=None,
                  condition_cfg: Optional[Mapping[str, Any]] = None, channels: Optional[Sequence[str]] = None
                  ) -> Tuple[Dict[str, float], Dict[str, np.ndarray]]:
    """Split-half noise ceilings of the PSTH metrics of a prediction scored on ``trials``.

    See :func:`eirnn.metrics.psth_noise_ceiling` for the derivation (ceiling of a
    correlation = sqrt of the Spearman-Brown reliability of the scored PSTH; of R2 = the
    reliability itself). The split halves are drawn from ``reference`` (default
    ``trials``; the evaluation passes the training and the scored trials together) and
    the reliability is extrapolated to a PSTH of ``trials.n_trials`` trials, which is
    what is scored: more trials, a less noisy (and less biased) ceiling. Data only, no
    model. Returns ``(summary, per_neuron)`` like :func:`score_prediction` for
    ``psth_corr``, the condition- and factor-resolved metrics
    (:meth:`eirnn.condition_scores.ConditionView.ceiling`, windows and smoothing of
    ``condition_cfg``) and the fixation-aligned ``condition_psth_*_fixaligned``.
    """
    from eirnn.condition_scores import ConditionView

    from eirnn.metrics import psth_noise_ceiling

    exc = np.asarray(is_excitatory, dtype=bool)
    ref = trials if reference is None else reference
    c = psth_noise_ceiling(ref.rates, ref.mask, ref.conditions, n_splits=n_splits, seed=seed,
                           n_target=trials.n_trials)
    out, per = {}, {}
    for name in CEILING_METRICS:
        key = name if name == "psth_corr" else f"{name}_fixaligned"
        per[key] = c[name]["per_neuron"]
        per[f"{key}_reliability"] = c[name]["reliability"]
        out.update(_by_type(per[key], exc, key))
    kw = {} if channels is None else {"channels": tuple(channels)}
    fc, fper = ConditionView(trials, condition_cfg, **kw).ceiling(ConditionView(ref, condition_cfg, **kw), n_splits, seed)
    for name, v in fper.items():
        per[name] = v
        if name.startswith("condition_psth"):
            out.update(_by_type(v, exc, name))
    out.update({k: v for k, v in fc.items() if k not in out})
    out["n_trials_measured"] = ref.n_trials
    return out, per



def _unfiltered_fold(dm):
    """TrialSet + model tensors of every recorded trial of the validation fold, or None
    when this is not a CV fold or the filters removed none of the fold's trials."""
    from eirnn.baselines import TrialSet
    from eirnn.data import load_session, make_synthetic_session, session_to_tensors

    part = getattr(dm, "cv_partition", None)
    if part is None:
        return None
    idx = np.flatnonzero(part == dm.cv_fold)
    if idx.size == dm.val_idx.size:
        return None
    if hasattr(dm, "load_raw"):
        raw = dm.load_raw()
    else:
        raw = load_session(dm.path) if dm.path is not None else make_synthetic_session(**dm.synthetic)
    sub = raw.subset(idx)
    tensors = dm.make_tensors(sub) if hasattr(dm, "make_tensors") else session_to_tensors(sub)
    t = TrialSet.from_session(sub)
    t.inputs = np.nan_to_num(tensors["inputs"].cpu().numpy().astype(np.float64))  # the model's inputs (extra channels)
    return t, tensors


# --------------------------------------------------------------------------- evaluation


def trial_term_from_config(loss_cfg: Mapping[str, Any] | None, bin_size_ms: float):
    """``FitObjective(...).trial_term`` of a ``loss`` config (``L_trial`` without a model)."""
    from omegaconf import DictConfig, OmegaConf

    from eirnn.training.objective import FitObjective

    loss = OmegaConf.to_container(loss_cfg, resolve=True) if isinstance(loss_cfg, DictConfig) else dict(loss_cfg or {})
    return FitObjective(neuron=loss.get("neuron") or {}, trial=loss.get("trial") or {}, reg=loss.get("reg") or {},
                        activity=loss.get("activity") or {}, bin_size_ms=bin_size_ms).trial_term


def evaluate_modules(dm, modules: Mapping[str, Any], baselines: Sequence[str] = DEFAULT_BASELINES,
                     ceiling_splits: int = 50, seed: int = 0, baseline_kwargs: Optional[Mapping[str, dict]] = None,
                     trial_term=None, noise_draws: int = DEFAULT_NOISE_DRAWS,
                     calibrate: bool = True, condition_cfg: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Score trained modules and baselines on the validation trials of ``dm``.

    Args:
        dm: a set-up :class:`~eirnn.data.SessionDataModule`.
        modules: ``{name: FitModule}`` (the first one's ``objective.trial_term`` gives
            ``L_trial`` for every predictor).
        baselines: names in :data:`eirnn.baselines.BASELINES`.
        ceiling_splits, seed: of the noise ceiling (and the baselines' inner folds).
        trial_term: ``L_trial`` callable for every predictor (default: the first module's).
        noise_draws: draws averaged into a model's predicted rate (:func:`predict_expected_rates`).
        calibrate: fit each predictor's per-neuron affine calibration on the training trials
            and score the calibrated rates (experiments/evaluation.md).
        condition_cfg: ``evaluation.condition`` (windows, smoothing, selectivity window;
            :data:`eirnn.condition_scores.CONDITION_DEFAULTS`).

    Returns:
        the ``evaluation.json`` dict (without run-specific fields).
    """
    from eirnn.baselines import TrialSet, make_baseline

    session, bs = dm.session, dm.bin_size_ms
    exc = np.asarray(dm.is_excitatory, dtype=bool)
    train = TrialSet.from_tensors(dm.tensors("train"), session, bs)
    sets = {"val": (TrialSet.from_tensors(dm.tensors("val"), session, bs), dm.tensors("val"))}
    extra = _unfiltered_fold(dm)
    if extra is not None:
        sets["val_all"] = extra
    first = next(iter(modules.values()), None)
    if trial_term is None and first is not None:
        trial_term = first.objective.trial_term

    fitted, info = {}, {}
    for name in baselines:
        b = make_baseline(name, **dict((baseline_kwargs or {}).get(name, {})))
        if hasattr(b, "seed"):
            b.seed = int(seed)
        log.info("fitting baseline %s on %d training trials", name, train.n_trials)
        fitted[name] = b.fit(train)
        info[name] = {"description": b.describe(), **b.info()}

    result: Dict[str, Any] = {"sets": {}, "baselines": info, "train_fit": {}, "calibration": {}, "spike_readout": {}}
    from eirnn.calibration import fit_affine_calibration
    from eirnn.metrics import bits_per_spike, psth_corr

    # each predictor's rates for the training trials: its fit to them and its calibration
    calib = {}
    for name in list(modules) + list(fitted):
        if name in modules:
            p_net, _, p_train = model_predictions(modules[name], dm.tensors("train"), dm.batch_size, noise_draws)
            result["train_fit"][name] = {"psth_corr": psth_corr(p_net, train.rates, train.mask)}
            readout = getattr(modules[name].model, "spike_readout", None)
            result["spike_readout"][name] = readout.info() if readout is not None else None
        else:
            p_train = fitted[name].predict(train)
        if calibrate:
            calib[name] = fit_affine_calibration(p_train, train.rates, train.mask, bs)
            result["calibration"][name] = calib[name].info()
    from eirnn.condition_scores import ConditionView
    from eirnn.data.session import INPUT_CHANNELS

    channels = tuple(getattr(session, "input_names", None) or INPUT_CHANNELS)  # event onsets by channel name
    for set_name, (trials, tensors) in sets.items():
        raw = {name: model_predictions(mod, tensors, dm.batch_size, noise_draws) for name, mod in modules.items()}
        raw.update({name: (b.predict(trials), None, None) for name, b in fitted.items()})
        scores, per_neuron = {}, {}
        view = ConditionView(trials, condition_cfg, channels=channels)
        for name, (pred, sample, spike_rate) in raw.items():
            sr = pred if spike_rate is None else spike_rate
            cal = calib[name](sr) if name in calib else sr
            scores[name], per_neuron[name] = score_prediction(pred, trials, exc, trial_term, sample=sample,
                                                              calibrated=cal, view=view, seed=seed)
            if spike_rate is not None and spike_rate is not pred:  # the model's fitted spike readout
                scores[name]["bits_per_spike_network"] = scores[name]["bits_per_spike"]
                sc, pn = _bits_scores(spike_rate, trials, exc)
                scores[name].update(sc)
                per_neuron[name]["bits_per_spike"] = pn
            else:
                spike_rate = pred
            scores[name]["bits_per_spike_uncal"] = scores[name]["bits_per_spike"]
            if name in calib:  # the single-trial score of the calibrated rates
                sc, pn = _bits_scores(calib[name](spike_rate), trials, exc)
                scores[name].update(sc)
                per_neuron[name]["bits_per_spike"] = pn
            if sample is not None:  # the logged validation metrics: one draw of the network, uncalibrated
                scores[name]["psth_corr_sample"] = psth_corr(sample, trials.rates, trials.mask)
                scores[name]["bits_per_spike_sample"] = bits_per_spike(sample, trials.rates, trials.mask, bs)
        ceil, ceil_pn = noise_ceiling(trials, exc, ceiling_splits, seed, reference=TrialSet.concat(train, trials),
                                      condition_cfg=condition_cfg, channels=channels)
        result["sets"][set_name] = {
            "n_trials": trials.n_trials, "scores": scores, "ceiling": ceil,
            "per_neuron": {**per_neuron, "ceiling": ceil_pn},
            "selectivity_data": {**{f: v for f, v in view.data_sel.items()},
                                 **{f"auc_{f}": v for f, v in view.data_auc.items()}},
            "condition_view": {"windows_ms": view.cfg["windows_ms"], "smooth_sigma_ms": view.cfg["smooth_sigma_ms"],
                               "selectivity_event": view.cfg["selectivity_event"],
                               "selectivity_window_ms": view.cfg["selectivity_window_ms"],
                               "n_events": {ev: int(np.isfinite(o).sum()) for ev, o in view.onsets.items()}},
        }
    result["is_excitatory"] = exc.tolist()
    result["noise_draws"] = int(noise_draws)
    result["calibrated"] = bool(calibrate)
    return result


def data_info(dm) -> Dict[str, Any]:
    """Trial counts, filters and split of a data module (JSON-serialisable)."""
    rep = dict(dm.filter_report)
    return {
        "source": dm.session.source or dm.session.session_name,
        "n_trials_loaded": rep.get("n_before", dm.session.n_trials),
        "n_trials_kept": rep.get("n_after", dm.session.n_trials),
        "filters": dict(dm.filters or {}),
        "removed_by_filter": {k: v for k, v in rep.items() if k not in ("n_before", "n_after")},
        "n_train": int(dm.train_idx.size), "n_val": int(dm.val_idx.size),
        "cv_folds": getattr(dm, "cv_folds", None),
        "cv_fold": getattr(dm, "cv_fold", None) if getattr(dm, "cv_folds", None) else None,
        "n_neurons": int(dm.n_neurons), "n_E": int(np.sum(dm.is_excitatory)),
        "n_I": int(np.sum(~np.asarray(dm.is_excitatory, dtype=bool))),
    }


def condition_config_of(cfg) -> Dict[str, Any]:
    """``evaluation.condition`` of a run config (defaults for runs that predate it); a bad
    value is an :class:`EvaluationError`."""
    from eirnn.condition_scores import condition_config

    node = (cfg.get("evaluation") or {}).get("condition") if hasattr(cfg, "get") else None
    try:
        return condition_config(node)
    except ValueError as err:
        raise EvaluationError(str(err)) from err

