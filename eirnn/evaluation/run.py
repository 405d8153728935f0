"""Evaluate one run folder: open it (:mod:`eirnn.runs.run_dir`), score its model, the baselines
and the noise ceiling on its validation trials (:mod:`eirnn.evaluation.score`), write
``evaluation.json`` / ``.md`` and TensorBoard scalars (:mod:`eirnn.evaluation.tables`)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

from eirnn.evaluation.predict import DEFAULT_NOISE_DRAWS
from eirnn.evaluation.score import (DEFAULT_BASELINES, EvaluationError, condition_config_of, data_info,
                                    evaluate_modules)
from eirnn.evaluation.tables import write_outputs

__all__ = ["evaluate_run"]


def evaluate_run(run_dir: str | Path, checkpoint: str = "best", baselines: Sequence[str] = DEFAULT_BASELINES,
                 extra_runs: Optional[Mapping[str, str | Path]] = None, ceiling_splits: int = 50, seed: int = 0,
                 write: bool = True, baseline_kwargs: Optional[Mapping[str, dict]] = None,
                 noise_draws: int = DEFAULT_NOISE_DRAWS, calibrate: bool = True,
                 data_path: str | None = None) -> Dict[str, Any]:
    """Evaluate one run folder; returns the ``evaluation.json`` dict.

    ``checkpoint``: ``best`` (falls back to ``last``, ``interrupted``), ``last``, ``interrupted``
    or a path. ``extra_runs`` = ``{name: RUN_DIR or (RUN_DIR, checkpoint)}`` of other runs trained
    on the same data config (e.g. the unconstrained RNN of a CV fold; or this run with another
    checkpoint): their models are scored on the same trials. ``baseline_kwargs`` =
    ``{baseline: constructor kwargs}``. ``data_path``: the session file when it moved.
    """
    from eirnn.runs.lock import refuse_if_running
    from eirnn.runs.run_dir import find_checkpoint, load_module, load_run_config, open_run

    refuse_if_running(run_dir, "evaluate")  # its split, config and checkpoints may still change

    run_dir = Path(run_dir)
    run = open_run(run_dir, checkpoint, data_path=data_path, error=EvaluationError)
    cfg, dm = run.cfg, run.datamodule
    modules = {"model": run.module}
    ckpts = {"model": {"path": str(run.checkpoint), "epoch": run.epoch}}
    for name, other in (extra_runs or {}).items():
        other, rule = (other if isinstance(other, (tuple, list)) else (other, checkpoint))
        other = Path(other)
        ocfg = load_run_config(other, data_path, error=EvaluationError)
        if ocfg.data != cfg.data:
            raise EvaluationError(f"{other}: its data config differs from {run_dir}'s; cannot score on the same trials")
        ock = find_checkpoint(other, rule, error=EvaluationError)
        modules[name], ockpt = load_module(ocfg, dm, ock, error=EvaluationError)
        ckpts[name] = {"path": str(ock), "epoch": ockpt.get("epoch")}
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
    if write:  # TensorBoard step = epoch counted from 1, as in training
        write_outputs(run_dir, result, step=int(run.epoch or 0) + 1)
    return result
