"""Checks of every field of a session beyond its shape: what is refused, what is accepted
with a caveat (counted), for any reader (MAT export, and the other readers of ``eirnn.data``).

Refused (:class:`~eirnn.data.errors.DataFormatError`, one line naming the file and field):

* ``time_axis_ms``: not strictly increasing, or steps that are not all ``bin_size_ms``
  (within 1e-6 of a bin);
* ``firing_rates``: two trials that are exact copies (same rates and inputs in every bin;
  trials without any finite rate are left out), or two neurons with the same rates in
  every trial and bin (neurons that are all zero / NaN are left out);
* ``neuron_ids``: non-finite or repeated ids;
* ``trial_duration_ms``: negative values;
* integer arrays whose values reach their type's limit (:func:`check_integer_overflow`, e.g.
  an ``int8`` rate array saturated at 127): the export overflowed.

Accepted with a caveat (:func:`validate_session` returns the counts; they are kept in
``session.metadata["caveats"]``, logged by the data module and shown by ``eirnn.data.quality``):

* ``trial_duration_nan``: trials whose ``trial_duration_ms`` is NaN (the ``min_duration_ms``
  filter drops them and counts them apart);
* ``input_nan_bins``: (trial, bin) pairs where a task input is NaN (masked for every neuron:
  counted in the missing bins);
* ``rate_nan_bins``: (trial, bin, neuron) rates that are NaN (missing data, masked).
"""
from __future__ import annotations

import hashlib
from typing import Any, Dict

import numpy as np

from .errors import DataFormatError

__all__ = ["validate_session", "check_integer_overflow", "caveat_line"]


def check_integer_overflow(path, field: str, raw: Any) -> None:
    """Refuse an integer array (as stored in the file) whose values reach the limits of its
    type: signs of an overflowed or saturated export (e.g. ``int8`` rates stuck at 127)."""
    a = np.asarray(raw)
    if a.dtype.kind not in "iu" or a.size == 0:
        return
    info = np.iinfo(a.dtype)
    hi, lo = int((a == info.max).sum()), int((a == info.min).sum()) if a.dtype.kind == "i" else 0
    if hi or lo:
        at = f"{hi} values at its maximum {info.max}" if hi else f"{lo} values at its minimum {info.min}"
        raise DataFormatError(path, field, f"stored as {a.dtype} with {at}: the export overflowed "
                                           f"(save it as double)")


def _digests(blocks) -> list:
    return [hashlib.blake2b(np.ascontiguousarray(b).tobytes(), digest_size=16).digest() for b in blocks]


def _first_pairs(keys: list, usable: np.ndarray) -> list[tuple[int, int]]:
    seen: Dict[bytes, int] = {}
    pairs = []
    for i, (k, ok) in enumerate(zip(keys, usable)):
        if not ok:
            continue
        if k in seen:
            pairs.append((seen[k], i))
        else:
            seen[k] = i
    return pairs


def validate_session(session) -> Dict[str, int]:
    """Check ``session`` (a :class:`~eirnn.data.session.Session`) field by field (see the
    module docstring); raise :class:`DataFormatError` for a refusal, else return the caveat
    counts (also stored in ``session.metadata["caveats"]``)."""
    src = session.source or session.session_name or "<session>"
    K, T, N = session.rates.shape
    bin_ms = float(session.bin_size_ms)

    t = np.asarray(session.time_axis_ms, dtype=np.float64)
    if T > 1:
        step = np.diff(t)
        if not np.all(step > 0):
            i = int(np.flatnonzero(~(step > 0))[0])
            raise DataFormatError(src, "time_axis", f"not increasing: bin {i} at {t[i]:g} ms, bin {i + 1} at "
                                                    f"{t[i + 1]:g} ms")
        bad = np.abs(step - bin_ms) > 1e-6 * max(bin_ms, 1.0)
        if bad.any():
            raise DataFormatError(src, "time_axis", f"irregular: {int(bad.sum())} of {T - 1} steps differ from "
                                                    f"bin_size_ms={bin_ms:g} (steps {step.min():g}..{step.max():g} ms)")

    ids = np.asarray(session.neuron_ids)
    if ids.dtype.kind == "f" and not np.isfinite(ids).all():
        raise DataFormatError(src, "neuron_ids", f"{int((~np.isfinite(ids)).sum())} non-finite id(s)")
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        rep = [v.item() for v in uniq[counts > 1][:5]]
        raise DataFormatError(src, "neuron_ids", f"repeated id(s) {rep}: each neuron must appear once")

    dur = np.asarray(session.trial_duration_ms, dtype=np.float64)
    if (dur < 0).any():
        i = int(np.flatnonzero(dur < 0)[0])
        raise DataFormatError(src, "trial_duration_ms", f"negative durations in {int((dur < 0).sum())} trials "
                                                        f"(trial {i}: {dur[i]:g} ms)")

    rates = session.rates
    finite = np.isfinite(rates)
    if K > 1:
        has_data = finite.any(axis=(1, 2))
        keys = [a + b for a, b in zip(_digests(rates), _digests(session.inputs))]
        pairs = _first_pairs(keys, has_data)
        # a digest match is confirmed on the arrays themselves
        pairs = [(i, j) for i, j in pairs if np.array_equal(rates[i], rates[j], equal_nan=True)
                 and np.array_equal(session.inputs[i], session.inputs[j], equal_nan=True)]
        if pairs:
            i, j = pairs[0]
            more = f" ({len(pairs)} duplicated trials in all)" if len(pairs) > 1 else ""
            raise DataFormatError(src, "firing_rates", f"trials {i} and {j} are exact copies (same rates and "
                                                       f"inputs in every bin){more}: a duplicated export would "
                                                       f"put the same trial in training and validation")
    if N > 1:
        by_neuron = np.ascontiguousarray(np.moveaxis(rates, 2, 0))
        informative = (np.where(np.isfinite(by_neuron), by_neuron, 0.0) != 0).any(axis=(1, 2))
        pairs = _first_pairs(_digests(by_neuron), informative)
        pairs = [(i, j) for i, j in pairs if np.array_equal(by_neuron[i], by_neuron[j], equal_nan=True)]
        if pairs:
            i, j = pairs[0]
            more = f" ({len(pairs)} duplicated neurons in all)" if len(pairs) > 1 else ""
            raise DataFormatError(src, "firing_rates", f"neurons {i} and {j} (ids {ids[i].item()}, {ids[j].item()}) "
                                                       f"have the same rate in every trial and bin{more}: "
                                                       "a neuron exported twice")

    caveats = {
        "trial_duration_nan": int(np.isnan(dur).sum()),
        "input_nan_bins": int((~np.isfinite(session.inputs).all(axis=2)).sum()),
        "rate_nan_bins": int((~finite).sum()),
    }
    session.metadata["caveats"] = caveats
    return caveats


def caveat_line(caveats: Dict[str, int]) -> str:
    """``""`` when every count is 0, else e.g. ``"3 trials with NaN trial_duration_ms; ..."``."""
    words = {"trial_duration_nan": "trials with NaN trial_duration_ms (dropped by the min_duration_ms filter)",
             "input_nan_bins": "trial-bins with a NaN task input (masked for every neuron)",
             "rate_nan_bins": "neuron-bins with NaN rates (masked)"}
    return "; ".join(f"{v} {words.get(k, k)}" for k, v in caveats.items() if v)
