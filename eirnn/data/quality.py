"""Data-quality report of a session export: ``python -m eirnn.data.quality FILE``
(also ``python -m eirnn.data.report FILE``, the old name).

Prints (markdown) and optionally writes as JSON (``--json OUT``) / markdown (``--markdown OUT``):

- the session: trials, bins, bin size, time axis, neurons (E / I), pipeline version;
- trial durations (quantiles) and how many bins lie past each trial's end;
- conditions (location x identity x reward x salience) and their trial counts, with the
  conditions too small for k-fold cross-validation (< ``--cv-folds`` trials);
- per-neuron rates: mean and max rate, spikes, fraction of empty bins, flags
  (``silent`` = mean < 0.5 sp/s, ``non_integer_counts``);
- anomalies (each with the number of trials / bins / neurons and the first indices):
  ``aborted`` (duration < ``--min-duration-ms``), ``no_fixation`` (fixation input never
  on), ``cue_without_fixation`` (target or go input on in a trial without fixation
  input, or before its fixation input first comes on), ``inputs_after_end`` (task inputs
  still on past the trial's duration), ``label_mismatch`` (target-location / identity
  input channels disagree with ``trial_location`` / ``trial_identity``),
  ``multi_target`` (more than one target location on in a bin), ``missing_bins`` (NaN),
  ``non_integer_counts`` (``rates * bin / 1000`` not integer), ``silent_neurons``,
  ``eye_data`` (absent / all zero);
- what the data module's trial filters (``min_duration_ms``, ``require_fixation``)
  would remove, one by one and together.

Exit code 2 with a one-line message for a file that cannot be read as an export.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from eirnn.errors import UserError, cli_main

from .session import INPUT_CHANNELS, Session

__all__ = ["session_report", "format_report", "main"]

_CH = {name: i for i, name in enumerate(INPUT_CHANNELS)}
_CUE_CHANNELS = ("target_loc_1", "target_loc_2", "target_loc_3", "target_loc_4", "go_signal")
_TASK_CHANNELS = tuple(c for c in INPUT_CHANNELS if c not in ("eye_x", "eye_y"))
_IDENTITY_CHANNELS = {1: "is_face", 2: "is_nonface", 3: "is_bullseye"}
SILENT_HZ = 0.5


def _first(idx: np.ndarray, n: int = 10) -> List[int]:
    return [int(i) for i in np.asarray(idx)[:n]]


def _on(session: Session, name: str) -> np.ndarray:
    """[K, T] bool: input channel ``name`` > 0.5 (NaN -> off; a channel the session lacks -> off)."""
    if name not in session.input_names:
        return np.zeros(session.inputs.shape[:2], bool)
    return np.nan_to_num(session.inputs[:, :, session.input_names.index(name)], nan=0.0) > 0.5


def _anomaly(count: int, idx: np.ndarray | None = None, unit: str = "trials", **extra) -> Dict[str, Any]:
    out: Dict[str, Any] = {"count": int(count), "unit": unit}
    if idx is not None:
        out["first"] = _first(idx)
    out.update(extra)
    return out


def session_report(session: Session, min_duration_ms: float = 100.0, cv_folds: int = 5) -> Dict[str, Any]:
    """The report as a JSON-serialisable dict (see the module docstring)."""
    from .datamodule import apply_filters

    K, T, N = session.rates.shape
    bs = session.bin_size_ms
    dur = session.trial_duration_ms
    t_axis = session.time_axis_ms
    rates = session.rates
    finite = np.isfinite(rates)
    valid = session.missing_mask()  # True = usable (finite rate and every input finite)
    input_nan = ~np.isfinite(session.inputs).all(axis=2)  # [K, T]

    # ---------------------------------------------------------------- trials
    after_end = t_axis[None, :] > dur[:, None]  # [K, T] bins whose centre is past the end
    nan_bin = ~np.isfinite(rates).all(axis=2)
    dur_known = dur[np.isfinite(dur)]
    q = np.percentile(dur_known, [0, 5, 25, 50, 75, 95, 100]) if dur_known.size else np.full(7, np.nan)
    trials = {
        "n_trials": K, "n_time_bins": T, "bin_size_ms": bs,
        "time_axis_ms": [float(t_axis[0]), float(t_axis[-1])] if T else [],
        "duration_ms_quantiles": dict(zip(("min", "p5", "p25", "median", "p75", "p95", "max"),
                                          [float(v) for v in q])),
        "bins_past_end": int(after_end.sum()),
        "bins_past_end_nan_padded": int((after_end & nan_bin).sum()),
        "duration_nan": int(np.isnan(dur).sum()),
    }

    # ------------------------------------------------------------ conditions
    table = session.condition_table()
    cids = session.condition_ids()
    counts = np.bincount(cids, minlength=len(table)) if K else np.zeros(0, int)
    conditions = [dict({f: int(v) for f, v in zip(session.factor_names, r)}, n_trials=int(c))
                  for r, c in zip(table, counts)]
    small = [c for c in conditions if c["n_trials"] < cv_folds]

    # --------------------------------------------------------------- neurons
    dt = bs / 1000.0
    with np.errstate(invalid="ignore"):
        n_valid = finite.sum(axis=(0, 1))
        mean_rate = np.where(finite, rates, 0.0).sum(axis=(0, 1)) / np.maximum(n_valid, 1)
        max_rate = np.where(finite, rates, -np.inf).max(axis=(0, 1)) if K and T else np.zeros(N)
        counts_f = np.where(finite, rates * dt, 0.0)
        frac_zero = (np.where(finite, rates, 1.0) == 0).sum(axis=(0, 1)) / np.maximum(n_valid, 1)
    nonint = np.abs(counts_f - np.round(counts_f)) > 1e-6
    nonint_bins_per_neuron = nonint.sum(axis=(0, 1))
    neurons = []
    for n in range(N):
        flags = []
        if mean_rate[n] < SILENT_HZ:
            flags.append("silent")
        if nonint_bins_per_neuron[n]:
            flags.append("non_integer_counts")
        neurons.append({
            "index": n, "id": session.neuron_ids[n].item(), "type": "E" if session.is_excitatory[n] else "I",
            "mean_rate_hz": float(mean_rate[n]), "max_rate_hz": float(max_rate[n]) if np.isfinite(max_rate[n]) else None,
            "spikes": float(np.round(counts_f[..., n].sum())), "fraction_zero_bins": float(frac_zero[n]),
            "flags": flags,
        })

    # ------------------------------------------------------------- anomalies
    fix = _on(session, "fixation_on")
    has_fix = fix.any(axis=1)
    first_fix = np.where(has_fix, fix.argmax(axis=1), T)
    cue = np.zeros((K, T), bool)
    for name in _CUE_CHANNELS:
        cue |= _on(session, name)
    before_fix = cue & (np.arange(T)[None, :] < first_fix[:, None])
    cue_wo_fix = np.flatnonzero(before_fix.any(axis=1))
    task_on = np.zeros((K, T), bool)
    for name in (_TASK_CHANNELS if session.is_sc else [c for c in session.input_names if c not in ("eye_x", "eye_y")]):
        task_on |= _on(session, name)
    inputs_after = np.flatnonzero((task_on & after_end).any(axis=1))
    aborted = np.flatnonzero(~(dur >= float(min_duration_ms)))  # NaN (unknown) duration counts: the filter drops it

    loc_on = np.stack([_on(session, f"target_loc_{i}") for i in range(1, 5)], axis=2)  # [K, T, 4]
    multi = loc_on.sum(axis=2) > 1
    shown_loc = np.full(K, -1)
    any_loc = loc_on.any(axis=1)  # [K, 4]
    for k in range(K):
        on = np.flatnonzero(any_loc[k])
        shown_loc[k] = on[0] + 1 if on.size == 1 else (-1 if on.size == 0 else 0)
    loc_mismatch = (shown_loc > 0) & (shown_loc != session.trial_location) if session.is_sc else np.zeros(K, bool)
    ident_mismatch = np.zeros(K, bool)
    for code, name in (_IDENTITY_CHANNELS.items() if session.is_sc else ()):
        chan = _on(session, name).any(axis=1)
        others = [_on(session, o).any(axis=1) for c, o in _IDENTITY_CHANNELS.items() if c != code]
        ident_mismatch |= (session.trial_identity == code) & ~chan & np.any(others, axis=0)
    mismatch = np.flatnonzero(loc_mismatch | ident_mismatch)

    if session.eye_raw is None:
        eye = "absent"
    else:
        eye_ok = np.isfinite(session.eye_raw)
        if not eye_ok.any() or np.all(session.eye_raw[eye_ok] == 0):
            eye = "all zero (no eye data)"
        else:
            eye = "present"
    silent = [n["index"] for n in neurons if "silent" in n["flags"]]
    anomalies = {
        "aborted": _anomaly(aborted.size, aborted, threshold_ms=float(min_duration_ms),
                            of_which_nan_duration=int(np.isnan(dur).sum())),
        "no_fixation": _anomaly(int((~has_fix).sum()), np.flatnonzero(~has_fix)),
        "cue_without_fixation": _anomaly(cue_wo_fix.size, cue_wo_fix),
        "inputs_after_end": _anomaly(inputs_after.size, inputs_after),
        "label_mismatch": _anomaly(mismatch.size, mismatch),
        "multi_target": _anomaly(int(multi.any(axis=1).sum()), np.flatnonzero(multi.any(axis=1))),
        # the training mask: a bin is missing for a neuron when its rate or any task input is NaN
        "missing_bins": _anomaly(int((~valid).sum()), None, unit="neuron-bins",
                                 trials_affected=int((~valid).any(axis=(1, 2)).sum()),
                                 nan_rates=int((~finite).sum()), nan_input_bins=int(input_nan.sum())),
        "non_integer_counts": _anomaly(int(nonint.sum()), None, unit="neuron-bins"),
        "silent_neurons": _anomaly(len(silent), np.asarray(silent, dtype=int), unit="neurons",
                                   threshold_hz=SILENT_HZ),
        "eye_data": {"status": eye},
    }
    aborted_set = set(aborted.tolist())
    anomalies["no_fixation"]["of_which_aborted"] = int(sum(int(i) in aborted_set for i in np.flatnonzero(~has_fix)))
    if not session.is_sc:  # the SC task's checks do not apply to another task's channels
        for k in ("no_fixation", "cue_without_fixation", "label_mismatch", "multi_target"):
            del anomalies[k]

    # --------------------------------------------------------------- filters
    filters = {}
    choices = [("min_duration_ms", {"min_duration_ms": float(min_duration_ms)})]
    if "fixation_on" in session.input_names:
        choices += [("require_fixation", {"require_fixation": True}),
                    ("both", {"min_duration_ms": float(min_duration_ms), "require_fixation": True})]
    for name, f in choices:
        kept, rep = apply_filters(session, f)
        k_cids = cids[kept]
        filters[name] = {"filters": f, "removed": int(K - kept.size), "kept": int(kept.size),
                         "conditions_left": int(np.unique(k_cids).size), "report": rep}

    return {
        "session": {"name": session.session_name, "source": session.source, "n_neurons": N,
                    "n_E": int(session.is_excitatory.sum()), "n_I": int((~session.is_excitatory).sum()),
                    "metadata": {k: v for k, v in session.metadata.items() if isinstance(v, (str, list))}},
        "trials": trials,
        "conditions": {"n_conditions": len(conditions), "table": conditions, "factors": list(session.factor_names),
                       "min_trials": int(counts.min()) if counts.size else 0,
                       "max_trials": int(counts.max()) if counts.size else 0,
                       f"fewer_than_{cv_folds}_trials": len(small)},
        "neurons": neurons,
        "rates": {"mean_hz": float(np.nanmean(rates)) if finite.any() else None,
                  "max_hz": float(np.nanmax(rates)) if finite.any() else None},
        "anomalies": anomalies,
        "filters": filters,
    }


def format_report(rep: Dict[str, Any]) -> str:
    """Markdown text of :func:`session_report`."""
    s, t, c, a = rep["session"], rep["trials"], rep["conditions"], rep["anomalies"]
    q = t["duration_ms_quantiles"]
    lines = [
        f"# Data report: {s['name']}", "", f"source: `{s['source']}`", "",
        "## Session", "",
        f"- {t['n_trials']} trials x {t['n_time_bins']} bins of {t['bin_size_ms']:g} ms "
        f"(time axis {t['time_axis_ms'][0]:g} .. {t['time_axis_ms'][1]:g} ms)" if t["time_axis_ms"] else "",
        f"- {s['n_neurons']} neurons ({s['n_E']} E / {s['n_I']} I); mean rate {rep['rates']['mean_hz']:.2f} sp/s, "
        f"max {rep['rates']['max_hz']:.0f} sp/s",
        f"- trial duration (ms, {t.get('duration_nan', 0)} unknown/NaN): min {q['min']:.0f}, 5% {q['p5']:.0f}, median {q['median']:.0f}, "
        f"95% {q['p95']:.0f}, max {q['max']:.0f}; {t['bins_past_end']} trial-bins lie past the trial's end "
        f"({t['bins_past_end_nan_padded']} of them NaN-padded)",
    ]
    for k, v in s.get("metadata", {}).items():
        lines.append(f"- {k}: {v}")
    fac = list(c.get("factors", ["location", "identity", "reward", "salience"]))
    lines += ["", f"## Conditions ({c['n_conditions']}, {c['min_trials']}-{c['max_trials']} trials each)", "",
              "| " + " | ".join(fac + ["trials"]) + " |", "|" + "---|" * (len(fac) + 1)]
    lines += ["| " + " | ".join(str(r[f]) for f in fac + ["n_trials"]) + " |" for r in c["table"]]
    small_key = next(k for k in c if k.startswith("fewer_than_"))
    lines += ["", f"{c[small_key]} condition(s) have {small_key.replace('_', ' ')}.", "",
              "## Neurons", "", "| # | id | type | mean sp/s | max sp/s | spikes | zero bins | flags |",
              "|---|---|---|---|---|---|---|---|"]
    for n in rep["neurons"]:
        mx = "n/a" if n["max_rate_hz"] is None else f"{n['max_rate_hz']:.0f}"
        lines.append(f"| {n['index']} | {n['id']} | {n['type']} | {n['mean_rate_hz']:.2f} | {mx} | "
                     f"{n['spikes']:.0f} | {100 * n['fraction_zero_bins']:.0f}% | {', '.join(n['flags'])} |")
    lines += ["", "## Anomalies", "", "| anomaly | count | first indices | note |", "|---|---|---|---|"]
    notes = {
        "aborted": f"duration < {a['aborted'].get('threshold_ms', 0):g} ms or unknown "
                   f"({a['aborted'].get('of_which_nan_duration', 0)} with NaN trial_duration_ms)",
        "no_fixation": f"fixation input never on ({a.get('no_fixation', {}).get('of_which_aborted', 0)} of them aborted)",
        "cue_without_fixation": "target/go input on before (or without) fixation input",
        "inputs_after_end": "task inputs still on past the trial's duration",
        "label_mismatch": "target-location / identity inputs disagree with the trial labels",
        "multi_target": "more than one target location on in one bin",
        "missing_bins": f"NaN rate ({a['missing_bins'].get('nan_rates', 0)}) or a NaN task input in the bin "
                        f"({a['missing_bins'].get('nan_input_bins', 0)} trial-bins, masked for every neuron)",
        "non_integer_counts": "rates x bin / 1000 not an integer spike count",
        "silent_neurons": f"mean rate < {SILENT_HZ:g} sp/s",
    }
    for k, v in a.items():
        if k == "eye_data":
            continue
        lines.append(f"| {k} | {v['count']} {v['unit']} | {v.get('first', '')} | {notes.get(k, '')} |")
    lines.append(f"| eye_data | {a['eye_data']['status']} | | eye channels are z-scored; absent/all-zero -> 0 |")
    lines += ["", "## Trial filters (SessionDataModule `filters`)", "",
              "| filters | removed | kept | conditions left |", "|---|---|---|---|"]
    for v in rep["filters"].values():
        lines.append(f"| {v['filters']} | {v['removed']} | {v['kept']} | {v['conditions_left']} |")
    return "\n".join(x for x in lines if x is not None) + "\n"


def _options_hint(message: str) -> str:
    from .convert import options_hint

    return options_hint(message)


@cli_main(hint=_options_hint)  # DataFormatError, DiskFullError, ...: one line, status 2
def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eirnn.data.quality",
                                     description="Data-quality report of a session file.")
    parser.add_argument("file", help="the .mat export (v7.3 or v5), or an .nwb / .npz / .h5 session written by eirnn")
    parser.add_argument("--json", dest="json_out", help="also write the report as JSON to this path")
    parser.add_argument("--markdown", dest="md_out", help="also write the markdown to this path")
    parser.add_argument("--min-duration-ms", type=float, default=100.0,
                        help="trials shorter than this count as aborted (default %(default)s)")
    parser.add_argument("--cv-folds", type=int, default=5, help="flag conditions with fewer trials (default 5)")
    parser.add_argument("--options", default=None,
                        help="NWB / arrays reader options as JSON (the keys of data.options), e.g. for another lab's NWB")
    args = parser.parse_args(argv)
    from .sources import load_session

    try:
        options = json.loads(args.options) if args.options else None
    except ValueError as err:
        raise UserError(f"--options: not JSON: {err}") from None
    session = load_session(args.file, None, options)
    rep = session_report(session, args.min_duration_ms, args.cv_folds)
    text = format_report(rep)
    print(text, end="", flush=True)
    from eirnn.utils import write_text_atomic

    if args.json_out:
        write_text_atomic(args.json_out, json.dumps(rep, indent=2))
    if args.md_out:
        write_text_atomic(args.md_out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
