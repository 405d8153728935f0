"""Evaluation results as files: ``evaluation.json`` / ``.md``, Markdown tables, TensorBoard scalars
``<prefix>/<set>/<predictor>/<metric>``."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, List, Mapping, Optional

import numpy as np

from eirnn.evaluation.predict import DEFAULT_NOISE_DRAWS
from eirnn.evaluation.score import FANO_WINDOW_MS
from eirnn.utils import fmt_epoch, fmt_num


_epoch1 = fmt_epoch  # the old name (eirnn.evaluate re-exports it)



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
    return fmt_num(v, spec, inf="n/a")


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
        f"- checkpoint: `{ck.get('path')}` (epoch {fmt_epoch(ck.get('epoch'))}, rule `{result.get('checkpoint_rule')}`)",
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
    from eirnn.utils import write_json_atomic

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

