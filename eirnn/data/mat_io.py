"""Read / write the lab's MATLAB session export (v7.3 = HDF5 via h5py, v5 via scipy).

Both formats go through the same code: the reader first collects every field in
**MATLAB dimension order** (h5py arrays are transposed back, since HDF5 stores
MATLAB arrays with reversed dims), then :func:`session_from_fields` validates the
schema and builds a :class:`Session`. Hence v5 and v7.3 give identical arrays.

Schema (MATLAB shapes; K trials, T bins, N neurons), see shared/data/README.md:
``firing_rates`` N x T x K, ``neuron_type`` 1 x N, ``input_target_loc`` 4 x T x K,
other ``input_*`` T x K, ``trial_*`` 1 x K, ``time_axis`` 1 x T, scalars 1 x 1,
strings as MATLAB char.

Defaults for optional fields: eye channels -> zeros (also in ``Session.eye_raw``);
``time_axis`` -> ``bin * (arange(T) - 0.5)`` (first centre at
-bin/2); ``trial_duration_ms`` -> ``T * bin``; ``trial_probability`` ->
``trial_reward``; ``neuron_ids`` -> 1..N; ``brain_area`` -> None;
``session_name`` -> file stem. ``n_trials`` / ``n_neurons`` / ``n_time_bins``, when
present, must agree with ``firing_rates``.

Eye channels: the file holds raw eye position; ``load_mat`` keeps it in
``Session.eye_raw`` and puts the session-wide z-score in ``Session.inputs`` (absent
or all-zero channels -> exactly 0). ``save_mat`` writes ``eye_raw`` (or, when it is
None, the eye channels of ``inputs``, which reload unchanged because z-scoring is
exactly idempotent); when the session's normalisation (``Session.eye_norm``) is not
the saved data's own (a ``subset``), it also writes the extra 2 x 2 field
``eye_zscore`` = [mean std] per eye channel, which ``load_mat`` honours. So
``load_mat(save_mat(s))`` reproduces every array of ``s`` exactly.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Dict, Union

import numpy as np

from .errors import DataFormatError
from .session import INPUT_CHANNELS, Session, apply_eye_norm, counts_from_rates, eye_norm_stats
from .validate import check_integer_overflow, validate_session

__all__ = ["REQUIRED_FIELDS", "OPTIONAL_FIELDS", "load_mat", "save_mat",
           "read_mat_fields", "session_from_fields", "session_to_fields", "mat_version"]

PathLike = Union[str, os.PathLike]

REQUIRED_FIELDS = (
    "firing_rates", "neuron_type", "bin_size_ms",
    "input_fixation_on", "input_go_signal", "input_reward_on", "input_target_loc",
    "input_is_face", "input_is_nonface", "input_is_bullseye",
    "input_high_salience", "input_low_salience",
    "trial_location", "trial_identity", "trial_reward", "trial_salience",
)
OPTIONAL_FIELDS = (
    "input_eye_x", "input_eye_y", "time_axis", "trial_duration_ms", "trial_probability",
    "neuron_ids", "brain_area", "session_name", "export_date", "pipeline_version",
    "n_trials", "n_neurons", "n_time_bins", "eye_zscore",
)
# file field feeding each INPUT_CHANNELS entry (target_loc handled separately)
_CHANNEL_FIELD = {
    "fixation_on": "input_fixation_on", "go_signal": "input_go_signal",
    "reward_on": "input_reward_on", "eye_x": "input_eye_x", "eye_y": "input_eye_y",
    "is_face": "input_is_face", "is_nonface": "input_is_nonface",
    "is_bullseye": "input_is_bullseye", "high_salience": "input_high_salience",
    "low_salience": "input_low_salience",
}
_ALLOWED_CODES = {
    "trial_location": (1, 2, 3, 4), "trial_identity": (1, 2, 3),
    "trial_reward": (0, 1), "trial_salience": (0, 1, 2), "trial_probability": None,
}
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


class _Opaque:
    """Placeholder for a MATLAB value we do not interpret (cell, struct, ...)."""

    def __init__(self, kind: str):
        self.kind = kind


# --------------------------------------------------------------------------- reading
def mat_version(path: PathLike) -> str:
    """"7.3" (HDF5) or "5" from the file's header; DataFormatError otherwise."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            head = fh.read(1024)
    except OSError as e:
        raise DataFormatError(p, None, f"cannot read file: {e}") from None
    for off in (0, 512):
        if head[off:off + 8] == _HDF5_SIGNATURE:
            return "7.3"
    if len(head) >= 128 and head.startswith(b"MATLAB") and head[126:128] in (b"IM", b"MI"):
        return "5"
    raise DataFormatError(p, None, "not a MATLAB file (no MAT-file header or HDF5 signature)")


def _decode_h5_char(data: np.ndarray) -> str:
    m = np.asarray(data).T  # MATLAB order: rows x chars
    if m.ndim < 2:
        m = m.reshape(1, -1)
    rows = [np.ascontiguousarray(r, dtype="<u2").tobytes().decode("utf-16-le", "replace")
            for r in m.reshape(m.shape[0], -1)]
    return "\n".join(rows)


def _read_h5(path: Path) -> Dict[str, Any]:
    import h5py

    out: Dict[str, Any] = {}
    with h5py.File(path, "r") as f:
        for name, obj in f.items():
            if name.startswith("#"):
                continue
            if not isinstance(obj, h5py.Dataset):
                out[name] = _Opaque("struct")
                continue
            cls = obj.attrs.get("MATLAB_class", b"")
            cls = cls.decode() if isinstance(cls, bytes) else str(cls)
            if int(np.asarray(obj.attrs.get("MATLAB_empty", 0)).ravel()[0]):
                dims = tuple(int(d) for d in np.asarray(obj[()]).ravel()[::-1]) or (0, 0)
                out[name] = "" if cls == "char" else np.zeros(dims)
            elif cls == "char":
                out[name] = _decode_h5_char(obj[()])
            elif obj.dtype.kind in "fiub":
                out[name] = np.asarray(obj[()]).T  # back to MATLAB dimension order
            else:
                out[name] = _Opaque("cell" if obj.dtype.kind == "O" else str(obj.dtype))
    return out


def _read_v5(path: Path) -> Dict[str, Any]:
    import scipy.io
    import scipy.sparse

    raw = scipy.io.loadmat(str(path), squeeze_me=False, chars_as_strings=True, mat_dtype=False)
    out: Dict[str, Any] = {}
    for name, v in raw.items():
        if name.startswith("__"):
            continue
        if scipy.sparse.issparse(v):
            out[name] = _Opaque("sparse")
        elif isinstance(v, np.ndarray) and v.dtype.kind == "U":
            out[name] = "\n".join(str(s) for s in v.reshape(-1))
        elif isinstance(v, np.ndarray) and v.dtype.kind in "fiub":
            out[name] = v
        elif isinstance(v, np.ndarray) and v.dtype.names:
            out[name] = _Opaque("struct")
        elif isinstance(v, np.ndarray) and v.dtype.kind == "O":
            out[name] = _Opaque("cell")
        else:
            out[name] = _Opaque(type(v).__name__ if not hasattr(v, "dtype") else str(v.dtype))
    return out


def read_mat_fields(path: PathLike) -> Dict[str, Any]:
    """Every top-level variable of a MAT file: numeric ones as numpy arrays in
    MATLAB dimension order, char as str, anything else as an opaque marker."""
    p = Path(os.path.expanduser(os.fspath(path)))
    if not p.exists():
        raise DataFormatError(p, None, "file not found")
    if not p.is_file():
        raise DataFormatError(p, None, "not a regular file")
    version = mat_version(p)
    try:
        return _read_h5(p) if version == "7.3" else _read_v5(p)
    except DataFormatError:
        raise
    except Exception as e:  # corrupt / truncated / unsupported content
        raise DataFormatError(p, None, f"unreadable MATLAB v{version} file: "
                                       f"{type(e).__name__}: {e}") from None


# ------------------------------------------------------------------------ validation
def session_from_fields(fields: Dict[str, Any], path: PathLike, source: str | None = None) -> Session:
    """Validate raw MATLAB-order ``fields`` (as from :func:`read_mat_fields`) and
    build a Session. Raises DataFormatError naming the first bad field."""
    path = os.fspath(path)

    def err(name, msg):
        return DataFormatError(path, name, msg)

    for name in REQUIRED_FIELDS:
        if name not in fields:
            raise err(name, "required field is missing")

    def num(name) -> np.ndarray:
        v = fields[name]
        if isinstance(v, str):
            raise err(name, "expected a numeric array, got char (text)")
        if isinstance(v, _Opaque):
            raise err(name, f"expected a numeric array, got {v.kind}")
        a = np.asarray(v)
        if a.dtype.kind not in "fiub":
            raise err(name, f"expected a numeric array, got dtype {a.dtype}")
        check_integer_overflow(path, name, a)  # e.g. int8 rates saturated at 127
        return a.astype(np.float64, copy=False)

    def no_inf(name, a):
        if np.isinf(a).any():
            raise err(name, "contains infinite values (only NaN may mark missing data)")

    def vector(name, n, what) -> np.ndarray:
        a = num(name)
        if a.size != n or (a.ndim > 0 and max(a.shape) != a.size):
            raise err(name, f"expected a vector of {n} entries (one per {what}), got shape {a.shape}")
        return a.reshape(-1)

    def scalar(name) -> float:
        a = num(name)
        if a.size != 1:
            raise err(name, f"expected a scalar, got shape {a.shape}")
        return float(a.reshape(-1)[0])

    def codes(name, n) -> np.ndarray:
        a = vector(name, n, "trial")
        if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
            raise err(name, "expected integer codes, got non-integer or NaN values")
        allowed = _ALLOWED_CODES.get(name)
        if allowed is not None:
            bad = sorted(set(np.unique(a).astype(int).tolist()) - set(allowed))
            if bad:
                raise err(name, f"unknown code(s) {bad}; allowed {list(allowed)}")
        return a.astype(np.int64)

    n_trials_hint = num("trial_location").size
    fr = num("firing_rates")
    if fr.ndim == 2 and n_trials_hint == 1:  # MATLAB drops a trailing singleton trial dim
        fr = fr[:, :, None]
    if fr.ndim != 3:
        raise err("firing_rates", f"expected 3 dimensions [neurons x bins x trials], got shape {fr.shape}")
    N, T, K = fr.shape
    for count, what in ((K, "trials"), (N, "neurons"), (T, "time bins")):
        if count == 0:
            raise err("firing_rates", f"holds no {what} (shape {fr.shape} [neurons x bins x trials]): "
                                      "nothing to fit")
    rates = np.ascontiguousarray(fr.transpose(2, 1, 0))
    no_inf("firing_rates", rates)
    neg = rates < 0
    if neg.any():
        raise err("firing_rates", f"negative rates in {int(neg.sum())} bins (min {np.nanmin(rates):g}); "
                                  f"rates must be >= 0 (NaN = missing)")

    ntype = vector("neuron_type", N, "neuron")
    bad = sorted(set(np.unique(ntype[np.isfinite(ntype)]).tolist()) - {1.0, 2.0})
    if bad or not np.isfinite(ntype).all():
        shown = [int(b) if float(b).is_integer() else b for b in bad] or ["NaN"]
        raise err("neuron_type", f"unknown code(s) {shown}; expected 1 (E, classic) or "
                                 f"2 (I, putative interneuron)")
    is_exc = ntype == 1.0

    bin_ms = scalar("bin_size_ms")
    if not (np.isfinite(bin_ms) and bin_ms > 0):
        raise err("bin_size_ms", f"expected a positive bin size, got {bin_ms:g}")

    for name, actual in (("n_trials", K), ("n_neurons", N), ("n_time_bins", T)):
        if name in fields:
            v = scalar(name)
            if v != actual:
                raise err(name, f"says {v:g} but firing_rates [neurons x bins x trials] "
                                f"{(N, T, K)} has {actual}")

    def channel(name) -> np.ndarray:  # T x K -> [K, T]
        a = num(name)
        if a.shape == (T,) and K == 1:
            a = a[:, None]
        if a.shape != (T, K):
            raise err(name, f"expected shape {(T, K)} [bins x trials] to match firing_rates, "
                            f"got {a.shape}")
        no_inf(name, a)
        return a.T

    tl = num("input_target_loc")
    if tl.ndim == 2 and K == 1:
        tl = tl[:, :, None]
    if tl.ndim != 3 or tl.shape[0] != 4:
        raise err("input_target_loc", f"expected 4 target locations [4 x bins x trials], got shape {tl.shape}")
    if tl.shape[1:] != (T, K):
        raise err("input_target_loc", f"expected shape {(4, T, K)} [4 x bins x trials] to match "
                                      f"firing_rates, got {tl.shape}")
    no_inf("input_target_loc", tl)

    eye_raw = np.zeros((K, T, 2), dtype=np.float64)  # absent eye channel -> zeros
    for j, fname in enumerate(("input_eye_x", "input_eye_y")):
        if fname in fields:
            eye_raw[:, :, j] = channel(fname)
    if "eye_zscore" in fields:  # eirnn extension: normalisation of a saved subset
        eye_norm = num("eye_zscore")
        if eye_norm.shape != (2, 2) or not np.isfinite(eye_norm).all() or np.any(eye_norm[:, 1] < 0):
            raise err("eye_zscore", f"expected finite [mean std] rows for eye x and y (2 x 2), "
                                    f"got shape {eye_norm.shape}")
    else:
        eye_norm = np.array([eye_norm_stats(eye_raw[:, :, j]) for j in range(2)])
    inputs = np.empty((K, T, len(INPUT_CHANNELS)), dtype=np.float64)
    for c, ch in enumerate(INPUT_CHANNELS):
        if ch.startswith("target_loc_"):
            inputs[:, :, c] = tl[int(ch[-1]) - 1].T
        elif ch in ("eye_x", "eye_y"):
            j = 0 if ch == "eye_x" else 1
            inputs[:, :, c] = apply_eye_norm(eye_raw[:, :, j], *eye_norm[j])
        else:
            inputs[:, :, c] = channel(_CHANNEL_FIELD[ch])

    trial = {name: codes(name, K) for name in ("trial_location", "trial_identity",
                                                "trial_reward", "trial_salience")}
    trial["trial_probability"] = (codes("trial_probability", K) if "trial_probability" in fields
                                  else trial["trial_reward"].copy())

    if "time_axis" in fields:
        time_axis = vector("time_axis", T, "time bin")
        if not np.isfinite(time_axis).all():
            raise err("time_axis", "contains NaN/inf")
    else:
        time_axis = bin_ms * (np.arange(T, dtype=np.float64) - 0.5)
    if "trial_duration_ms" in fields:
        duration = vector("trial_duration_ms", K, "trial")
        no_inf("trial_duration_ms", duration)
    else:
        duration = np.full(K, T * bin_ms, dtype=np.float64)
    neuron_ids = vector("neuron_ids", N, "neuron") if "neuron_ids" in fields else None
    brain_area = vector("brain_area", N, "neuron") if "brain_area" in fields else None

    name = fields.get("session_name")
    if not isinstance(name, str) or not name:
        name = Path(path).stem
    metadata = {k: fields[k] for k in ("export_date", "pipeline_version") if isinstance(fields.get(k), str)}
    extra = sorted(set(fields) - set(REQUIRED_FIELDS) - set(OPTIONAL_FIELDS))
    if extra:
        metadata["extra_fields"] = extra

    session = Session(
        rates=rates, inputs=inputs, is_excitatory=is_exc, bin_size_ms=bin_ms,
        time_axis_ms=time_axis, trial_duration_ms=duration, neuron_ids=neuron_ids,
        brain_area=brain_area, session_name=name, source=source or path, eye_raw=eye_raw,
        eye_norm=eye_norm, metadata=metadata, counts=counts_from_rates(rates, bin_ms),
        alignment_event="fixation_on", **trial,
    )
    validate_session(session)  # duplicates, time axis, ids; caveat counts in metadata["caveats"]
    return session


def load_mat(path: PathLike) -> Session:
    """Load a v7.3 (HDF5) or v5 MAT export into a :class:`Session` (identical
    arrays for both). Raises DataFormatError(path, field, message) on any problem."""
    p = Path(os.path.expanduser(os.fspath(path)))
    fields = read_mat_fields(p)
    return session_from_fields(fields, p, source=str(p))


# --------------------------------------------------------------------------- writing
def session_to_fields(session: Session) -> Dict[str, Any]:
    """The export schema for ``session``: name -> MATLAB-order float64 array or str."""
    s = session
    if not s.is_sc:
        raise DataFormatError(s.source or "<session>", "input_names",
                              "the MAT export schema needs the 14 SC input channels and the SC factors "
                              "(location, identity, reward, salience); save this session with "
                              "eirnn.data.save_nwb or save_arrays instead")
    K, T, N = s.rates.shape
    row = lambda v: np.asarray(v, dtype=np.float64).reshape(1, -1)  # noqa: E731
    ch = {c: i for i, c in enumerate(INPUT_CHANNELS)}
    eye = s.eye_raw if s.eye_raw is not None else s.inputs[:, :, [ch["eye_x"], ch["eye_y"]]]
    f: Dict[str, Any] = {
        "firing_rates": s.rates.transpose(2, 1, 0),
        "neuron_type": row(np.where(s.is_excitatory, 1.0, 2.0)),
        "neuron_ids": row(s.neuron_ids),
    }
    if s.brain_area is not None:
        f["brain_area"] = row(s.brain_area)
    f.update({
        "n_trials": np.full((1, 1), float(K)), "n_neurons": np.full((1, 1), float(N)),
        "n_time_bins": np.full((1, 1), float(T)), "bin_size_ms": np.full((1, 1), s.bin_size_ms),
        "time_axis": row(s.time_axis_ms), "trial_duration_ms": row(s.trial_duration_ms),
    })
    for c, name in enumerate(INPUT_CHANNELS):
        if name in ("eye_x", "eye_y") or name.startswith("target_loc_"):
            continue
        f[_CHANNEL_FIELD[name]] = s.inputs[:, :, c].T
    f["input_target_loc"] = s.inputs[:, :, ch["target_loc_1"]:ch["target_loc_4"] + 1].transpose(2, 1, 0)
    f["input_eye_x"] = eye[:, :, 0].T
    f["input_eye_y"] = eye[:, :, 1].T
    if s.eye_raw is not None and s.eye_norm is not None:
        own = np.array([eye_norm_stats(s.eye_raw[:, :, j]) for j in range(2)])
        if not np.array_equal(own, s.eye_norm):  # e.g. a subset: keep the parent's scaling
            f["eye_zscore"] = s.eye_norm
    for name in ("trial_reward", "trial_probability", "trial_identity", "trial_salience",
                 "trial_location"):
        f[name] = row(getattr(s, name))
    try:
        from .. import __version__ as pkg_version
    except ImportError:  # pragma: no cover
        pkg_version = "unknown"
    f["session_name"] = s.session_name
    f["export_date"] = s.metadata.get("export_date", time.strftime("%Y-%m-%d %H:%M:%S"))
    f["pipeline_version"] = s.metadata.get("pipeline_version", f"eirnn-{pkg_version}")
    return {k: (v if isinstance(v, str) else np.asarray(v, dtype=np.float64)) for k, v in f.items()}


def _matlab_header(version_text: str) -> bytes:
    text = (f"MATLAB {version_text} MAT-file, Platform: GLNXA64, "
            f"Created on: {time.strftime('%a %b %d %H:%M:%S %Y')} HDF5 schema 1.00 .")
    head = text.encode("ascii")[:116].ljust(116, b" ")
    return head + b"\x00" * 8 + b"\x00\x02" + b"IM"  # subsys offset, version 0x0200, endian


def _write_h5(fields: Dict[str, Any], path: str, compress: bool) -> None:
    import h5py

    with h5py.File(path, "w", userblock_size=512, libver="earliest") as f:
        for name, v in fields.items():
            if isinstance(v, str):
                codes = np.frombuffer(v.encode("utf-16-le"), dtype="<u2")
                if codes.size == 0:
                    ds = f.create_dataset(name, data=np.zeros(2, dtype=np.uint64))
                    ds.attrs["MATLAB_empty"] = np.uint8(1)
                else:
                    ds = f.create_dataset(name, data=codes.reshape(-1, 1))  # MATLAB 1 x L
                ds.attrs["MATLAB_class"] = np.bytes_(b"char")
                ds.attrs["MATLAB_int_decode"] = np.int32(2)
                continue
            data = np.ascontiguousarray(v.T)  # HDF5 holds MATLAB dims reversed
            kw = {}
            if compress and data.size >= 4096:
                kw = dict(compression="gzip", compression_opts=3, shuffle=True)
            ds = f.create_dataset(name, data=data, **kw)
            ds.attrs["MATLAB_class"] = np.bytes_(b"double")
    with open(path, "r+b") as fh:  # fill the 512-byte userblock with the MAT header
        fh.write(_matlab_header("7.3"))


def _write_v5(fields: Dict[str, Any], path: str, compress: bool) -> None:
    import scipy.io

    with open(path, "wb") as fh:
        scipy.io.savemat(fh, fields, format="5", do_compression=compress, oned_as="row")


def save_mat(session: Session, path: PathLike, version: str = "7.3", compress: bool = True) -> Path:
    """Write ``session`` in the export schema as a MATLAB v7.3 (HDF5 with a MAT
    512-byte header, MATLAB_class attrs) or v5 file. Written to a temp file in the
    same directory and moved into place, so a failure leaves nothing behind.
    Returns the path. ``Session.truth`` is not exported."""
    v = str(version).lower().lstrip("v").replace("-", "")
    if v in ("7.3", "73"):
        writer = _write_h5
    elif v in ("5", "7", "6"):
        writer = _write_v5
    else:
        raise ValueError(f"unsupported MAT version {version!r}; use '7.3' or '5'")
    p = Path(os.path.expanduser(os.fspath(path)))
    if not p.parent.is_dir():
        raise FileNotFoundError(f"directory does not exist: {p.parent}")
    fields = session_to_fields(session)
    from eirnn.utils import atomic_write

    atomic_write(p, lambda tmp: writer(fields, tmp, compress), by_path=True)
    return p
