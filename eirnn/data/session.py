"""The in-memory :class:`Session`: one recording session in model-ready layout.

Layout (all numpy, C-contiguous; real-valued arrays are **float64** so that a
MATLAB double export round-trips bit-exactly; tensors built from them by
:meth:`Session.to_tensors` are float32):

========================  =======================  ==========================================
attribute                 shape / dtype            meaning
========================  =======================  ==========================================
rates                     [K, T, N] float64        binned rate in sp/s, NaN = missing
inputs                    [K, T, 14] float64       task inputs in ``INPUT_CHANNELS`` order,
                                                   NaN = missing; eye channels z-scored
is_excitatory             [N] bool                 neuron_type 1 (E) -> True, 2 (I) -> False
trial_location            [K] int64                1..4
trial_identity            [K] int64                1 face, 2 nonface, 3 bullseye
trial_reward              [K] int64                1 high, 0 low
trial_salience            [K] int64                0 n/a, 1 high, 2 low
trial_probability         [K] int64                1 high, 0 low (defaults to trial_reward)
bin_size_ms               float
time_axis_ms              [T] float64              bin centres, ms from fixation onset
trial_duration_ms         [K] float64
neuron_ids                [N] int64 (or float64)   defaults to 1..N
brain_area                [N] int64 or None
eye_raw                   [K, T, 2] float64|None   eye x/y as stored in the file (degrees,
                                                   zeros when absent); see "Eye channels"
eye_norm                  [2, 2] float64|None      (mean, std) of eye x / y used in inputs
truth                     dict or None             synthetic ground truth (see synthetic.py)
========================  =======================  ==========================================

K = trials, T = time bins, N = recorded neurons.

Eye channels: when ``eye_raw`` is given, the eye_x / eye_y channels of ``inputs`` are
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

__all__ = ["INPUT_CHANNELS", "EYE_CHANNELS", "TRUTH_TRIAL_KEYS", "Session", "zscore_eye",
           "eye_norm_stats", "apply_eye_norm", "session_to_tensors"]

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
    """One session of binned SC recordings plus task inputs (see module docstring)."""

    rates: np.ndarray
    inputs: np.ndarray
    is_excitatory: np.ndarray
    trial_location: np.ndarray
    trial_identity: np.ndarray
    trial_reward: np.ndarray
    trial_salience: np.ndarray
    bin_size_ms: float
    time_axis_ms: np.ndarray
    trial_duration_ms: np.ndarray
    trial_probability: Optional[np.ndarray] = None
    neuron_ids: Optional[np.ndarray] = None
    brain_area: Optional[np.ndarray] = None
    session_name: str = "session"
    source: str = ""
    eye_raw: Optional[np.ndarray] = None
    eye_norm: Optional[np.ndarray] = None
    truth: Optional[Dict[str, Any]] = None
    metadata: Dict[str, Any] = field(default_factory=dict)

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
        if self.inputs.shape != (K, T, len(INPUT_CHANNELS)):
            fail("inputs", f"expected shape {(K, T, len(INPUT_CHANNELS))} [trials x time x "
                           f"{len(INPUT_CHANNELS)} channels], got {self.inputs.shape}")
        exc = np.asarray(self.is_excitatory)
        if exc.dtype != np.bool_:
            fail("is_excitatory", f"expected a bool array, got dtype {exc.dtype}")
        self.is_excitatory = np.ascontiguousarray(exc.reshape(-1))
        if self.is_excitatory.shape != (N,):
            fail("is_excitatory", f"expected {N} entries (one per neuron), got {exc.size}")
        if self.trial_probability is None:
            self.trial_probability = self.trial_reward
        for name in _TRIAL_INT_FIELDS:
            v = _as_int_vector(getattr(self, name), name, src)
            if v.shape != (K,):
                fail(name, f"expected {K} entries (one per trial), got {v.size}")
            setattr(self, name, v)
        self.bin_size_ms = float(self.bin_size_ms)
        if not (np.isfinite(self.bin_size_ms) and self.bin_size_ms > 0):
            fail("bin_size_ms", f"expected a positive number, got {self.bin_size_ms}")
        self.time_axis_ms = np.ascontiguousarray(self.time_axis_ms, dtype=np.float64).reshape(-1)
        if self.time_axis_ms.shape != (T,):
            fail("time_axis_ms", f"expected {T} entries (one per bin), got {self.time_axis_ms.size}")
        self.trial_duration_ms = np.ascontiguousarray(self.trial_duration_ms, dtype=np.float64).reshape(-1)
        if self.trial_duration_ms.shape != (K,):
            fail("trial_duration_ms", f"expected {K} entries, got {self.trial_duration_ms.size}")
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
            for j, c in enumerate(EYE_CHANNELS):
                z = apply_eye_norm(self.eye_raw[:, :, j], *self.eye_norm[j])
                if not np.array_equal(self.inputs[:, :, c], z, equal_nan=True):
                    if not copied:
                        self.inputs, copied = self.inputs.copy(), True
                    self.inputs[:, :, c] = z
        else:
            self.eye_norm = None
        self.session_name = str(self.session_name)
        self.source = str(self.source)

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
    def _condition_matrix(self) -> np.ndarray:
        return np.stack([getattr(self, f) for f in _CONDITION_FIELDS], axis=1)

    def condition_table(self) -> np.ndarray:
        """[C, 4] int64 unique (location, identity, reward, salience) rows, sorted;
        row ``c`` is the condition with id ``c`` in :meth:`condition_ids`."""
        return np.unique(self._condition_matrix(), axis=0)

    def condition_ids(self) -> np.ndarray:
        """[K] int64 dense condition id (0..C-1) of each trial."""
        _, inv = np.unique(self._condition_matrix(), axis=0, return_inverse=True)
        return np.ascontiguousarray(inv.reshape(-1).astype(np.int64))

    # ------------------------------------------------------------------- masks
    def missing_mask(self) -> np.ndarray:
        """[K, T, N] bool, True where the bin is VALID: finite rate and all 14
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
        return dataclasses.replace(
            self,
            rates=self.rates[idx], inputs=self.inputs[idx],
            trial_location=self.trial_location[idx], trial_identity=self.trial_identity[idx],
            trial_reward=self.trial_reward[idx], trial_salience=self.trial_salience[idx],
            trial_probability=self.trial_probability[idx],
            trial_duration_ms=self.trial_duration_ms[idx],
            eye_raw=None if self.eye_raw is None else self.eye_raw[idx],
            truth=truth, metadata=dict(self.metadata),
        )

    # ----------------------------------------------------------------- tensors
    def to_tensors(self, dtype=None) -> Dict[str, Any]:
        """See :func:`session_to_tensors`."""
        return session_to_tensors(self, dtype=dtype)


def session_to_tensors(session: Session, dtype=None) -> Dict[str, Any]:
    """All trials of ``session`` as a dict of torch tensors (built once, index later):

    - ``inputs`` [K, T, 14] float32, NaN -> 0.0
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
