"""Read / write sessions as NWB files (pynwb / hdmf; the DANDI archive's format).

Reading (:func:`load_nwb`, ``data=nwb data.path=FILE.nwb``): each trial of the NWB
``trials`` table becomes one row of the session, cut around an alignment event and
binned at ``bin_size_ms``:

- bin edges, ms from the event: ``w0 + bin * arange(T + 1)`` where ``[w0, w1]`` is
  ``window_ms`` or, when that is null, the span covering every kept trial
  (``min(start - event)`` .. ``max(stop - event)``, w0 on the bin grid);
- ``counts[k, i, n]`` = spikes of unit n (``units.spike_times``, seconds) in
  ``[event_k + edge_i, event_k + edge_{i+1})``; ``rates = counts * 1000 / bin`` (sp/s);
- a bin is missing (rates NaN, count 0) unless it lies inside the trial's
  ``[start_time, stop_time]`` and, when the units table has ``obs_intervals``, inside
  one of the unit's observation intervals (so variable-length trials pad with NaN);
- task inputs are named channels, each the mean of a ``TimeSeries``' samples in the bin
  (``{name, timeseries, column}``), or built from event-time columns of the trials table:
  ``{name, event, kind: step}`` (1 from the event to ``until`` or the trial's end) or
  ``{name, event, kind: pulse, duration_ms}``, optionally only on trials ``where:
  {column: value}`` and scaled by ``value``;
- condition factors, event times (ms from the alignment event), other per-trial
  labels, an exclusion column (True = drop) and the trial duration come from named
  trials columns; E/I labels from a units column (``ei.column`` with the values in
  ``ei.excitatory`` / ``ei.inhibitory``) or ``ei.default`` (``E`` or ``I`` for all).

Every option may be null: a file written by :func:`save_nwb` then supplies its own
layout (scratch ``eirnn_layout``), so ``load_nwb(save_nwb(s))`` rebuilds ``s``'s arrays
exactly (rates from integer counts, same inputs, factors, time axis, eye normalisation).
For anyone else's file, name the columns in the config (see conf/data/nwb.yaml).
Datasets are read lazily: only the columns and series named are read, spike times unit
by unit. Every problem is a one-line :class:`DataFormatError` naming file and field.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from .errors import DataFormatError
from .session import Session, apply_eye_norm, counts_from_rates, eye_norm_stats, plain_options as _plain

__all__ = ["NWB_DEFAULTS", "load_nwb", "save_nwb"]

PathLike = Union[str, os.PathLike]

#: Reader options (``data.options`` in conf/data/nwb.yaml); null = from the file's layout.
NWB_DEFAULTS: Dict[str, Any] = {
    "bin_size_ms": None,      # bin width (ms); required unless the file was written by eirnn
    "align_event": None,      # trials column (s) at 0 ms; default: eirnn layout, else start_time
    "window_ms": None,        # [start, stop] ms around the event; null = cover every trial
    "factors": None,          # trials columns -> condition factors (in this order)
    "events": None,           # trials columns (s) kept as event times (ms from the event)
    "trial_columns": None,    # other trials columns kept as per-trial labels
    "exclude_column": None,   # bool trials column: True = drop the trial
    "duration_column": None,  # trials column holding the duration in ms (default stop - start)
    "inputs": None,           # list of input channel specs (see module docstring)
    "zscore_inputs": None,    # channels z-scored over the session (eye_x/eye_y -> Session.eye_raw)
    "ei": None,               # {column, excitatory: [...], inhibitory: [...], default: E|I|null}
    "area_column": None,      # units column with a brain-area code
    "neuron_id_column": None,  # units column with the neuron ids (default: units id)
}
_READ_WHOLE_MAX = 2 ** 25  # TimeSeries with more values are read trial by trial
_EI_E = ("E", "e", "exc", "excitatory", "1", "True", "true")
_EI_I = ("I", "i", "inh", "inhibitory", "2", "0", "False", "false")
_INPUT_KEYS = {"name", "timeseries", "column", "event", "kind", "until", "duration_ms", "where", "value"}


def _merge(options: Optional[Mapping[str, Any]], layout: Mapping[str, Any], path: str) -> Dict[str, Any]:
    opts = {} if options is None else dict(options)
    unknown = sorted(set(opts) - set(NWB_DEFAULTS))
    if unknown:
        raise DataFormatError(path, f"options.{unknown[0]}", f"unknown NWB reader option; known: {sorted(NWB_DEFAULTS)}")
    out = dict(NWB_DEFAULTS)
    for k in out:
        v = _plain(opts.get(k))
        if isinstance(v, dict):  # a mapping option (ei): its set keys win over the layout's
            v = {kk: vv for kk, vv in v.items() if vv is not None} or None
            if v is not None and isinstance(layout.get(k), dict) and not (set(v) & {"column", "default"}):
                v = dict(layout[k], **v)
        if v is not None:
            out[k] = v
        elif layout.get(k) is not None:
            out[k] = layout[k]
    return out


def _text(a: np.ndarray) -> np.ndarray:
    return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(a).reshape(-1)], dtype=object)


def _find_series(nwb, name: str):
    for group in (nwb.stimulus, nwb.acquisition):
        if name in group:
            return group[name]
    for mod in nwb.processing.values():
        if name in mod.data_interfaces:
            return mod.data_interfaces[name]
    return None


def _series_names(nwb) -> List[str]:
    names = list(nwb.stimulus) + list(nwb.acquisition)
    for mod in nwb.processing.values():
        names += list(mod.data_interfaces)
    return sorted(names)


def load_nwb(path: PathLike, options: Optional[Mapping[str, Any]] = None) -> Session:
    """A :class:`Session` from an NWB file (see module docstring for ``options``)."""
    p = Path(os.path.expanduser(os.fspath(path)))
    src = str(p)
    if not p.exists():
        raise DataFormatError(src, None, "file not found")
    try:
        from pynwb import NWBHDF5IO
    except ImportError as e:  # pragma: no cover
        raise DataFormatError(src, None, f"reading NWB needs pynwb ({e}); pip install pynwb") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            io = NWBHDF5IO(str(p), "r", load_namespaces=True)
            nwb = io.read()
    except Exception as e:
        raise DataFormatError(src, None, f"not a readable NWB file: {type(e).__name__}: {e}") from None
    try:
        return _read(nwb, src, _plain(options))
    finally:
        io.close()


def _read(nwb, src: str, options) -> Session:
    def err(field, msg):
        return DataFormatError(src, field, msg)

    layout: Dict[str, Any] = {}
    if "eirnn_layout" in nwb.scratch:
        try:
            layout = json.loads(str(nwb.scratch["eirnn_layout"].data))
        except ValueError:
            layout = {}
    opt = _merge(options, layout, src)
    if nwb.units is None or len(nwb.units.id) == 0:
        raise err("units", "no units table (or no units): spike times are needed")
    if nwb.trials is None or len(nwb.trials.id) == 0:
        raise err("trials", "no trials table (or no trials): trial start/stop times are needed")
    trials, units = nwb.trials, nwb.units
    tcols = ["start_time", "stop_time"] + [c for c in trials.colnames if c not in ("start_time", "stop_time")]

    def column(name, what) -> np.ndarray:
        if name not in tcols:
            raise err(f"trials.{name}", f"no such trials column (named in data.options.{what}); columns: {tcols}")
        return np.asarray(trials[name].data[:])

    def times(name, what) -> np.ndarray:
        a = column(name, what)
        if a.dtype.kind not in "fiu":
            raise err(f"trials.{name}", f"expected event times in seconds, got dtype {a.dtype}")
        return a.astype(np.float64)

    if opt["bin_size_ms"] is None:
        raise err("bin_size_ms", "not set: give data.options.bin_size_ms=MS")
    bin_ms = float(opt["bin_size_ms"])
    if not (np.isfinite(bin_ms) and bin_ms > 0):
        raise err("bin_size_ms", f"expected a positive bin size, got {bin_ms:g}")
    start, stop = times("start_time", "align_event"), times("stop_time", "align_event")
    align = str(opt["align_event"] or "start_time")
    event = times(align, "align_event")
    keep = np.isfinite(event)
    if opt["exclude_column"]:
        ex = column(str(opt["exclude_column"]), "exclude_column")
        if ex.dtype.kind not in "biu":
            ex = np.isin(_text(ex), ("True", "true", "1", "yes"))
        keep &= ~ex.astype(bool)
    kept = np.flatnonzero(keep)
    if kept.size == 0:
        raise err(f"trials.{align}", "no trial left (alignment event missing or every trial excluded)")
    start, stop, event = start[kept], stop[kept], event[kept]
    K = kept.size

    # time grid (ms from the event)
    tol = 1e-6 * bin_ms
    if opt["window_ms"] is not None:
        w = [float(x) for x in opt["window_ms"]]
        if len(w) != 2 or not w[1] > w[0]:
            raise err("window_ms", f"expected [start, stop] ms with stop > start, got {opt['window_ms']}")
        w0, w1 = w
    else:
        w0, w1 = float(np.min(start - event)) * 1000.0, float(np.max(stop - event)) * 1000.0
        w0 = bin_ms * np.floor(w0 / bin_ms + 1e-6)
    T = int(np.ceil((w1 - w0) / bin_ms - 1e-6))
    if T < 1:
        raise err("window_ms", f"window [{w0:g}, {w1:g}] ms holds no {bin_ms:g} ms bin")
    edges_ms = w0 + bin_ms * np.arange(T + 1, dtype=np.float64)
    time_axis = 0.5 * (edges_ms[:-1] + edges_ms[1:])
    if "eirnn_time_axis_ms" in nwb.scratch:  # the exact axis of the session that was saved
        saved = np.asarray(nwb.scratch["eirnn_time_axis_ms"].data[:], dtype=np.float64)
        if saved.shape == time_axis.shape and np.allclose(saved, time_axis, rtol=0, atol=1e-6 * bin_ms):
            time_axis = saved
    abs_edges = event[:, None] + edges_ms[None, :] / 1000.0  # [K, T+1] seconds
    tol_s = tol / 1000.0
    in_trial = (abs_edges[:, :-1] >= start[:, None] - tol_s) & (abs_edges[:, 1:] <= stop[:, None] + tol_s)

    # units: spike counts per bin
    ucols = list(units.colnames)
    if "spike_times" not in ucols:
        raise err("units.spike_times", "the units table has no spike_times column")
    st_index = np.asarray(units["spike_times_index"].data[:], dtype=np.int64)
    st_data = units["spike_times_index"].target.data
    N = st_index.size
    lo = np.r_[0, st_index[:-1]]
    obs = None
    if "obs_intervals" in ucols:
        obs_index = np.asarray(units["obs_intervals_index"].data[:], dtype=np.int64)
        obs_data = np.asarray(units["obs_intervals_index"].target.data[:], dtype=np.float64).reshape(-1, 2)
        obs = (np.r_[0, obs_index[:-1]], obs_index, obs_data)
    counts = np.zeros((K, T, N), np.int64)
    valid = np.repeat(in_trial[:, :, None], N, axis=2)
    n_spikes = n_inside = 0
    flat_edges = abs_edges.reshape(-1)
    for n in range(N):
        spk = np.asarray(st_data[lo[n]:st_index[n]], dtype=np.float64)
        if spk.size:
            if np.any(np.diff(spk) < 0):
                spk = np.sort(spk)
            pos = np.searchsorted(spk, flat_edges, side="left").reshape(K, T + 1)
            counts[:, :, n] = np.diff(pos, axis=1)
        if obs is not None:
            iv = obs[2][obs[0][n]:obs[1][n]]
            ok = np.zeros((K, T), bool)
            for a, b in iv:
                ok |= (abs_edges[:, :-1] >= a - tol_s) & (abs_edges[:, 1:] <= b + tol_s)
            valid[:, :, n] &= ok
        n_spikes += spk.size
        n_inside += int(counts[:, :, n][valid[:, :, n]].sum())
    if n_spikes > 0 and n_inside == 0:
        raise err("units.spike_times", f"none of the {n_spikes} spikes lies inside a trial window "
                                       f"(trials {start.min():g}..{stop.max():g} s): are spikes and trials "
                                       f"on the same clock, in seconds?")
    counts[~valid] = 0
    rates = np.where(valid, counts * (1000.0 / bin_ms), np.nan)

    # task inputs
    specs = _plain(opt["inputs"])
    if not specs:
        raise err("inputs", f"no task inputs named: list TimeSeries or event columns in data.options.inputs "
                            f"(series in the file: {_series_names(nwb)})")
    names, chans = [], []
    trial_mask = np.where(in_trial, 1.0, np.nan)
    for j, spec in enumerate(specs):
        spec = {"name": spec} if isinstance(spec, str) else dict(spec)
        if "name" not in spec and "timeseries" in spec:
            spec["name"] = spec["timeseries"]
        bad = sorted(set(spec) - _INPUT_KEYS)
        if bad or "name" not in spec:
            raise err(f"inputs[{j}]", f"unknown key(s) {bad} or no name; keys: {sorted(_INPUT_KEYS)}")
        if "timeseries" not in spec and "event" not in spec:
            spec["timeseries"] = spec["name"]
        if "timeseries" in spec:
            x = _bin_series(nwb, spec, abs_edges, src) * trial_mask
        else:
            x = _event_input(spec, kept, event, time_axis, column, times, stop, src) * trial_mask
        names.append(str(spec["name"]))
        chans.append(x)
    inputs = np.stack(chans, axis=2)
    eye_raw = eye_norm = None
    z = [str(c) for c in (opt["zscore_inputs"] or [])]
    for c in z:
        if c not in names:
            raise err(f"zscore_inputs.{c}", f"not an input channel; channels: {names}")
    if "eye_x" in z and "eye_y" in z:
        eye_raw = inputs[:, :, [names.index("eye_x"), names.index("eye_y")]].copy()
        if "eirnn_eye_norm" in nwb.scratch:
            eye_norm = np.asarray(nwb.scratch["eirnn_eye_norm"].data[:], dtype=np.float64).reshape(2, 2)
    for c in z:
        if eye_raw is not None and c in ("eye_x", "eye_y"):
            continue  # Session normalises them from eye_raw
        i = names.index(c)
        inputs[:, :, i] = apply_eye_norm(inputs[:, :, i], *eye_norm_stats(inputs[:, :, i]))

    # per-trial labels
    factors, labels = {}, {}
    for f in opt["factors"] or []:
        a = column(str(f), "factors")
        a = a[kept]
        if a.dtype.kind in "fiub" and (a.dtype.kind != "f" or (np.isfinite(a).all() and np.all(a == np.round(a)))):
            factors[str(f)] = a.astype(np.int64)
            labels[str(f)] = None
        elif a.dtype.kind == "f":
            raise err(f"trials.{f}", "a condition factor needs integer codes or text labels, got non-integer/NaN values")
        else:
            t = _text(a)
            uniq = sorted(set(t.tolist()))
            factors[str(f)] = np.array([uniq.index(v) for v in t], np.int64)
            labels[str(f)] = tuple(uniq)
    if layout.get("factor_labels"):
        for f, lab in layout["factor_labels"].items():
            if f in labels and lab is not None:
                labels[f] = tuple(lab)
    events = {str(e): (times(str(e), "events")[kept] - event) * 1000.0 for e in (opt["events"] or [])}
    tcol = {}
    for c in opt["trial_columns"] or []:
        a = column(str(c), "trial_columns")[kept]
        tcol[str(c)] = a if a.dtype.kind in "fiub" else _text(a).astype(str)
    if opt["duration_column"]:
        duration = column(str(opt["duration_column"]), "duration_column")[kept].astype(np.float64)
    else:
        duration = (stop - start) * 1000.0

    # units labels
    ei = dict(_plain(opt["ei"]) or {})
    bad = sorted(set(ei) - {"column", "excitatory", "inhibitory", "default"})
    if bad:
        raise err(f"ei.{bad[0]}", "unknown key; known: column, excitatory, inhibitory, default")
    if ei.get("column"):
        col = str(ei["column"])
        if col not in ucols:
            raise err(f"units.{col}", f"no such units column (named in data.options.ei.column); columns: {ucols}")
        vals = _text(units[col].data[:]).astype(str)
        e_vals = [str(v) for v in (ei.get("excitatory") or _EI_E)]
        i_vals = [str(v) for v in (ei.get("inhibitory") or _EI_I)]
        unknown = sorted(set(vals.tolist()) - set(e_vals) - set(i_vals))
        if unknown:
            raise err(f"units.{col}", f"unknown E/I label(s) {unknown}; excitatory {e_vals}, inhibitory {i_vals} "
                                      f"(data.options.ei.excitatory / inhibitory)")
        is_exc = np.isin(vals, e_vals)
    elif ei.get("default") is not None:
        d = str(ei["default"])
        if d not in ("E", "I"):
            raise err("ei.default", f"expected E or I, got {d!r}")
        is_exc = np.full(N, d == "E")
    else:
        raise err("units", f"no E/I labels for the {N} units, and Dale's law needs them: name a units column "
                           f"(data.options.ei.column=COL) or label all units (data.options.ei.default=E|I); "
                           f"units columns: {ucols}")
    neuron_ids = np.asarray(units.id.data[:])
    if opt["neuron_id_column"]:
        c = str(opt["neuron_id_column"])
        if c not in ucols:
            raise err(f"units.{c}", f"no such units column (data.options.neuron_id_column); columns: {ucols}")
        neuron_ids = np.asarray(units[c].data[:])
    area = None
    if opt["area_column"]:
        c = str(opt["area_column"])
        if c not in ucols:
            raise err(f"units.{c}", f"no such units column (data.options.area_column); columns: {ucols}")
        area = np.asarray(units[c].data[:])
    prob = None
    if "probability" in tcol and all(f in factors for f in ("location", "identity", "reward", "salience")):
        prob = tcol.pop("probability")
    name = layout.get("session_name") or nwb.session_id or Path(src).stem
    meta = {k: v for k, v in dict(layout.get("metadata") or {}).items() if isinstance(v, str)}
    if not meta:
        meta = {"nwb_identifier": str(nwb.identifier)}
    if K < len(trials.id):
        meta["n_trials_dropped"] = int(len(trials.id) - K)
    return Session(
        rates=rates, inputs=inputs, is_excitatory=is_exc, bin_size_ms=bin_ms, time_axis_ms=time_axis,
        trial_duration_ms=duration, neuron_ids=neuron_ids, brain_area=area, session_name=str(name),
        source=src, eye_raw=eye_raw, eye_norm=eye_norm, metadata=meta, input_names=names,
        factors=factors, factor_labels=labels, events=events, trial_columns=tcol, counts=counts,
        alignment_event=align, trial_probability=prob,
    )


def _bin_series(nwb, spec: Dict[str, Any], abs_edges: np.ndarray, src: str) -> np.ndarray:
    """[K, T] mean of a TimeSeries' samples in each bin (NaN where it has none)."""
    name = str(spec["timeseries"])
    ts = _find_series(nwb, name)
    if ts is None or not hasattr(ts, "data"):
        raise DataFormatError(src, f"inputs.{spec['name']}", f"no TimeSeries named {name!r} in stimulus, acquisition "
                                                             f"or processing; series: {_series_names(nwb)}")
    data = ts.data
    shape = data.shape
    col = spec.get("column")
    if len(shape) > 1 and shape[1] > 1 and col is None:
        raise DataFormatError(src, f"inputs.{spec['name']}", f"TimeSeries {name!r} has {shape[1]} columns: "
                                                             f"give column: INDEX")
    j = int(col or 0) if len(shape) > 1 else None
    K, T1 = abs_edges.shape
    if ts.timestamps is not None:
        stamps = np.asarray(ts.timestamps[:], dtype=np.float64)
        bounds = np.searchsorted(stamps, np.stack([abs_edges[:, 0], abs_edges[:, -1]], 1), side="left")
        times_of = lambda i0, i1: stamps[i0:i1]  # noqa: E731
    else:  # regular sampling: sample i at starting_time + i / rate (no timestamps array built)
        t0, rate = float(ts.starting_time or 0.0), float(ts.rate)
        bounds = np.clip(np.ceil((np.stack([abs_edges[:, 0], abs_edges[:, -1]], 1) - t0) * rate - 1e-9),
                         0, shape[0]).astype(np.int64)
        times_of = lambda i0, i1: t0 + np.arange(i0, i1, dtype=np.float64) / rate  # noqa: E731
    # small series are read once; large ones trial by trial (only the samples in the windows)
    whole = int(np.prod(shape)) <= _READ_WHOLE_MAX
    values = np.asarray(data[:], dtype=np.float64) if whole else None
    out = np.full((K, T1 - 1), np.nan)
    for k in range(K):
        i0, i1 = int(bounds[k, 0]), int(bounds[k, 1])
        if i1 <= i0:
            continue
        v = values[i0:i1] if whole else np.asarray(data[i0:i1], dtype=np.float64)
        if j is not None:
            v = v[:, j]
        b = np.searchsorted(abs_edges[k], times_of(i0, i1), side="right") - 1
        ok = (b >= 0) & (b < T1 - 1)
        s_ = np.bincount(b[ok], weights=v[ok], minlength=T1 - 1)
        c = np.bincount(b[ok], minlength=T1 - 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[k] = np.where(c > 0, s_ / np.maximum(c, 1), np.nan)
    return out


def _event_input(spec, kept, event, time_axis, column, times, stop, src) -> np.ndarray:
    """[K, T] step / pulse channel from event-time columns: ``value`` in the bins whose
    centre lies in [on, off), off = ``until`` column, on + ``duration_ms`` (pulse) or the
    trial's stop (step); 0 elsewhere and on trials without the event or not ``where``."""
    field = f"inputs.{spec['name']}"
    kind = str(spec.get("kind", "step"))
    if kind not in ("step", "pulse"):
        raise DataFormatError(src, field, f"kind must be step or pulse, got {kind!r}")
    on = (times(str(spec["event"]), "inputs")[kept] - event) * 1000.0
    if spec.get("until") is not None:
        off = (times(str(spec["until"]), "inputs")[kept] - event) * 1000.0
    elif kind == "pulse":
        if spec.get("duration_ms") is None:
            raise DataFormatError(src, field, "a pulse needs duration_ms")
        off = on + float(spec["duration_ms"])
    else:
        off = (stop - event) * 1000.0
    off = np.where(np.isfinite(off), off, np.inf)
    use = np.isfinite(on)
    for col, want in dict(spec.get("where") or {}).items():
        a = column(str(col), "inputs.where")[kept]
        vals = _text(a).astype(str) if a.dtype.kind not in "fiub" else a
        use &= (vals == (str(want) if vals.dtype.kind in "OUS" else want))
    t = time_axis[None, :]
    x = (t >= on[:, None]) & (t < off[:, None]) & use[:, None]
    return x * float(spec.get("value", 1.0))


# --------------------------------------------------------------------------- writing
def _spike_times(counts: np.ndarray, valid: np.ndarray, event: np.ndarray, time_axis: np.ndarray,
                 bin_ms: float) -> List[np.ndarray]:
    """Per unit, sorted spike times (s) reproducing ``counts``: the c spikes of a bin sit
    at offsets ``(j + 0.5) / c - 0.5`` of 0.8 bin around its centre (well inside it)."""
    K, T, N = counts.shape
    out = []
    for n in range(N):
        c = np.where(valid[:, :, n], counts[:, :, n], 0)
        k, i = np.nonzero(c)
        reps = c[k, i]
        kk, ii = np.repeat(k, reps), np.repeat(i, reps)
        first = np.repeat(np.cumsum(reps) - reps, reps)
        j = np.arange(kk.size) - first
        rr = np.repeat(reps, reps)
        off_ms = 0.8 * bin_ms * ((j + 0.5) / rr - 0.5)
        t = event[kk] + (time_axis[ii] + off_ms) / 1000.0
        out.append(np.sort(t))
    return out


def save_nwb(session: Session, path: PathLike, gap_s: float = 1.0) -> Path:
    """Write ``session`` as an NWB file that :func:`load_nwb` reads back to the same arrays.

    Trials are laid end to end on one clock (``gap_s`` apart); trial k's window
    ``[t_k + time_axis[0] - bin/2, + T * bin]`` becomes its start/stop, its alignment
    event (``session.alignment_event`` or ``align_time``) is ``t_k``. Integer counts become
    spike times inside their bins (units table, with an ``ei_type`` E/I column and, when
    some bins are missing, ``obs_intervals`` = the valid runs); every input channel is a
    ``TimeSeries`` in ``stimulus`` sampled at the bin centres (eye channels raw, in degrees,
    z-scored on reading); factors, events (s), other trial labels and durations are trials
    columns; the reader's options go to scratch ``eirnn_layout``. ``session.truth`` is not
    written. Written to a temporary file and moved into place. Returns the path.
    """
    from hdmf.backends.hdf5.h5_utils import H5DataIO
    from hdmf.common import VectorData, VectorIndex
    from pynwb import NWBHDF5IO, NWBFile, TimeSeries
    from pynwb.misc import Units

    s = session
    src = s.source or "<session>"
    K, T, N = s.rates.shape
    bin_ms = s.bin_size_ms
    counts = s.counts
    if counts is None:
        counts = counts_from_rates(s.rates, bin_ms)
    if counts is None:
        raise DataFormatError(src, "rates", "save_nwb needs integer spike counts (rates * bin_size_ms / 1000 "
                                            "must be whole numbers); save_arrays keeps real-valued rates")
    valid_rates = np.isfinite(s.rates)
    w0_ms = float(s.time_axis_ms[0]) - bin_ms / 2.0
    span_s = T * bin_ms / 1000.0
    t_start = gap_s + np.arange(K) * (span_s + gap_s)
    event = t_start - w0_ms / 1000.0
    stop = t_start + span_s
    align = s.alignment_event or "align_time"
    if align in ("start_time", "stop_time"):
        align = "align_time"

    nwb = NWBFile(session_description=f"eirnn session {s.session_name} ({src})",
                  identifier=f"eirnn-{s.session_name}-{K}x{T}x{N}",
                  session_start_time=_dt.datetime(2000, 1, 1, tzinfo=_dt.timezone.utc),
                  session_id=s.session_name)
    # trials
    events = {e: v for e, v in s.events.items() if e != align}  # the alignment event is its own column
    extra = dict(s.trial_columns)
    if s.trial_probability is not None and s.trial_location is not None:
        extra.setdefault("probability", s.trial_probability)
    seen = {"start_time", "stop_time", "duration_ms", align}
    for group, names in (("events", events), ("factors", s.factors), ("trial_columns", extra)):
        for name in names:
            if name in seen:
                raise DataFormatError(src, f"{group}.{name}", "a trials column of this name is already written "
                                                              "(names must differ across events, factors, labels)")
            seen.add(name)
    nwb.add_trial_column(align, f"alignment event (0 ms of the session's time axis), s")
    for e in events:
        nwb.add_trial_column(e, f"event {e}, s (NaN = absent)")
    for f in s.factors:
        nwb.add_trial_column(f, f"condition factor {f} (integer code)")
    for c in extra:
        nwb.add_trial_column(c, f"trial label {c}")
    nwb.add_trial_column("duration_ms", "trial duration, ms")
    for k in range(K):
        row = {"start_time": float(t_start[k]), "stop_time": float(stop[k]), align: float(event[k]),
               "duration_ms": float(s.trial_duration_ms[k])}
        for e, v in events.items():
            row[e] = float(event[k] + v[k] / 1000.0)
        for f, v in s.factors.items():
            row[f] = int(v[k])
        for c, v in extra.items():
            row[c] = v[k].item() if hasattr(v[k], "item") else v[k]
        nwb.add_trial(**row)
    # units
    spikes = _spike_times(counts, valid_rates, event, s.time_axis_ms, bin_ms)
    # built column by column (numpy arrays): add_unit row by row is slow for many spikes
    cols = [VectorData(name="spike_times", data=H5DataIO(np.concatenate(spikes + [np.zeros(0)]), compression="gzip"),
                       description="spike times, s")]
    cols.append(VectorIndex(name="spike_times_index", data=np.cumsum([x.size for x in spikes]).astype(np.int64),
                            target=cols[0]))
    if not valid_rates.all():  # observation intervals = runs of valid bins
        edges = np.arange(T + 1) * bin_ms / 1000.0
        iv, ends = [], []
        for n in range(N):
            for k in range(K):
                d = np.diff(np.r_[False, valid_rates[k, :, n], False].astype(np.int8))
                for a_, b_ in zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1)):
                    iv.append([t_start[k] + edges[a_], t_start[k] + edges[b_]])
            ends.append(len(iv))
        cols.append(VectorData(name="obs_intervals", data=np.asarray(iv, np.float64).reshape(-1, 2),
                               description="observation intervals, s"))
        cols.append(VectorIndex(name="obs_intervals_index", data=np.asarray(ends, np.int64), target=cols[-1]))
    cols.append(VectorData(name="ei_type", data=np.where(s.is_excitatory, "E", "I").astype(object).tolist(),
                           description="E (excitatory) or I (inhibitory)"))
    cols.append(VectorData(name="neuron_id", data=np.asarray(s.neuron_ids), description="the session's neuron id"))
    if s.brain_area is not None:
        cols.append(VectorData(name="brain_area", data=np.asarray(s.brain_area), description="brain-area code"))
    nwb.units = Units(name="units", id=np.arange(N), columns=cols, description="recorded units")
    # inputs, sampled at the bin centres
    stamps = (event[:, None] + s.time_axis_ms[None, :] / 1000.0).reshape(-1)
    eye = {"eye_x": 0, "eye_y": 1} if s.eye_raw is not None else {}
    first = None
    for c, name in enumerate(s.input_names):
        if name in eye:
            data, unit = s.eye_raw[:, :, eye[name]], "degrees"
        else:
            data, unit = s.inputs[:, :, c], "a.u."
        ts = TimeSeries(name=name, data=H5DataIO(np.ascontiguousarray(data.reshape(-1)), compression="gzip"),
                        timestamps=H5DataIO(stamps, compression="gzip") if first is None else first,
                        unit=unit, description=f"task input {name}, one sample per bin centre")
        first = first or ts  # later channels link to the first one's timestamps
        nwb.add_stimulus(ts)
    layout = {
        "bin_size_ms": bin_ms, "align_event": align, "window_ms": [w0_ms, w0_ms + T * bin_ms],
        "factors": list(s.factors), "events": list(s.events), "trial_columns": list(extra),
        "duration_column": "duration_ms",
        "inputs": [{"name": n, "timeseries": n} for n in s.input_names],
        "zscore_inputs": list(eye) or None, "ei": {"column": "ei_type"},
        "area_column": "brain_area" if s.brain_area is not None else None, "neuron_id_column": "neuron_id",
        "session_name": s.session_name,
        "factor_labels": {k: list(v) for k, v in s.factor_labels.items() if v is not None},
        "metadata": {k: v for k, v in s.metadata.items() if isinstance(v, str)},
    }
    nwb.add_scratch(json.dumps(layout), name="eirnn_layout", description="eirnn reader options for this file")
    nwb.add_scratch(np.asarray(s.time_axis_ms, np.float64), name="eirnn_time_axis_ms",
                    description="bin centres, ms from the alignment event")
    if s.eye_norm is not None:
        nwb.add_scratch(np.asarray(s.eye_norm, np.float64), name="eirnn_eye_norm",
                        description="(mean, std) z-scoring eye_x / eye_y")
    p = Path(os.path.expanduser(os.fspath(path)))
    if not p.parent.is_dir():
        raise FileNotFoundError(f"directory does not exist: {p.parent}")
    from eirnn.utils import atomic_write  # temp file beside p, fsync, rename (full disk: p unchanged)

    def write(tmp: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with NWBHDF5IO(tmp, "w") as io:
                io.write(nwb)

    atomic_write(p, write, by_path=True)
    return p
