"""Score a trained run against baselines and the noise ceiling: ``python -m eirnn.evaluate RUN_DIR``.

What it does (one run folder written by ``python -m eirnn.train``, or a fold of
``python -m eirnn.cv``):

1. loads ``RUN_DIR/.hydra/config.yaml`` and rebuilds the data module, model and
   LightningModule with :func:`eirnn.train.build_datamodule` / ``build_model`` /
   ``build_module``; loads ``checkpoints/best.ckpt`` (``--checkpoint last|best|PATH``);
2. runs the model on the run's validation trials: its *predicted rate* is the expected
   rate given the trial's inputs (see "Predicted rates" below), and one noise draw with
   the module's fixed validation seed (``module.val_seed``, the draw of training-time
   validation, so ``psth_corr_sample`` equals the logged best ``val/psth_corr``) is kept
   as a sample of the model's trial-to-trial variability;
3. fits the baselines (:mod:`eirnn.baselines`) on the run's training trials and
   predicts the same validation trials;
4. scores every predictor with :func:`score_prediction` and computes the noise ceiling
   of a PSTH over as many trials as the validation set has, from the data alone
   (:func:`noise_ceiling`: split halves of the training + validation trials, extrapolated
   with the Spearman-Brown formula; :func:`eirnn.metrics.psth_noise_ceiling`);
5. writes ``RUN_DIR/evaluation.json``, ``RUN_DIR/evaluation.md`` and TensorBoard
   scalars ``eval/<set>/<predictor>/<metric>`` under ``RUN_DIR/tensorboard``.

Metrics of one predictor (``[K, T, N]`` rates scored against the recorded trials;
every per-neuron metric also as its mean over E and over I neurons, suffix ``_E``/``_I``):

==========================  ===========================================================
``psth_corr``               the lab's metric: per-neuron Pearson r over time of the PSTHs
                            averaged over all scored trials, mean over neurons
``condition_psth_corr``     the same on the stacked condition-averaged PSTHs
                            (conditions = location x identity x reward x salience)
``condition_psth_r2``       NLB PSTH R2 on the stacked condition-averaged PSTHs
``bits_per_spike``          single-trial Poisson log-likelihood gain over each neuron's
                            mean rate (NLB), in bits per spike (pooled over neurons)
``fano_within_2x``          fraction of neurons whose model Fano factor (Poisson spikes
                            from the predicted rates, within condition, spike counts in
                            windows of ``FANO_WINDOW_MS``) is within a factor 2 of the
                            data's; ``fano_model_median`` / ``fano_data_median``
``L_trial``                 the run's Sinkhorn trial-matching loss on the scored trials
``bits_per_spike_uncal``    bits/spike of the predicted rate before the calibration below
                            (for a model: of its fitted spike readout's rates)
``bits_per_spike_network``  a model with a fitted spike readout: bits/spike of the
                            network's rates themselves
``*_sample``                ``psth_corr`` / ``bits_per_spike`` of the model's single noise
                            draw, uncalibrated (what training-time validation logs),
                            models only
==========================  ===========================================================

Predicted rates (defined here, once, for every predictor). A predictor's rate for trial
``b`` is its expected rate given what is known before the trial's spikes are seen (its
task inputs ``u_b`` and condition)::

    lambda_b[t, n] = E_xi[ r_n(t; u_b, xi) ]  ~=  (1/S) sum_{s=1..S} r_n(t; u_b, xi_s)

for a model with state noise ``xi`` (``S`` = ``noise_draws`` draws, seeds ``val_seed + s``;
``S = 0``: the noise-free forward pass), and the prediction itself for the (deterministic)
baselines. ``psth_corr``, the condition PSTH metrics and ``bits_per_spike`` score
``lambda``; bits/spike is then the NLB log-likelihood of Poisson counts with mean
``lambda dt`` (:func:`eirnn.metrics.bits_per_spike`), so the model's own noise is not
scored as if it were a prediction. The Fano factor and ``L_trial``, which are about
trial-to-trial *variability*, score one sample of the model (the validation-seed draw);
a baseline's sample is its prediction.

Spike readout (:mod:`eirnn.models.readout`). A model fitted since the readout exists
carries a per-neuron Poisson readout ``max(gain r + offset, floor)`` of its network rates,
fitted on the training trials at the end of training; its bits/spike scores the readout's
rates, every other metric the network's rates (the readout is a positive affine map per
neuron: the PSTH correlations are unchanged by it unless a gain is 0).

Calibration (``calibrate``, default on; :mod:`eirnn.calibration`). ``bits_per_spike`` (and
only it) scores every predictor's expected rate after its per-neuron affine map
``max(a_n p + c_n, floor)``, ``a_n >= 0``, fitted by Poisson maximum likelihood on the
*training* trials from the predictor's own predictions for them: the lab's correlation loss
leaves each neuron's rate scale free, which a single-trial Poisson score punishes. The
training mean and condition-mean PSTHs are their own optimum (``a = 1, c = 0``).
``bits_per_spike_uncal`` keeps the value of the rates as predicted; every other metric
scores the rates as predicted.

Sets: ``val`` (the run's validation trials). For a cross-validation fold whose filters
removed trials, also ``val_all``: every trial of the fold as recorded, filtered ones
included (all predictors are scored on the same trials in both sets, so filtering
cannot flatter one model over another). The model's fit to its own training trials
(``train_fit``) is reported to tell under- from over-fitting.

Caveat printed in the report: with the default callbacks the checkpoint was chosen on
these validation trials (best ``val/psth_corr``), which biases the model's validation
score upwards; ``--checkpoint last`` avoids the selection.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from eirnn.errors import UserError

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
    """All metrics of one predictor (see the module docstring for their definitions).

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


# --------------------------------------------------------------------------- running a model


def predict_rates(module, tensors: Mapping[str, Any], batch_size: int = 0, seed: Optional[int] = None,
                  noise: bool = True) -> np.ndarray:
    """Run ``module.model`` on ``tensors["inputs"]`` -> ``[K, T, N]`` float64 rates of the
    recorded units: one noise draw (``noise=False``: the noise-free forward pass).

    The noise is drawn from one generator seeded with ``seed`` (default
    ``module.val_seed``) across the batches of
    :class:`~eirnn.data.datamodule.TrialBatchLoader` (``batch_size`` 0 = one batch), so
    on the run's validation tensors the default reproduces the logged validation metrics.
    """
    import torch

    from eirnn.data.datamodule import TrialBatchLoader

    model = module.model
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator(device=device)
    gen.manual_seed(int(module.val_seed if seed is None else seed))
    out = []
    with torch.no_grad():
        for batch in TrialBatchLoader(dict(tensors), batch_size, shuffle=False):
            r = model(batch["inputs"].to(device), noise=noise, generator=gen).rates[..., : model.n_recorded]
            out.append(r.float().cpu())
    return torch.cat(out).numpy().astype(np.float64)


#: Noise draws averaged into a model's predicted (expected) rate (module docstring).
DEFAULT_NOISE_DRAWS = 10


def predict_expected_rates(module, tensors: Mapping[str, Any], batch_size: int = 0,
                           noise_draws: int = DEFAULT_NOISE_DRAWS) -> Tuple[np.ndarray, np.ndarray]:
    """A model's predicted rate and one sample of it (see "Predicted rates" above).

    Returns ``(expected, sample)``, both ``[K, T, N]``: ``expected`` = the mean of
    ``noise_draws`` draws (seeds ``val_seed + s``, ``s = 0 .. S-1``; ``S = 0``: the
    noise-free pass), ``sample`` = the ``val_seed`` draw (the one training-time validation
    scores).
    """
    s = int(noise_draws)
    if s < 0:
        raise ValueError(f"noise_draws must be >= 0, got {noise_draws}")
    sample = predict_rates(module, tensors, batch_size)
    if s == 0:
        return predict_rates(module, tensors, batch_size, noise=False), sample
    total = sample.copy()
    for k in range(1, s):
        total += predict_rates(module, tensors, batch_size, seed=int(module.val_seed) + k)
    return total / s, sample


def model_predictions(module, tensors: Mapping[str, Any], batch_size: int = 0,
                      noise_draws: int = DEFAULT_NOISE_DRAWS) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A model's predictions ``(expected, sample, spike_rate)``, each ``[K, T, N]``.

    ``expected`` and ``sample`` are the network's rates (:func:`predict_expected_rates`);
    ``spike_rate`` is ``expected`` through the model's fitted spike readout
    (:mod:`eirnn.models.readout`; ``expected`` itself when it is not fitted), the rate of
    the Poisson spike counts that bits/spike scores.
    """
    pred, sample = predict_expected_rates(module, tensors, batch_size, noise_draws)
    readout = getattr(module.model, "spike_readout", None)
    if readout is None or not readout.is_fitted:
        return pred, sample, pred
    return pred, sample, readout.apply_numpy(pred)


def _resolve_checkpoint(run_dir: Path, checkpoint: str) -> Path:
    if checkpoint in ("best", "last"):
        path = run_dir / "checkpoints" / f"{checkpoint}.ckpt"
        if checkpoint == "best" and not path.exists():
            path = run_dir / "checkpoints" / "last.ckpt"
    else:
        path = Path(checkpoint)
    if not path.exists():
        raise EvaluationError(f"{run_dir}: no checkpoint {path} (train the run first, or pass --checkpoint PATH)")
    return path


def load_config(run_dir: Path):
    """``RUN_DIR/.hydra/config.yaml`` with ``paths.output_dir`` set to ``run_dir``."""
    from omegaconf import OmegaConf, open_dict

    path = run_dir / ".hydra" / "config.yaml"
    if not path.exists():
        raise EvaluationError(f"{run_dir}: not a run folder ({path} is missing)")
    cfg = OmegaConf.load(path)
    with open_dict(cfg):
        cfg.paths = cfg.get("paths") or {}
        cfg.paths.output_dir = str(run_dir)
        data = cfg.get("data")
        if data is not None and isinstance(data.get("path", None), str):
            from eirnn.run_dir import run_relative_path

            # a relative data.path is relative to where the training started, not to here
            found = run_relative_path(run_dir, data.path)
            if found is not None:
                data.path = found
    return cfg


def _epoch1(epoch) -> str:
    """A checkpoint's 0-based ``epoch`` index as people read it (counted from 1, like the
    console, train.log, TensorBoard's step, training_report.md and the export)."""
    return "n/a" if epoch is None else str(int(epoch) + 1)


def load_module(cfg, dm, checkpoint_path: Path):
    """Model + LightningModule of ``cfg`` on ``dm``, weights from ``checkpoint_path``.

    Returns ``(module, epoch)`` (epoch of the checkpoint, or None).
    """
    import torch

    from eirnn.runs.build import build_model, build_module, read_checkpoint

    model = build_model(cfg, dm)
    module = build_module(cfg, model, dm)
    ckpt = read_checkpoint(checkpoint_path, module, hint="is it this run's checkpoint?")
    module.load_state_dict(ckpt["state_dict"])
    module.eval()
    return module, ckpt.get("epoch")


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
            and score the calibrated rates (module docstring).
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
            if name in calib:  # the single-trial score of the calibrated rates (module docstring)
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


def evaluate_run(run_dir: str | Path, checkpoint: str = "best", baselines: Sequence[str] = DEFAULT_BASELINES,
                 extra_runs: Optional[Mapping[str, str | Path]] = None, ceiling_splits: int = 50, seed: int = 0,
                 write: bool = True, baseline_kwargs: Optional[Mapping[str, dict]] = None,
                 noise_draws: int = DEFAULT_NOISE_DRAWS, calibrate: bool = True) -> Dict[str, Any]:
    """Evaluate one run folder (see the module docstring); returns the ``evaluation.json`` dict.

    ``extra_runs`` = ``{name: RUN_DIR or (RUN_DIR, checkpoint)}`` of other runs trained on
    the same data config (e.g. the unconstrained RNN of a CV fold; or this run with another
    checkpoint): their models are scored on the same trials. ``baseline_kwargs`` =
    ``{baseline: constructor kwargs}``.
    """
    from eirnn.run_dir import refuse_if_running
    from eirnn.runs.build import build_datamodule

    refuse_if_running(run_dir, "evaluate")  # its split, config and checkpoints may still change

    run_dir = Path(run_dir)
    cfg = load_config(run_dir)
    ckpt = _resolve_checkpoint(run_dir, checkpoint)
    try:
        dm = build_datamodule(cfg)
    except UserError as err:
        raise EvaluationError(f"{run_dir}: {err}") from err
    module, epoch = load_module(cfg, dm, ckpt)
    modules = {"model": module}
    ckpts = {"model": {"path": str(ckpt), "epoch": epoch}}
    for name, other in (extra_runs or {}).items():
        other, rule = (other if isinstance(other, (tuple, list)) else (other, checkpoint))
        other = Path(other)
        ocfg = load_config(other)
        if ocfg.data != cfg.data:
            raise EvaluationError(f"{other}: its data config differs from {run_dir}'s; cannot score on the same trials")
        ock = _resolve_checkpoint(other, rule)
        modules[name], oep = load_module(ocfg, dm, ock)
        ckpts[name] = {"path": str(ock), "epoch": oep}
    result = evaluate_modules(dm, modules, baselines, ceiling_splits, seed, baseline_kwargs, noise_draws=noise_draws,
                              calibrate=calibrate, condition_cfg=condition_config_of(cfg))
    result.update({"run_dir": str(run_dir), "checkpoints": ckpts, "checkpoint_rule": checkpoint, "data": data_info(dm)})
    metrics_json = run_dir / "metrics.json"
    if metrics_json.exists():
        try:
            logged = json.loads(metrics_json.read_text()).get("best", {})
            result["logged_best_val_psth_corr"] = logged.get("val/psth_corr")
        except (ValueError, OSError):
            pass
    if write:
        write_outputs(run_dir, result, step=int(epoch or 0) + 1)  # TensorBoard step = epoch counted from 1, as in training
    return result


def condition_config_of(cfg) -> Dict[str, Any]:
    """``evaluation.condition`` of a run config (defaults for runs that predate it); a bad
    value is an :class:`EvaluationError`."""
    from eirnn.condition_scores import condition_config

    node = (cfg.get("evaluation") or {}).get("condition") if hasattr(cfg, "get") else None
    try:
        return condition_config(node)
    except ValueError as err:
        raise EvaluationError(str(err)) from err


# --------------------------------------------------------------------------- output


def _clean(obj: Any) -> Any:
    """JSON-safe copy: numpy -> python, NaN/inf -> None."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def _f(v: Any, spec: str = ".3f") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return format(v, spec)


def _cell(s: Mapping[str, Any], name: str, spec: str = ".3f") -> str:
    if name not in s:
        return ""
    return f"{_f(s.get(name), spec)} ({_f(s.get(name + '_E'), spec)} / {_f(s.get(name + '_I'), spec)})"


TABLE_HEADER = ("| predictor | psth_corr (E / I) | condition PSTH corr (E / I) | condition PSTH R2 (E / I) "
                "| bits/spike (E / I) | Fano within 2x (E / I) | L_trial |")


def table_rows(scores: Mapping[str, Mapping[str, Any]], ceiling: Optional[Mapping[str, Any]] = None) -> List[str]:
    """Markdown table (header + rows) of predictor scores and the noise ceiling."""
    lines = [TABLE_HEADER, "|" + "---|" * 7]
    for name, s in scores.items():
        lines.append(f"| {name} | {_cell(s, 'psth_corr')} | {_cell(s, 'condition_psth_corr')} | "
                     f"{_cell(s, 'condition_psth_r2')} | {_cell(s, 'bits_per_spike', '.4f')} | "
                     f"{_cell(s, 'fano_within_2x', '.2f')} | {_f(s.get('L_trial'), '.3g')} |")
    if ceiling:
        lines.append(f"| noise ceiling (data) | {_cell(ceiling, 'psth_corr')} | {_cell(ceiling, 'condition_psth_corr')} | "
                     f"{_cell(ceiling, 'condition_psth_r2')} | | | |")
    return lines


#: Columns of the factor table: (metric key, header).
FACTOR_COLUMNS = (("condition_psth_r2_raw", "cond. R2 raw"), ("condition_psth_r2_fixaligned", "cond. R2 fix-aligned"),
                  *((f"marginal_corr_{f}", f"marg. {f[:3]}") for f in ("location", "identity", "salience", "reward")),
                  *((f"selectivity_r_{f}", f"sel. r {f[:3]}") for f in ("location", "identity", "salience", "reward")),
                  *((f"selectivity_auc_r_{f}", f"AUC r {f[:3]}") for f in ("location", "identity", "salience", "reward")))


def factor_table_rows(scores: Mapping[str, Mapping[str, Any]], ceiling: Optional[Mapping[str, Any]] = None) -> List[str]:
    """Markdown table of the condition- and factor-resolved metrics (issue 15)."""
    lines = ["| predictor | " + " | ".join(h for _, h in FACTOR_COLUMNS) + " |", "|---" * (len(FACTOR_COLUMNS) + 1) + "|"]
    rows = dict(scores)
    if ceiling:
        rows["noise ceiling (data)"] = ceiling
    for name, s in rows.items():
        lines.append(f"| {name} | " + " | ".join(_f(s.get(k)) if k in s else "" for k, _ in FACTOR_COLUMNS) + " |")
    return lines


def format_markdown(result: Mapping[str, Any]) -> str:
    """The short ``evaluation.md`` report."""
    d = result.get("data", {})
    removed = ", ".join(f"{k} removed {v}" for k, v in d.get("removed_by_filter", {}).items()) or "none"
    ck = result.get("checkpoints", {}).get("model", {})
    lines = [
        f"# Evaluation of `{result.get('run_dir', '')}`",
        "",
        f"- data: `{d.get('source')}`: {d.get('n_trials_kept')} of {d.get('n_trials_loaded')} trials kept "
        f"(filters {d.get('filters') or 'none'}: {removed}); {d.get('n_neurons')} neurons "
        f"({d.get('n_E')} E / {d.get('n_I')} I)",
        f"- split: {d.get('n_train')} training / {d.get('n_val')} validation trials"
        + (f" (fold {d.get('cv_fold')} of {d.get('cv_folds')})" if d.get("cv_folds") else ""),
        f"- checkpoint: `{ck.get('path')}` (epoch {_epoch1(ck.get('epoch'))}, rule `{result.get('checkpoint_rule')}`)",
    ]
    if result.get("checkpoint_rule") == "best":
        lines.append("- note: the `best` checkpoint was selected on these validation trials, which biases "
                     "the model's scores upwards (baselines had no such selection)")
    tf = result.get("train_fit", {})
    if tf:
        lines.append("- fit to own training trials (psth_corr): "
                     + ", ".join(f"{k} {_f(v.get('psth_corr'))}" for k, v in tf.items()))
    for set_name, s in result.get("sets", {}).items():
        title = {"val": "Validation trials", "val_all": "All recorded trials of the validation fold (filtered ones included)"}
        lines += ["", f"## {title.get(set_name, set_name)} (n = {s['n_trials']})", ""]
        lines += table_rows(s["scores"], s.get("ceiling"))
        lines += ["", "Condition- and factor-resolved (calibrated rates unless `raw`; event-aligned, smoothed; "
                  "see experiments/evaluation.md):", ""]
        lines += factor_table_rows(s["scores"], s.get("ceiling"))
    lines += ["", f"Models are scored on their expected rate given the trial's inputs (mean of "
              f"{result.get('noise_draws', DEFAULT_NOISE_DRAWS)} noise draws; 0 = noise-free), the Fano factor and "
              "L_trial on one draw"
              + ("; bits/spike of every predictor after its per-neuron affine calibration on the training "
                 "trials (eirnn.calibration; before it: `bits_per_spike_uncal` in evaluation.json)."
                 if result.get("calibrated") else ".")]
    lines += ["", "psth_corr: the lab's metric (PSTH over all scored trials). Conditions: location x identity x "
              "reward x salience. bits/spike: single-trial Poisson, vs each neuron's mean rate. Fano within 2x: "
              f"fraction of neurons (counts in {FANO_WINDOW_MS:g} ms windows). Noise ceiling: split-half reliability of the scored trials with the "
              "Spearman-Brown correction (sqrt for correlations), measured on training + scored trials and extrapolated "
              "to the scored trial count, see eirnn.metrics.psth_noise_ceiling.", ""]
    return "\n".join(lines)


def write_outputs(run_dir: Path, result: Mapping[str, Any], step: int = 0, prefix: str = "eval",
                  stem: str = "evaluation") -> None:
    """``<stem>.json`` + ``<stem>.md`` in ``run_dir`` and scalars under ``run_dir/tensorboard``."""
    from eirnn.training.callbacks import write_json_atomic

    write_json_atomic(run_dir / f"{stem}.json", _clean(result))
    md = format_markdown(result) if stem == "evaluation" else result.get("markdown", "")
    from eirnn.utils import write_text_atomic

    write_text_atomic(run_dir / f"{stem}.md", md)
    write_tensorboard(run_dir / "tensorboard", result, step, prefix, md)


def write_tensorboard(tb_dir: Path, result: Mapping[str, Any], step: int, prefix: str, text: str = "") -> None:
    """Scalars ``<prefix>/<set>/<predictor>/<metric>`` (and the ceiling) + the table as text."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # pragma: no cover - tensorboard is a dependency
        return
    writer = SummaryWriter(log_dir=str(tb_dir))
    try:
        for set_name, s in result.get("sets", {}).items():
            groups = dict(s.get("scores", {}))
            if s.get("ceiling"):
                groups["ceiling"] = s["ceiling"]
            for pred, metrics in groups.items():
                for k, v in metrics.items():
                    if isinstance(v, (int, float)) and math.isfinite(float(v)):
                        writer.add_scalar(f"{prefix}/{set_name}/{pred}/{k}", float(v), step)
        if text:
            writer.add_text(f"{prefix}/report", text, step)
    finally:
        writer.close()


def print_summary(result: Mapping[str, Any]) -> None:
    s = result["sets"]["val"]
    print("\n".join(table_rows(s["scores"], s.get("ceiling"))), flush=True)


# --------------------------------------------------------------------------- CLI


def main(argv: Optional[Iterable[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eirnn.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", help="a run folder of python -m eirnn.train (holds .hydra/config.yaml)")
    parser.add_argument("--checkpoint", default="best", help="best (default), last, or a .ckpt path")
    parser.add_argument("--baselines", default=",".join(DEFAULT_BASELINES),
                        help="comma-separated baselines to fit (default: %(default)s; '' for none)")
    parser.add_argument("--compare", action="append", default=[], metavar="NAME=RUN_DIR",
                        help="also score another run trained on the same data (repeatable)")
    parser.add_argument("--ceiling-splits", type=int, default=50, help="random half splits of the noise ceiling")
    parser.add_argument("--seed", type=int, default=0, help="seed of the ceiling splits and baseline inner folds")
    parser.add_argument("--noise-draws", type=int, default=DEFAULT_NOISE_DRAWS,
                        help="noise draws averaged into a model's predicted rate (0: noise-free pass; default %(default)s)")
    parser.add_argument("--no-calibration", action="store_true",
                        help="score the predictors' rates as they are (no per-neuron affine calibration)")
    args = parser.parse_args(None if argv is None else list(argv))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    names = [b for b in args.baselines.split(",") if b.strip()]
    try:
        from eirnn.baselines import BASELINES

        unknown = [b for b in names if b not in BASELINES]
        if unknown:
            raise EvaluationError(f"--baselines: unknown {unknown}; known: {sorted(BASELINES)}")
        extra = {}
        for item in args.compare:
            if "=" not in item:
                raise EvaluationError(f"--compare: expected NAME=RUN_DIR, got {item!r}")
            k, v = item.split("=", 1)
            extra[k] = v
        run_dir = Path(args.run_dir)
        if not run_dir.is_dir():
            raise EvaluationError(f"{run_dir}: no such run folder")
        if args.noise_draws < 0:
            raise EvaluationError(f"--noise-draws must be >= 0, got {args.noise_draws}")
        result = evaluate_run(run_dir, args.checkpoint, names, extra, args.ceiling_splits, args.seed,
                              noise_draws=args.noise_draws, calibrate=not args.no_calibration)
    except UserError as err:  # EvaluationError, DataFormatError, RunFolderError, DiskFullError, ...
        from eirnn.errors import exit_user_error

        return exit_user_error(err)
    print_summary(result)
    print(f"wrote {run_dir / 'evaluation.json'}, {run_dir / 'evaluation.md'} and TensorBoard scalars "
          f"under {run_dir / 'tensorboard'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
