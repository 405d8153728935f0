"""Read / write sessions as plain arrays: ``.npz`` (numpy) or ``.h5`` / ``.hdf5`` (HDF5).

Keys (K trials, T bins, N neurons, C input channels); only the first two and a bin
size are required::

    counts            [K, T, N] int     spike counts per bin (or ``rates`` [K, T, N] sp/s)
    inputs            [K, T, C] float   task inputs
    bin_size_ms       scalar            (or data.options.bin_size_ms)
    mask              [K, T, N] bool    True = valid bin (default: every finite bin)
    input_names       [C] str           default input_0 .. input_{C-1} (SC's 14 when C == 14)
    condition_ids     [K] int           one factor named "condition"
    factors.NAME      [K] int           condition factors (order: factor_names, if given)
    factor_names      [F] str
    events.NAME       [K] float         event times, ms on the time axis's clock
    trial.NAME        [K]               other per-trial labels
    is_excitatory     [N] bool          E/I labels (or ei_labels [N] str "E"/"I",
                                        or data.options.ei.default=E|I)
    time_axis_ms [T], trial_duration_ms [K], neuron_ids [N], brain_area [N],
    eye_raw [K, T, 2], eye_norm [2, 2], truth [K, T, N] (true rates, sp/s),
    session_name, alignment_event, metadata.NAME (str)

lfads-torch files (keys ``train_encod_data`` / ``valid_encod_data`` [K, T, N] counts,
``*_ext_input`` [K, T, C], ``*_truth`` [K, T, N] expected counts per bin, and
``train_inds`` / ``valid_inds`` giving each trial's place) are read too: train and
valid trials are put back in ``*_inds`` order (train first when absent), with one
factor ``split`` (0 train, 1 valid).

Rates are ``counts * 1000 / bin`` (NaN where ``mask`` is False); :func:`save_arrays`
writes counts when the session's rates are integer counts, else rates, so
``load_arrays(save_arrays(s))`` gives the same arrays.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import numpy as np

from .errors import DataFormatError
from .session import Session, counts_from_rates, plain_options as _plain

__all__ = ["ARRAYS_DEFAULTS", "load_arrays", "save_arrays"]

PathLike = Union[str, os.PathLike]

#: Reader options (``data.options`` in conf/data/arrays.yaml).
ARRAYS_DEFAULTS: Dict[str, Any] = {
    "bin_size_ms": None,   # used when the file has no bin_size_ms
    "input_names": None,   # names of the input channels when the file has none
    "ei": None,            # {default: E|I} when the file has no E/I labels
}


def _read_all(p: Path) -> Dict[str, Any]:
    src = str(p)
    suffix = p.suffix.lower()
    try:
        if suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        import h5py

        out: Dict[str, Any] = {}
        with h5py.File(p, "r") as f:
            def visit(name, obj):
                if isinstance(obj, h5py.Dataset):
                    out[name.replace("/", ".")] = obj[()]
            f.visititems(visit)
        return out
    except Exception as e:
        raise DataFormatError(src, None, f"not a readable {suffix or 'arrays'} file: {type(e).__name__}: {e}") from None


def _str(v: Any) -> str:
    a = np.asarray(v).reshape(-1)
    x = a[0] if a.size else ""
    return x.decode() if isinstance(x, bytes) else str(x)


def _strs(v: Any) -> list:
    return [x.decode() if isinstance(x, bytes) else str(x) for x in np.asarray(v).reshape(-1)]


def _lfads(d: Dict[str, Any], src: str) -> Dict[str, Any]:
    parts = [k for k in ("train", "valid") if f"{k}_encod_data" in d]
    data = [np.asarray(d[f"{k}_encod_data"]) for k in parts]
    order = None
    if all(f"{k}_inds" in d for k in parts):
        inds = np.concatenate([np.asarray(d[f"{k}_inds"]).reshape(-1) for k in parts]).astype(np.int64)
        order = np.argsort(inds, kind="stable")

    def cat(suffix):
        if not all(f"{k}_{suffix}" in d for k in parts):
            return None
        a = np.concatenate([np.asarray(d[f"{k}_{suffix}"]) for k in parts], axis=0)
        return a if order is None else a[order]

    out = {"counts": np.concatenate(data, axis=0)}
    split = np.concatenate([np.full(x.shape[0], i, np.int64) for i, x in enumerate(data)])
    if order is not None:
        out["counts"], split = out["counts"][order], split[order]
    out["factors.split"] = split
    ext = cat("ext_input")
    if ext is None:
        raise DataFormatError(src, "train_ext_input", "lfads-style file without task inputs (*_ext_input)")
    out["inputs"] = ext
    truth = cat("truth")
    if truth is not None:
        out["_truth_counts"] = truth
    for k in ("bin_size_ms", "input_names", "is_excitatory", "ei_labels", "neuron_ids"):
        if k in d:
            out[k] = d[k]
    return out


def load_arrays(path: PathLike, options: Optional[Mapping[str, Any]] = None) -> Session:
    """A :class:`Session` from a ``.npz`` / ``.h5`` arrays file (keys: module docstring)."""

    p = Path(os.path.expanduser(os.fspath(path)))
    src = str(p)
    if not p.exists():
        raise DataFormatError(src, None, "file not found")
    opts = dict(_plain(options) or {})
    unknown = sorted(set(opts) - set(ARRAYS_DEFAULTS))
    if unknown:
        raise DataFormatError(src, f"options.{unknown[0]}", f"unknown arrays reader option; known: {sorted(ARRAYS_DEFAULTS)}")
    d = _read_all(p)
    if "train_encod_data" in d or "valid_encod_data" in d:
        d = _lfads(d, src)

    def err(field, msg):
        return DataFormatError(src, field, msg)

    if "bin_size_ms" in d:
        bin_ms = float(np.asarray(d["bin_size_ms"]).reshape(-1)[0])
    elif opts.get("bin_size_ms") is not None:
        bin_ms = float(opts["bin_size_ms"])
    else:
        raise err("bin_size_ms", "not in the file: give data.options.bin_size_ms=MS")
    if not (np.isfinite(bin_ms) and bin_ms > 0):
        raise err("bin_size_ms", f"expected a positive bin size, got {bin_ms:g}")
    counts = None
    if "counts" in d:
        c = np.asarray(d["counts"])
        if c.ndim != 3:
            raise err("counts", f"expected 3 dimensions [trials x time x neurons], got shape {c.shape}")
        if c.dtype.kind == "f":
            bad = np.isfinite(c) & (c != np.round(c))
            if bad.any():
                raise err("counts", "expected integer spike counts, got non-integer values (store rates instead)")
        elif c.dtype.kind not in "iub":
            raise err("counts", f"expected integer spike counts, got dtype {c.dtype}")
        from .validate import check_integer_overflow

        check_integer_overflow(src, "counts", c)  # e.g. uint8 counts stuck at 255
        mask = np.isfinite(c) if c.dtype.kind == "f" else np.ones(c.shape, bool)
        counts = np.where(mask, c, 0).astype(np.int64)
        if np.any(counts < 0):
            raise err("counts", "negative spike counts")
        rates = counts * (1000.0 / bin_ms)
    elif "rates" in d:
        from .validate import check_integer_overflow

        check_integer_overflow(src, "rates", d["rates"])  # e.g. int8 rates stuck at 127
        rates = np.asarray(d["rates"], dtype=np.float64)
        if rates.ndim != 3:
            raise err("rates", f"expected 3 dimensions [trials x time x neurons], got shape {rates.shape}")
        mask = np.isfinite(rates)
    else:
        raise err("counts", "required key missing (counts [trials x time x neurons], or rates)")
    K, T, N = rates.shape
    if "mask" in d:
        m = np.asarray(d["mask"]).astype(bool)
        if m.shape != (K, T, N):
            raise err("mask", f"expected shape {(K, T, N)} like counts, got {m.shape}")
        mask &= m
    rates = np.where(mask, rates, np.nan)
    if counts is not None:
        counts[~mask] = 0
    if "inputs" not in d:
        raise err("inputs", "required key missing (task inputs [trials x time x channels])")
    inputs = np.asarray(d["inputs"], dtype=np.float64)
    if inputs.ndim != 3 or inputs.shape[:2] != (K, T):
        raise err("inputs", f"expected shape ({K}, {T}, C) [trials x time x channels] to match counts, got {inputs.shape}")
    names = _strs(d["input_names"]) if "input_names" in d else opts.get("input_names")
    if names is not None and len(names) != inputs.shape[2]:
        raise err("input_names", f"expected {inputs.shape[2]} names (one per input channel), got {len(names)}")
    factors: Dict[str, np.ndarray] = {}
    fkeys = [k[len("factors."):] for k in d if k.startswith("factors.")]
    if "factor_names" in d:
        order = _strs(d["factor_names"])
        missing = [f for f in order if f not in fkeys]
        if missing:
            raise err(f"factors.{missing[0]}", "named in factor_names but not in the file")
        fkeys = order + [f for f in fkeys if f not in order]
    for f in fkeys:
        factors[f] = np.asarray(d[f"factors.{f}"])
    if "condition_ids" in d and "condition" not in factors:
        factors["condition"] = np.asarray(d["condition_ids"])
    for f, v in factors.items():
        if v.reshape(-1).shape != (K,):
            raise err(f"factors.{f}" if f != "condition" else "condition_ids", f"expected {K} entries (one per trial), got {v.size}")
    if "is_excitatory" in d:
        is_exc = np.asarray(d["is_excitatory"]).astype(bool).reshape(-1)
    elif "ei_labels" in d:
        lab = _strs(d["ei_labels"])
        bad = sorted(set(lab) - {"E", "I"})
        if bad:
            raise err("ei_labels", f"unknown label(s) {bad}; expected E or I")
        is_exc = np.array([x == "E" for x in lab])
    else:
        default = (dict(_plain(opts.get("ei")) or {})).get("default")
        if default not in ("E", "I"):
            raise err("is_excitatory", f"no E/I labels for the {N} neurons, and Dale's law needs them: add "
                                       f"is_excitatory [N] bool (or ei_labels) to the file, or label all "
                                       f"neurons with data.options.ei.default=E|I")
        is_exc = np.full(N, default == "E")
    if is_exc.shape != (N,):
        raise err("is_excitatory", f"expected {N} entries (one per neuron), got {is_exc.size}")
    truth = None
    if "truth" in d:
        truth = {"rates": np.asarray(d["truth"], dtype=np.float64)}
    elif "_truth_counts" in d:
        truth = {"rates": np.asarray(d["_truth_counts"], dtype=np.float64) * (1000.0 / bin_ms)}
    if truth is not None and truth["rates"].shape != (K, T, N):
        raise err("truth", f"expected shape {(K, T, N)} like counts, got {truth['rates'].shape}")
    opt = lambda k: None if k not in d else np.asarray(d[k])  # noqa: E731
    return Session(
        rates=rates, inputs=inputs, is_excitatory=is_exc, bin_size_ms=bin_ms,
        time_axis_ms=opt("time_axis_ms"), trial_duration_ms=opt("trial_duration_ms"),
        neuron_ids=opt("neuron_ids"), brain_area=opt("brain_area"),
        session_name=_str(d["session_name"]) if "session_name" in d else p.stem, source=src,
        eye_raw=opt("eye_raw"), eye_norm=opt("eye_norm"), truth=truth, input_names=names,
        factors=factors, events={k[len("events."):]: d[k] for k in d if k.startswith("events.")},
        trial_columns={k[len("trial."):]: d[k] for k in d if k.startswith("trial.")},
        trial_probability=opt("trial_probability"), counts=counts,
        alignment_event=_str(d["alignment_event"]) if "alignment_event" in d else "",
        metadata={k[len("metadata."):]: _str(d[k]) for k in d if k.startswith("metadata.")},
    )


def session_to_arrays(session: Session) -> Dict[str, np.ndarray]:
    """The keys of the module docstring for ``session`` (counts when its rates are counts)."""

    s = session
    out: Dict[str, np.ndarray] = {}
    counts = s.counts if s.counts is not None else counts_from_rates(s.rates, s.bin_size_ms)
    valid = np.isfinite(s.rates)
    if counts is not None and np.array_equal(np.where(valid, counts * (1000.0 / s.bin_size_ms), np.nan), s.rates,
                                             equal_nan=True):
        out["counts"] = counts.astype(np.int32 if counts.max(initial=0) < 2 ** 31 else np.int64)
    else:
        out["rates"] = s.rates
    if not valid.all():
        out["mask"] = valid
    out.update({"inputs": s.inputs, "input_names": np.array(s.input_names), "bin_size_ms": np.float64(s.bin_size_ms),
                "is_excitatory": s.is_excitatory, "time_axis_ms": s.time_axis_ms,
                "trial_duration_ms": s.trial_duration_ms, "neuron_ids": s.neuron_ids,
                "session_name": np.array(s.session_name), "alignment_event": np.array(s.alignment_event)})
    if s.factors:
        out["factor_names"] = np.array(list(s.factors))
    for k, v in s.factors.items():
        out[f"factors.{k}"] = v
    for k, v in s.events.items():
        out[f"events.{k}"] = v
    for k, v in s.trial_columns.items():
        out[f"trial.{k}"] = v
    if s.trial_probability is not None:
        out["trial_probability"] = s.trial_probability
    for k in ("brain_area", "eye_raw", "eye_norm"):
        if getattr(s, k) is not None:
            out[k] = getattr(s, k)
    if s.truth is not None and s.truth.get("rates") is not None:
        out["truth"] = np.asarray(s.truth["rates"], dtype=np.float64)
    for k, v in s.metadata.items():
        if isinstance(v, str):
            out[f"metadata.{k}"] = np.array(v)
    return out


def save_arrays(session: Session, path: PathLike) -> Path:
    """Write ``session`` as ``.npz`` (compressed) or ``.h5`` / ``.hdf5``; temp file + rename."""
    p = Path(os.path.expanduser(os.fspath(path)))
    suffix = p.suffix.lower()
    if suffix not in (".npz", ".h5", ".hdf5"):
        raise ValueError(f"arrays file must end in .npz, .h5 or .hdf5, got {p.name}")
    if not p.parent.is_dir():
        raise FileNotFoundError(f"directory does not exist: {p.parent}")
    arrays = session_to_arrays(session)
    from eirnn.utils import atomic_write  # temp file beside p, fsync, rename (full disk: p unchanged)

    def write(tmp: str) -> None:
        if suffix == ".npz":
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, **arrays)
        else:
            import h5py

            with h5py.File(tmp, "w") as f:
                for k, v in arrays.items():
                    v = np.asarray(v)
                    if v.dtype.kind == "U":
                        v = v.astype(h5py.string_dtype()) if v.ndim else np.bytes_(str(v).encode())
                    kw = {"compression": "gzip", "shuffle": True} if v.ndim and v.size >= 4096 else {}
                    f.create_dataset(k, data=v, **kw)

    atomic_write(p, write, by_path=True)
    return p
