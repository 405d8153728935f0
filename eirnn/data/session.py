"""The in-memory :class:`Session`: one recording session in model-ready layout.

Layout (all numpy, C-contiguous; real-valued arrays are **float64** so that a
MATLAB double export round-trips bit-exactly; tensors built from them by
:meth:`Session.to_tensors` are float32):

========================  =======================  ==========================================
attribute                 shape / dtype            meaning
========================  =======================  ==========================================
rates                     [K, T, N] float64        binned rate in sp/s, NaN = missing
inputs                    [K, T, C] float64        task inputs, channel c named
                                                   ``input_names[c]``; NaN = missing
input_names               tuple of C str           default ``INPUT_CHANNELS`` when C == 14,
                                                   else ``input_0 .. input_{C-1}``
is_excitatory             [N] bool                 True = E unit, False = I unit
bin_size_ms               float
time_axis_ms              [T] float64              bin centres, ms from the alignment event
                                                   (default ``bin * (arange(T) + 0.5)``)
alignment_event           str                      name of the event at 0 ms (SC export:
                                                   ``"fixation_on"``; "" = unknown)
trial_duration_ms         [K] float64              default ``T * bin``
factors                   dict name -> [K] int64   condition factors, in order; the condition
                                                   of a trial is its tuple of factor values.
                                                   SC: location, identity, reward, salience
factor_labels             dict name -> tuple|None  text label of each code (code = position),
                                                   for factors read from text columns
events                    dict name -> [K] float   event times, ms on ``time_axis_ms``'s clock
                                                   (NaN = the trial lacks it); may be empty
trial_columns             dict name -> [K]         other per-trial labels (not factors)
counts                    [K, T, N] int64|None     integer spike counts (0 where rates is NaN);
                                                   rates = counts * 1000 / bin where valid
trial_location            [K] int64 | None         SC factors (1..4; 1 face, 2 nonface,
trial_identity                                     3 bullseye; 1/0 high/low reward; 0 n/a,
trial_reward                                       1 high, 2 low salience). Given these, or
trial_salience                                     ``factors`` with these four names, both
                                                   are filled in
trial_probability         [K] int64 | None         SC: 1 high, 0 low (defaults to trial_reward)
neuron_ids                [N] int64 (or float64)   defaults to 1..N
brain_area                [N] int64 or None
eye_raw                   [K, T, 2] float64|None   eye x/y as stored in the file (degrees,
                                                   zeros when absent); see "Eye channels"
eye_norm                  [2, 2] float64|None      (mean, std) of eye x / y used in inputs
truth                     dict or None             synthetic ground truth (see synthetic.py)
========================  =======================  ==========================================

K = trials, T = time bins, N = recorded neurons, C = input channels.

A session of another task (any channels and factors) only needs rates, inputs,
is_excitatory and bin_size_ms; the SC attributes then stay None and the MAT writer
refuses it (the NWB and arrays writers take any session).

Eye channels (only for sessions with channels named ``eye_x`` and ``eye_y``): when ``eye_raw`` is given, the eye_x / eye_y channels of ``inputs`` are
always ``(eye_raw - mean) / std`` with ``eye_norm`` = [[mean_x, std_x], [mean_y, std_y]]
(std 0 -> channel exactly 0); ``eye_norm`` defaults to the statistics of all finite
bins of ``eye_raw`` (:func:`eye_norm_stats`), i.e. a session-wide z-score. ``subset``
keeps the parent's ``eye_norm`` so the kept trials' inputs are unchanged. ``save_mat``
writes ``eye_raw`` (plus an extra ``eye_zscore`` field when ``eye_norm`` differs from
the saved data's own statistics) and ``load_mat`` applies the same normalisation, so
save/load round trips are exact. With ``eye_raw=None`` the eye channels of ``inputs``
are used as given and saved as the eye fields; they reload unchanged when already
z-scored (or all zero), because z-scoring is exactly idempotent.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from .errors import DataFormatError

__all__ = ["INPUT_CHANNELS", "EYE_CHANNELS", "SC_FACTORS", "TRUTH_TRIAL_KEYS", "Session", "zscore_eye",
           "eye_norm_stats", "apply_eye_norm", "session_to_tensors", "counts_from_rates", "plain_options"]

#: The 14 model input channels, in the lab's order.
INPUT_CHANNELS: tuple = (
    "fixation_on", "target_loc_1", "target_loc_2", "target_loc_3", "target_loc_4",
    "go_signal", "reward_on", "eye_x", "eye_y", "is_face", "is_nonface", "is_bullseye",
    "high_salience", "low_salience",
)
#: Indices of eye_x / eye_y in ``INPUT_CHANNELS``.
EYE_CHANNELS: tuple = (INPUT_CHANNELS.index("eye_x"), INPUT_CHANNELS.index("eye_y"))
#: Default keys of ``Session.truth`` whose first axis is trials (sliced by ``subset``);
#: a truth dict may override this with its own ``"trial_keys"`` entry.
TRUTH_TRIAL_KEYS: tuple = ("rates",)

_TRIAL_INT_FIELDS = ("trial_location", "trial_identity", "trial_reward", "trial_salience",
                     "trial_probability")
_CONDITION_FIELDS = ("trial_location", "trial_identity", "trial_reward", "trial_salience")
#: The SC export's condition factors: factor name -> Session attribute (condition order).
SC_FACTORS: Dict[str, str] = {"location": "trial_location", "identity": "trial_identity",
                              "reward": "trial_reward", "salience": "trial_salience"}


def eye_norm_stats(raw: np.ndarray) -> Tuple[float, float]:
    """(mean, std) used to z-score one eye channel over all its finite bins.

    (0.0, 0.0) means "no usable eye data" (no finite value, or std < 1e-12: absent or
    all-zero eye channel) and maps the channel to exactly 0.0 everywhere, never NaN.
    Data already z-scored (|mean| < 1e-9 and |std - 1| < 1e-9) gives exactly (0.0, 1.0),
    so z-scoring is exactly idempotent.
    """
    raw = np.asarray(raw, dtype=np.float64)
    vals = raw[np.isfinite(raw)]
    if vals.size == 0:
        return 0.0, 0.0
    mu, sd = float(vals.mean()), float(vals.std())
    if not np.isfinite(sd) or sd < 1e-12:
        return 0.0, 0.0
    if abs(mu) < 1e-9 and abs(sd - 1.0) < 1e-9:
        return 0.0, 1.0
    return mu, sd


def apply_eye_norm(raw: np.ndarray, mean: float, std: float) -> np.ndarray:
    """(raw - mean) / std, or all zeros when std == 0 (see :func:`eye_norm_stats`)."""
    raw = np.asarray(raw, dtype=np.float64)
    if std == 0.0:
        return np.zeros_like(raw)
    return (raw - mean) / std


def zscore_eye(raw: np.ndarray) -> np.ndarray:
    """Z-score one eye channel over its own finite bins (NaN stays NaN; absent /
    constant data -> exactly 0.0 everywhere; already z-scored data -> unchanged)."""
    return apply_eye_norm(raw, *eye_norm_stats(raw))


def _as_int_vector(x: Any, name: str, src: str) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
            raise DataFormatError(src, name, "expected integer codes, got non-integer or NaN values")
    elif a.dtype.kind not in "iub":
        raise DataFormatError(src, name, f"expected integer codes, got dtype {a.dtype}")
    return np.ascontiguousarray(a.astype(np.int64).reshape(-1))


def _maybe_int(a: np.ndarray) -> np.ndarray:
    """int64 copy of a real vector when all values are integers, else float64."""
    a = np.asarray(a)
    if a.dtype.kind in "iub":
        return np.ascontiguousarray(a.astype(np.int64).reshape(-1))
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    if np.all(np.isfinite(a)) and np.all(a == np.round(a)):
        return np.ascontiguousarray(a.astype(np.int64))
    return np.ascontiguousarray(a)


@dataclass(eq=False)
class Session:
    """One session of binned recordings plus task inputs (see module docstring)."""

    rates: np.ndarray
    inputs: np.ndarray
    is_excitatory: np.ndarray
    bin_size_ms: float
    time_axis_ms: Optional[np.ndarray] = None
    trial_duration_ms: Optional[np.ndarray] = None
    trial_location: Optional[np.ndarray] = None
    trial_identity: Optional[np.ndarray] = None
    trial_reward: Optional[np.ndarray] = None
    trial_salience: Optional[np.ndarray] = None
    trial_probability: Optional[np.ndarray] = None
    neuron_ids: Optional[np.ndarray] = None
    brain_area: Optional[np.ndarray] = None
    session_name: str = "session"
    source: str = ""
    eye_raw: Optional[np.ndarray] = None
    eye_norm: Optional[np.ndarray] = None
    truth: Optional[Dict[str, Any]] = None
    metadata: Dict[str, Any] = field(default_factory=dict)
    input_names: Optional[Sequence[str]] = None
    factors: Optional[Dict[str, np.ndarray]] = None
    factor_labels: Optional[Dict[str, Optional[tuple]]] = None
    events: Optional[Dict[str, np.ndarray]] = None
    trial_columns: Optional[Dict[str, np.ndarray]] = None
    counts: Optional[np.ndarray] = None
    alignment_event: str = ""

    # ------------------------------------------------------------------ checks
    def __post_init__(self) -> None:
        src = self.source or "<session>"

        def fail(name: str, msg: str):
            raise DataFormatError(src, name, msg)

        self.rates = np.ascontiguousarray(self.rates, dtype=np.float64)
        self.inputs = np.ascontiguousarray(self.inputs, dtype=np.float64)
        if self.rates.ndim != 3:
            fail("rates", f"expected 3 dimensions [trials x time x neurons], got shape {self.rates.shape}")
        K, T, N = self.rates.shape
        if self.inputs.ndim != 3 or self.inputs.shape[:2] != (K, T):
            fail("inputs", f"expected shape ({K}, {T}, C) [trials x time x channels], got {self.inputs.shape}")
        C = self.inputs.shape[2]
        if self.input_names is None:
            self.input_names = INPUT_CHANNELS if C == len(INPUT_CHANNELS) else tuple(f"input_{i}" for i in range(C))
        self.input_names = tuple(str(n) for n in self.input_names)
        if len(self.input_names) != C:
            fail("inputs", f"expected shape {(K, T, len(self.input_names))} [trials x time x "
                           f"{len(self.input_names)} channels: {', '.join(self.input_names)}], got {self.inputs.shape}")
        if len(set(self.input_names)) != C:
            fail("input_names", f"expected {C} distinct names (one per input channel), got {list(self.input_names)}")
        exc = np.asarray(self.is_excitatory)
        if exc.dtype != np.bool_:
            fail("is_excitatory", f"expected a bool array, got dtype {exc.dtype}")
        self.is_excitatory = np.ascontiguousarray(exc.reshape(-1))
        if self.is_excitatory.shape != (N,):
            fail("is_excitatory", f"expected {N} entries (one per neuron), got {exc.size}")
        self.bin_size_ms = float(self.bin_size_ms)
        if not (np.isfinite(self.bin_size_ms) and self.bin_size_ms > 0):
            fail("bin_size_ms", f"expected a positive number, got {self.bin_size_ms}")
        # condition factors: the SC attributes and ``factors`` fill each other in
        sc_given = [getattr(self, a) is not None for a in SC_FACTORS.values()]
        if self.factors is None:
            if all(sc_given):
                self.factors = {f: getattr(self, a) for f, a in SC_FACTORS.items()}
            elif any(sc_given):
                fail("trial_location", "give all four SC factors (location, identity, reward, salience) or none")
            else:
                self.factors = {}
        self.factors = {str(k): _as_int_vector(v, f"factors.{k}", src) for k, v in dict(self.factors).items()}
        for k, v in self.factors.items():
            if v.shape != (K,):
                fail(f"factors.{k}", f"expected {K} entries (one per trial), got {v.size}")
        if not any(sc_given) and all(f in self.factors for f in SC_FACTORS):
            for f, a in SC_FACTORS.items():
                setattr(self, a, self.factors[f])
        if self.trial_probability is None and self.trial_reward is not None:
            self.trial_probability = self.trial_reward
        for name in _TRIAL_INT_FIELDS:
            if getattr(self, name) is None:
                continue
            v = _as_int_vector(getattr(self, name), name, src)
            if v.shape != (K,):
                fail(name, f"expected {K} entries (one per trial), got {v.size}")
            setattr(self, name, v)
        if all(sc_given):  # SC attributes are the factors (same arrays)
            for f, a in SC_FACTORS.items():
                self.factors[f] = getattr(self, a)
        labels = dict(self.factor_labels or {})
        self.factor_labels = {k: (None if labels.get(k) is None else tuple(str(x) for x in labels[k]))
                              for k in self.factors}
        self.events = {str(k): np.ascontiguousarray(v, dtype=np.float64).reshape(-1)
                       for k, v in dict(self.events or {}).items()}
        self.trial_columns = {str(k): np.ascontiguousarray(np.asarray(v).reshape(-1))
                              for k, v in dict(self.trial_columns or {}).items()}
        for group in ("events", "trial_columns"):
            for k, v in getattr(self, group).items():
                if v.shape != (K,):
                    fail(f"{group}.{k}", f"expected {K} entries (one per trial), got {v.size}")
        if self.time_axis_ms is None:
            self.time_axis_ms = self.bin_size_ms * (np.arange(T, dtype=np.float64) + 0.5)
        self.time_axis_ms = np.ascontiguousarray(self.time_axis_ms, dtype=np.float64).reshape(-1)
        if self.time_axis_ms.shape != (T,):
            fail("time_axis_ms", f"expected {T} entries (one per bin), got {self.time_axis_ms.size}")
        if self.trial_duration_ms is None:
            self.trial_duration_ms = np.full(K, T * self.bin_size_ms)
        self.trial_duration_ms = np.ascontiguousarray(self.trial_duration_ms, dtype=np.float64).reshape(-1)
        if self.trial_duration_ms.shape != (K,):
            fail("trial_duration_ms", f"expected {K} entries, got {self.trial_duration_ms.size}")
        if self.counts is not None:
            c = np.asarray(self.counts)
            if c.shape != (K, T, N):
                fail("counts", f"expected shape {(K, T, N)} like rates, got {c.shape}")
            if c.dtype.kind == "f":
                c = np.where(np.isfinite(c), c, 0.0)
                if np.any(c != np.round(c)):
                    fail("counts", "expected integer spike counts, got non-integer values")
            elif c.dtype.kind not in "iub":
                fail("counts", f"expected integer spike counts, got dtype {c.dtype}")
            if np.any(c < 0):
                fail("counts", "negative spike counts")
            self.counts = np.ascontiguousarray(c.astype(np.int64))
        if self.neuron_ids is None:
            self.neuron_ids = np.arange(1, N + 1, dtype=np.int64)
        self.neuron_ids = _maybe_int(self.neuron_ids)
        if self.neuron_ids.shape != (N,):
            fail("neuron_ids", f"expected {N} entries, got {self.neuron_ids.size}")
        if self.brain_area is not None:
            self.brain_area = _maybe_int(self.brain_area)
            if self.brain_area.shape != (N,):
                fail("brain_area", f"expected {N} entries, got {self.brain_area.size}")
        if self.eye_raw is not None:
            if "eye_x" not in self.input_names or "eye_y" not in self.input_names:
                fail("eye_raw", "given, but the session has no input channels named eye_x and eye_y")
            eye_ch = (self.input_names.index("eye_x"), self.input_names.index("eye_y"))
            self.eye_raw = np.ascontiguousarray(self.eye_raw, dtype=np.float64)
            if self.eye_raw.shape != (K, T, 2):
                fail("eye_raw", f"expected shape {(K, T, 2)}, got {self.eye_raw.shape}")
            if self.eye_norm is None:
                self.eye_norm = np.array([eye_norm_stats(self.eye_raw[:, :, j]) for j in range(2)])
            self.eye_norm = np.ascontiguousarray(self.eye_norm, dtype=np.float64)
            if self.eye_norm.shape != (2, 2) or not np.isfinite(self.eye_norm).all():
                fail("eye_norm", f"expected finite [[mean_x, std_x], [mean_y, std_y]], got {self.eye_norm!r}")
            # invariant: eye input channels = eye_raw normalised with eye_norm
            copied = False
            for j, c in enumerate(eye_ch):
                z = apply_eye_norm(self.eye_raw[:, :, j], *self.eye_norm[j])
                if not np.array_equal(self.inputs[:, :, c], z, equal_nan=True):
                    if not copied:
                        self.inputs, copied = self.inputs.copy(), True
                    self.inputs[:, :, c] = z
        else:
            self.eye_norm = None
        self.session_name = str(self.session_name)
        self.source = str(self.source)
        self.alignment_event = str(self.alignment_event or "")

    # -------------------------------------------------------------- properties
    @property
    def n_trials(self) -> int:
        return int(self.rates.shape[0])

    @property
    def n_time(self) -> int:
        return int(self.rates.shape[1])

    @property
    def n_neurons(self) -> int:
        return int(self.rates.shape[2])

    @property
    def n_inputs(self) -> int:
        return int(self.inputs.shape[2])

    # -------------------------------------------------------------- conditions
    @property
    def factor_names(self) -> tuple:
        """Names of the condition factors, in order (SC: location, identity, reward, salience)."""
        return tuple(self.factors)

    @property
    def is_sc(self) -> bool:
        """True for a session in the SC export's layout (14 SC channels, SC factors)."""
        return self.input_names == INPUT_CHANNELS and self.trial_location is not None

    def _condition_matrix(self) -> np.ndarray:
        if not self.factors:
            return np.zeros((self.n_trials, 0), np.int64)
        return np.stack(list(self.factors.values()), axis=1)

    def condition_table(self) -> np.ndarray:
        """[C, F] int64 unique factor rows (SC: location, identity, reward, salience),
        sorted; row ``c`` is the condition with id ``c`` in :meth:`condition_ids`.
        No factors: one condition, table [1, 0]."""
        m = self._condition_matrix()
        if m.shape[1] == 0:
            return np.zeros((1 if self.n_trials else 0, 0), np.int64)
        return np.unique(m, axis=0)

    def condition_ids(self) -> np.ndarray:
        """[K] int64 dense condition id (0..C-1) of each trial."""
        m = self._condition_matrix()
        if m.shape[1] == 0:
            return np.zeros(self.n_trials, np.int64)
        _, inv = np.unique(m, axis=0, return_inverse=True)
        return np.ascontiguousarray(inv.reshape(-1).astype(np.int64))

    # ------------------------------------------------------------------- masks
    def missing_mask(self) -> np.ndarray:
        """[K, T, N] bool, True where the bin is VALID: finite rate and all
        input channels finite at that (trial, time). (Name kept for the API;
        :meth:`valid_mask` is an alias.)"""
        inputs_ok = np.isfinite(self.inputs).all(axis=2)
        return np.isfinite(self.rates) & inputs_ok[:, :, None]

    valid_mask = missing_mask

    # ----------------------------------------------------------------- summary
    def summary(self) -> Dict[str, Any]:
        """Plain-python dict of headline numbers (JSON-serialisable)."""
        valid = self.missing_mask()
        n_missing = int(valid.size - valid.sum())
        cids = self.condition_ids()
        counts = np.bincount(cids) if cids.size else np.zeros(0, int)
        finite = self.rates[np.isfinite(self.rates)]
        return {
            "session_name": self.session_name,
            "source": self.source,
            "n_trials": self.n_trials,
            "n_time": self.n_time,
            "n_neurons": self.n_neurons,
            "n_E": int(self.is_excitatory.sum()),
            "n_I": int((~self.is_excitatory).sum()),
            "n_inputs": self.n_inputs,
            "input_names": list(self.input_names),
            "factors": list(self.factors),
            "bin_size_ms": self.bin_size_ms,
            "n_conditions": int(counts.size),
            "trials_per_condition_min": int(counts.min()) if counts.size else 0,
            "trials_per_condition_max": int(counts.max()) if counts.size else 0,
            "missing_bins": n_missing,
            "missing_fraction": float(n_missing / valid.size) if valid.size else 0.0,
            "mean_rate_hz": float(finite.mean()) if finite.size else float("nan"),
            "max_rate_hz": float(finite.max()) if finite.size else float("nan"),
            "has_truth": self.truth is not None,
        }

    def describe(self) -> str:
        """Short multi-line human-readable summary."""
        s = self.summary()
        return "\n".join([
            f"Session {s['session_name']} ({s['source'] or 'in memory'})",
            f"  {s['n_trials']} trials x {s['n_time']} bins of {s['bin_size_ms']:g} ms x "
            f"{s['n_neurons']} neurons ({s['n_E']} E / {s['n_I']} I), {s['n_inputs']} inputs",
            f"  {s['n_conditions']} conditions ({s['trials_per_condition_min']}-"
            f"{s['trials_per_condition_max']} trials each)",
            f"  missing bins: {s['missing_bins']} ({100 * s['missing_fraction']:.1f}%)",
            f"  mean rate {s['mean_rate_hz']:.2f} sp/s, max {s['max_rate_hz']:.0f} sp/s"
            + ("  [synthetic truth available]" if s["has_truth"] else ""),
        ])

    # ------------------------------------------------------------------ subset
    def subset(self, trial_indices: Sequence[int] | np.ndarray) -> "Session":
        """New Session with the given trials (int indices or a [K] bool mask), in
        the given order. Per-trial truth entries (``truth["trial_keys"]``, default
        ``TRUTH_TRIAL_KEYS``) are sliced; other truth entries are shared."""
        idx = np.asarray(trial_indices)
        if idx.dtype == np.bool_:
            if idx.shape != (self.n_trials,):
                raise IndexError(f"bool mask must have shape ({self.n_trials},), got {idx.shape}")
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64).reshape(-1)
        if idx.size and (idx.min() < -self.n_trials or idx.max() >= self.n_trials):
            raise IndexError(f"trial index out of range for {self.n_trials} trials")
        truth = None
        if self.truth is not None:
            truth = dict(self.truth)
            for k in truth.get("trial_keys", TRUTH_TRIAL_KEYS):
                if k in truth and truth[k] is not None:
                    truth[k] = np.ascontiguousarray(np.asarray(truth[k])[idx])
        pick = lambda v: None if v is None else v[idx]  # noqa: E731
        return dataclasses.replace(
            self,
            rates=self.rates[idx], inputs=self.inputs[idx],
            trial_location=pick(self.trial_location), trial_identity=pick(self.trial_identity),
            trial_reward=pick(self.trial_reward), trial_salience=pick(self.trial_salience),
            trial_probability=pick(self.trial_probability),
            trial_duration_ms=self.trial_duration_ms[idx],
            factors={k: v[idx] for k, v in self.factors.items()},
            factor_labels=dict(self.factor_labels),
            events={k: v[idx] for k, v in self.events.items()},
            trial_columns={k: v[idx] for k, v in self.trial_columns.items()},
            counts=pick(self.counts),
            eye_raw=None if self.eye_raw is None else self.eye_raw[idx],
            truth=truth, metadata=dict(self.metadata),
        )

    # ----------------------------------------------------------------- tensors
    def to_tensors(self, dtype=None) -> Dict[str, Any]:
        """See :func:`session_to_tensors`."""
        return session_to_tensors(self, dtype=dtype)


def session_to_tensors(session: Session, dtype=None) -> Dict[str, Any]:
    """All trials of ``session`` as a dict of torch tensors (built once, index later):

    - ``inputs`` [K, T, C] float32, NaN -> 0.0
    - ``rates`` [K, T, N] float32, NaN -> 0.0
    - ``mask`` [K, T, N] bool, True = valid (:meth:`Session.missing_mask`)
    - ``condition`` [K] int64 (:meth:`Session.condition_ids`)
    - ``trial`` [K] int64 (index of the trial in ``session``)
    - ``true_rates`` [K, T, N] float32, NaN -> 0.0 (only when ``session.truth`` has "rates")
    """
    import torch

    dtype = dtype or torch.float32

    def clean(a: np.ndarray):
        return torch.from_numpy(np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)).to(dtype)

    out = {
        "inputs": clean(session.inputs),
        "rates": clean(session.rates),
        "mask": torch.from_numpy(session.missing_mask()),
        "condition": torch.from_numpy(session.condition_ids()),
        "trial": torch.arange(session.n_trials, dtype=torch.int64),
    }
    if session.truth is not None and session.truth.get("rates") is not None:
        out["true_rates"] = clean(np.asarray(session.truth["rates"], dtype=np.float64))
    return out


def counts_from_rates(rates: np.ndarray, bin_size_ms: float) -> "np.ndarray | None":
    """[K, T, N] int64 ``rates * bin / 1000`` when that is an integer in every finite bin
    and maps back to the very same rates (``counts * (1000 / bin) == rates``), else None.
    Missing (NaN) bins get count 0."""
    scale = 1000.0 / float(bin_size_ms)
    ok = np.isfinite(rates)
    c = np.where(ok, np.round(np.where(ok, rates, 0.0) / scale), 0.0)
    if not np.array_equal(np.where(ok, c * scale, 0.0), np.where(ok, rates, 0.0)):
        return None
    return c.astype(np.int64)


def plain_options(x: Any) -> Any:
    """OmegaConf containers -> plain python (lists / dicts)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
        if isinstance(x, (DictConfig, ListConfig)):
            return OmegaConf.to_container(x, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return x
