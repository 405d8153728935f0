"""k-fold cross-validation: ``python -m eirnn.cv [train overrides] cv.folds=5``.

Takes the same Hydra overrides as ``python -m eirnn.train`` (``conf/cv.yaml`` composes
``conf/train.yaml`` and adds a ``cv:`` block). For each fold ``i`` of ``cv.folds``:

1. trains the configured model on the other folds' trials
   (``data.cv_folds=k data.cv_fold=i``: the partition is stratified by condition and
   built on the trials as loaded, before filters; see
   :class:`~eirnn.data.SessionDataModule`) into ``<run>/fold_i/``;
2. trains the unconstrained RNN (same config with ``model.dale=false``) into
   ``<run>/fold_i/unconstrained/`` when ``unconstrained_rnn`` is in ``cv.baselines``;
3. scores both, the other baselines and the noise ceiling on the fold's validation
   trials with :func:`eirnn.evaluation.run.evaluate_run` (``fold_i/evaluation.json``).

Then writes ``<run>/cv_metrics.json`` (for each scored set, predictor and metric:
mean, std over folds (ddof 1) and the per-fold values; the same for the noise
ceiling; and whether the model beats each baseline on every fold),
``<run>/cv_metrics.md`` and TensorBoard scalars ``cv/<set>/<predictor>/<metric>``.

``cv.train_model=false`` trains nothing and scores only the fitted baselines and the noise
ceiling (quick: what any model has to beat on these folds).

``cv.checkpoint=last`` (default) scores the last checkpoint (the final epoch's weights,
``callbacks.last_checkpoint``), chosen without looking at the scored fold; the ``best``
checkpoint (selected on that fold) is scored as well, as ``model_best_ckpt``, to show the
size of that selection bias. Caveat: the training config's early stopping and
ReduceLROnPlateau still watch the fold's validation metric (when to stop, when to halve
the learning rate), a milder use of the scored trials than choosing the checkpoint, unless
``data.es_fraction`` > 0: then those (and the best checkpoint) watch an early-stopping share
of the training folds' trials, and no training decision sees the scored fold.
"""
from __future__ import annotations

import copy
import json
import logging
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict

from eirnn.errors import cli_main
from eirnn.train import CONFIG_DIR, UserError

log = logging.getLogger("eirnn.cv")

#: Metrics compared fold by fold in ``beats`` (higher is better for each).
COMPARED = ("psth_corr", "bits_per_spike", "condition_psth_corr", "condition_psth_r2",
            "marginal_corr_location", "marginal_corr_identity", "marginal_corr_salience", "marginal_corr_reward",
            "selectivity_r_location", "selectivity_r_identity", "selectivity_r_salience", "selectivity_r_reward")


def fold_config(cfg: DictConfig, fold: int, out_dir: Path, dale: bool | None = None) -> DictConfig:
    """The training config of one fold: ``data.cv_*`` set, output in ``out_dir``."""
    fcfg = copy.deepcopy(cfg)
    with open_dict(fcfg):
        fcfg.data.cv_folds = int(cfg.cv.folds)
        fcfg.data.cv_fold = int(fold)
        fcfg.data.cv_seed = int(cfg.cv.seed)
        fcfg.paths.output_dir = str(out_dir)
        fcfg.task_name = "train"
        fcfg.print_config = False  # logged once by run_cv, not again per fold and model
        if dale is not None:
            fcfg.model.dale = bool(dale)
    return fcfg


def _train_fold(fcfg: DictConfig, out_dir: Path, resume: bool) -> None:
    from eirnn.train import train

    done = (out_dir / "metrics.json").exists() and (out_dir / "checkpoints" / "last.ckpt").exists()
    if resume and done:
        log.info("fold run %s already trained: reusing it", out_dir)
        return
    (out_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    from eirnn.utils import write_text_atomic

    write_text_atomic(out_dir / ".hydra" / "config.yaml", OmegaConf.to_yaml(fcfg))
    train(fcfg)


def run_fold(cfg: DictConfig, fold: int, out: Path) -> Dict[str, Any]:
    """Train (unless already done) and evaluate fold ``fold``; returns its evaluation dict."""
    from eirnn.baselines import BASELINES
    from eirnn.evaluation.run import evaluate_run

    fold_dir = out / f"fold_{fold}"
    ev_path = fold_dir / "evaluation.json"
    if cfg.cv.resume and ev_path.exists():
        log.info("fold %d already evaluated: reusing %s", fold, ev_path)
        return json.loads(ev_path.read_text())
    names = list(cfg.cv.baselines or [])
    unknown = [b for b in names if b not in BASELINES and b != "unconstrained_rnn"]
    if unknown:
        raise UserError(f"cv.baselines: unknown {unknown}; known: {sorted(BASELINES) + ['unconstrained_rnn']}")
    log.info("=== fold %d of %d ===", fold, cfg.cv.folds)
    if not bool(cfg.cv.get("train_model", True)):
        return _baselines_only(cfg, fold, fold_dir, [b for b in names if b in BASELINES])
    _train_fold(fold_config(cfg, fold, fold_dir), fold_dir, bool(cfg.cv.resume))
    extra: Dict[str, Any] = {}
    if "unconstrained_rnn" in names:
        udir = fold_dir / "unconstrained"
        _train_fold(fold_config(cfg, fold, udir, dale=False), udir, bool(cfg.cv.resume))
        extra["unconstrained_rnn"] = udir
    rule = str(cfg.cv.checkpoint)
    if rule not in ("best", "last"):
        raise UserError(f"cv.checkpoint must be best or last, got {rule!r}")
    if rule == "last":
        extra["model_best_ckpt"] = (fold_dir, "best")
    return evaluate_run(fold_dir, checkpoint=rule, baselines=[b for b in names if b in BASELINES],
                        extra_runs=extra, ceiling_splits=int(cfg.cv.ceiling_splits), seed=int(cfg.cv.seed),
                        noise_draws=_noise_draws(cfg), calibrate=bool(cfg.cv.get("calibrate", True)))


def _noise_draws(cfg: DictConfig) -> int:
    from eirnn.evaluation.predict import DEFAULT_NOISE_DRAWS

    n = cfg.cv.get("noise_draws", DEFAULT_NOISE_DRAWS)
    n = DEFAULT_NOISE_DRAWS if n is None else int(n)
    if n < 0:
        raise UserError(f"cv.noise_draws must be >= 0, got {n}")
    return n


def _baselines_only(cfg: DictConfig, fold: int, fold_dir: Path, baselines: List[str]) -> Dict[str, Any]:
    """``cv.train_model=false``: baselines and the ceiling of one fold, no RNN trained."""
    from eirnn.evaluation.score import condition_config_of, data_info, evaluate_modules, trial_term_from_config
    from eirnn.evaluation.tables import write_outputs
    from eirnn.runs.build import build_datamodule

    fcfg = fold_config(cfg, fold, fold_dir)
    fold_dir.mkdir(parents=True, exist_ok=True)
    from eirnn.utils import write_text_atomic

    write_text_atomic(fold_dir / "fold_config.yaml", OmegaConf.to_yaml(fcfg))
    dm = build_datamodule(fcfg)
    result = evaluate_modules(dm, {}, baselines, int(cfg.cv.ceiling_splits), int(cfg.cv.seed),
                              trial_term=trial_term_from_config(fcfg.loss, dm.bin_size_ms),
                              calibrate=bool(cfg.cv.get("calibrate", True)),
                              condition_cfg=condition_config_of(fcfg))
    result.update({"run_dir": str(fold_dir), "checkpoints": {}, "checkpoint_rule": None, "data": data_info(dm)})
    write_outputs(fold_dir, result)
    return result


def _stats(values: List[float | None]) -> Dict[str, Any]:
    v = np.array([np.nan if x is None else float(x) for x in values], dtype=float)
    fin = v[np.isfinite(v)]
    return {
        "mean": float(fin.mean()) if fin.size else None,
        "std": float(fin.std(ddof=1)) if fin.size > 1 else None,
        "per_fold": [None if not math.isfinite(x) else float(x) for x in v],
    }


def aggregate(evaluations: Mapping[int, Mapping[str, Any]]) -> Dict[str, Any]:
    """Mean / std / per-fold of every metric of every predictor and of the ceiling.

    Returns ``{"folds": [...], "sets": {set: {"n_trials": per-fold, "scores": {predictor:
    {metric: stats}}, "ceiling": {metric: stats}, "beats": {baseline: {metric: bool}}}}}``;
    ``beats[b][m]`` is True when the model's value exceeds baseline ``b``'s on every fold.
    """
    folds = sorted(evaluations)
    out: Dict[str, Any] = {"folds": folds, "sets": {}}
    set_names = sorted({s for ev in evaluations.values() for s in ev["sets"]}, key=lambda s: (s != "val", s))
    for set_name in set_names:
        evs = [evaluations[f]["sets"].get(set_name) for f in folds]
        present = [e for e in evs if e is not None]
        predictors = list(dict.fromkeys(p for e in present for p in e["scores"]))
        scores = {}
        for p in predictors:
            keys = list(dict.fromkeys(k for e in present for k in e["scores"].get(p, {})))
            scores[p] = {k: _stats([None if e is None else e["scores"].get(p, {}).get(k) for e in evs]) for k in keys}
        ckeys = list(dict.fromkeys(k for e in present for k in e.get("ceiling", {})))
        ceiling = {k: _stats([None if e is None else e.get("ceiling", {}).get(k) for e in evs]) for k in ckeys}
        beats = {}
        if "model" in scores:
            for p in predictors:
                if p == "model":
                    continue
                beats[p] = {}
                for m in COMPARED:
                    a, b = scores["model"].get(m, {}).get("per_fold"), scores[p].get(m, {}).get("per_fold")
                    if a is None or b is None:
                        continue
                    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
                    if pairs:
                        beats[p][m] = all(x > y for x, y in pairs)
        out["sets"][set_name] = {"n_trials": [None if e is None else e["n_trials"] for e in evs],
                                 "scores": scores, "ceiling": ceiling, "beats": beats}
    first = evaluations[folds[0]] if folds else {}
    out["data"] = first.get("data", {})
    out["removed_by_filter_per_fold"] = [evaluations[f].get("data", {}).get("removed_by_filter") for f in folds]
    out["train_fit"] = {p: _stats([evaluations[f].get("train_fit", {}).get(p, {}).get("psth_corr") for f in folds])
                        for p in dict.fromkeys(p for f in folds for p in evaluations[f].get("train_fit", {}))}
    return out


_SPEC = {"L_trial": ".3g", "bits_per_spike": ".4f", "bits_per_spike_uncal": ".4f"}


def _ms(st: Mapping[str, Any] | None, spec: str = ".3f") -> str:
    if not st or st.get("mean") is None:
        return "n/a"
    sd = st.get("std")
    return f"{st['mean']:{spec}} ± {sd:{spec}}" if sd is not None else f"{st['mean']:{spec}}"


def format_markdown(agg: Mapping[str, Any], title: str = "") -> str:
    """``cv_metrics.md``: one table per scored set (mean ± std over folds)."""
    d = agg.get("data", {})
    lines = [f"# Cross-validation{': ' + title if title else ''}", "",
             f"- data: `{d.get('source')}`, {d.get('n_trials_kept')} of {d.get('n_trials_loaded')} trials kept "
             f"(filters {d.get('filters') or 'none'}; removed per fold's data set: {d.get('removed_by_filter') or 'none'})",
             f"- folds: {len(agg.get('folds', []))} of {d.get('cv_folds')} (stratified by condition, built before "
             "filtering); mean ± std over folds"]
    tf = agg.get("train_fit", {})
    if tf:
        lines.append("- fit to own training trials (psth_corr): " + ", ".join(f"{k} {_ms(v)}" for k, v in tf.items()))
    cols = [("psth_corr", "psth_corr"), ("psth_corr_E", "E"), ("psth_corr_I", "I"),
            ("condition_psth_corr", "cond. corr"), ("condition_psth_r2", "cond. R2"),
            ("bits_per_spike", "bits/spike"), ("bits_per_spike_uncal", "bits/spike uncal."),
            ("fano_within_2x", "FF within 2x"), ("L_trial", "L_trial")]
    for set_name, s in agg.get("sets", {}).items():
        head = {"val": "Validation folds", "val_all": "All recorded trials of each validation fold (filtered ones included)"}
        lines += ["", f"## {head.get(set_name, set_name)} (trials per fold: {s['n_trials']})", "",
                  "| predictor | " + " | ".join(c for _, c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for p, sc in s["scores"].items():
            lines.append(f"| {p} | " + " | ".join(_ms(sc.get(k), _SPEC.get(k, ".3f")) for k, _ in cols) + " |")
        if s.get("ceiling"):
            lines.append("| noise ceiling | " + " | ".join(_ms(s["ceiling"].get(k)) if k in s["ceiling"] else ""
                                                         for k, _ in cols) + " |")
        fcols = [("condition_psth_r2_raw", "cond. R2 raw"), ("condition_psth_corr", "cond. corr")] + [
            (f"{m}_{f}", f"{h} {f[:3]}") for m, h in (("marginal_corr", "marg."), ("selectivity_r", "sel. r"),
                                                      ("selectivity_auc_r", "AUC r"))
            for f in ("location", "identity", "salience", "reward")]
        lines += ["", "Condition- and factor-resolved metrics (issue 15; experiments/evaluation.md):", "",
                  "| predictor | " + " | ".join(c for _, c in fcols) + " |", "|---" * (len(fcols) + 1) + "|"]
        for p, sc in s["scores"].items():
            lines.append(f"| {p} | " + " | ".join(_ms(sc.get(k)) for k, _ in fcols) + " |")
        if s.get("ceiling"):
            lines.append("| noise ceiling | " + " | ".join(_ms(s["ceiling"].get(k)) if k in s["ceiling"] else ""
                                                         for k, _ in fcols) + " |")
        if s.get("beats"):
            lines += ["", "Model above the baseline on every fold: "
                      + "; ".join(f"{b}: " + ", ".join(f"{m} {'yes' if v else 'NO'}" for m, v in ms.items())
                                  for b, ms in s["beats"].items())]
    return "\n".join(lines) + "\n"


def run_cv(cfg: DictConfig) -> Dict[str, Any]:
    """Run (or resume) every fold, then aggregate into ``cv_metrics.json`` / ``.md``."""
    from eirnn.evaluation.tables import write_tensorboard
    from eirnn.utils import write_json_atomic

    out = Path(cfg.paths.output_dir)
    k = int(cfg.cv.folds)
    if k < 2:
        raise UserError(f"cv.folds must be >= 2, got {k}")
    todo = list(range(k)) if cfg.cv.get("only_folds") is None else [int(f) for f in cfg.cv.only_folds]
    bad = [f for f in todo if not 0 <= f < k]
    if bad:
        raise UserError(f"cv.only_folds: {bad} not in 0..{k - 1}")
    if cfg.get("print_config", True):
        from eirnn.training.console import config_tree

        log.info("config (print_config=false skips this):\n%s", config_tree(cfg))
    evaluations = {f: run_fold(cfg, f, out) for f in todo}
    for f in range(k):  # folds finished by earlier or parallel invocations
        p = out / f"fold_{f}" / "evaluation.json"
        if f not in evaluations and p.exists():
            evaluations[f] = json.loads(p.read_text())
    agg = aggregate(evaluations)
    agg["config_overrides"] = _overrides()
    md = format_markdown(agg, " ".join(agg["config_overrides"]))
    write_json_atomic(out / "cv_metrics.json", agg)
    from eirnn.utils import write_text_atomic

    write_text_atomic(out / "cv_metrics.md", md)
    flat = {"sets": {s: {"scores": {p: {m: st["mean"] for m, st in sc.items() if st["mean"] is not None}
                                    for p, sc in v["scores"].items()},
                         "ceiling": {m: st["mean"] for m, st in v["ceiling"].items() if st["mean"] is not None}}
                     for s, v in agg["sets"].items()}}
    write_tensorboard(out / "tensorboard", flat, step=len(evaluations), prefix="cv", text=md)
    print(md, flush=True)
    print(f"wrote {out / 'cv_metrics.json'} and {out / 'cv_metrics.md'}", flush=True)
    return agg


def _overrides() -> List[str]:
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except Exception:  # not under @hydra.main (tests)
        return []


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="cv")
@cli_main(sys_exit=True, log=log)  # EvaluationError, DataFormatError, ...: logged, one line on stderr, status 2
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns the mean validation ``psth_corr`` of the model."""
    agg = run_cv(cfg)
    return agg["sets"].get("val", {}).get("scores", {}).get("model", {}).get("psth_corr", {}).get("mean")


if __name__ == "__main__":
    main()
