"""Task factors and event times of the SC sessions (issue 15).

``condition_factors(session)`` -> ``{factor: [K] int}`` and ``event_times_ms(session)`` ->
``{event: [K] float ms}`` are the shared interface (COORD.md). Event times are derived
from the task *input channels*, so they exist for every export of this schema (no extra
MAT field is needed) and for any trial subset.

Factors (SC schema; the codes of the MAT export):

===========  =======================================  =========================
factor       levels                                   field
===========  =======================================  =========================
location     1..4                                     ``trial_location``
identity     1 face, 2 non-face, 3 bullseye           ``trial_identity``
salience     1 high, 2 low (0 = n/a: not a bullseye)  ``trial_salience``
reward       1 high, 0 low (blocked)                  ``trial_reward``
===========  =======================================  =========================

Events and their channels (onset = the first bin ``t >= 1`` at which any of the
channels switches on, ``x[t] > 0.5`` and ``x[t-1] <= 0.5``; a channel already on in bin 0
has no observed onset, so the event is NaN for that trial — e.g. ``go`` in trials
without a fixation input, where the go channel is on from the first bin)::

    fixation  fixation_on
    target    target_loc_1..4      (target onset)
    go        go_signal            (fixation offset = go cue)
    reward    reward_on

Time of an onset in bin ``t``: the left edge of the bin, ``time_axis_ms[t] - bin/2``
(ms from fixation onset, the export's time axis).
"""
from __future__ import annotations

from typing import Dict, Mapping, Sequence

import numpy as np

from .session import INPUT_CHANNELS

__all__ = ["FACTORS", "EVENTS", "EVENT_CHANNELS", "EXCLUDED_LEVELS", "POSITIVE_LEVEL",
           "condition_factors", "event_times_ms", "event_onset_bins", "factors_from_codes"]

#: Task factors, in table order.
FACTORS = ("location", "identity", "salience", "reward")
#: Task events, in trial order.
EVENTS = ("fixation", "target", "go", "reward")
#: Input channels whose first onset marks each event.
EVENT_CHANNELS: Dict[str, tuple] = {
    "fixation": ("fixation_on",),
    "target": ("target_loc_1", "target_loc_2", "target_loc_3", "target_loc_4"),
    "go": ("go_signal",),
    "reward": ("reward_on",),
}
#: Levels that are not a level of the factor (left out of its marginals and selectivity).
EXCLUDED_LEVELS: Dict[str, tuple] = {"salience": (0,)}
#: Two-level factors: the level whose response counts as positive in a signed
#: selectivity (``d' = (mean_pos - mean_other) / pooled sd``).
POSITIVE_LEVEL: Dict[str, int] = {"reward": 1, "salience": 1}

_FIELDS = {"location": "trial_location", "identity": "trial_identity",
           "salience": "trial_salience", "reward": "trial_reward"}


def condition_factors(session) -> Dict[str, np.ndarray]:
    """``{location, identity, salience, reward: [K] int64}`` of a Session (codes above)."""
    factors = getattr(session, "factors", None)
    if isinstance(factors, Mapping) and factors:  # a Session that carries named factors
        return {k: np.asarray(v).astype(np.int64).reshape(-1) for k, v in factors.items()}
    return {f: np.asarray(getattr(session, fld)).astype(np.int64).reshape(-1) for f, fld in _FIELDS.items()}


def factors_from_codes(codes) -> Dict[str, np.ndarray]:
    """Invert :func:`eirnn.baselines.condition_codes`
    (``1000 location + 100 identity + 10 reward + salience``) -> the factor dict."""
    c = np.asarray(codes).astype(np.int64).reshape(-1)
    return {"location": c // 1000, "identity": (c // 100) % 10, "salience": c % 10, "reward": (c // 10) % 10}


def event_onset_bins(inputs, channels: Sequence[str] = INPUT_CHANNELS) -> Dict[str, np.ndarray]:
    """``{event: [K] float}`` onset bin of each event in ``inputs`` ``[K, T, C]`` (NaN: none).

    ``channels`` names the input channels (default the 14 SC channels; extra channels
    after them are ignored). See the module docstring for the onset rule.
    """
    x = np.nan_to_num(np.asarray(inputs, dtype=np.float64)) > 0.5
    names = list(channels)
    out = {}
    for ev, chans in EVENT_CHANNELS.items():
        idx = [names.index(c) for c in chans if c in names]
        if not idx:
            out[ev] = np.full(x.shape[0], np.nan)
            continue
        on = x[:, :, idx].any(axis=2)                       # [K, T]
        rise = on[:, 1:] & ~on[:, :-1]                      # onset at t = 1..T-1
        first = np.argmax(rise, axis=1).astype(np.float64) + 1.0
        first[~rise.any(axis=1)] = np.nan
        out[ev] = first
    return out


def event_times_ms(session) -> Dict[str, np.ndarray]:
    """``{fixation, target, go, reward: [K] float}`` event times in ms on the session's
    time axis (left edge of the onset bin; NaN when a trial lacks the event)."""
    events = getattr(session, "events", None)
    if isinstance(events, Mapping) and events:  # a Session that carries its events
        return {k: np.asarray(v, dtype=np.float64).reshape(-1) for k, v in events.items()}
    bins = event_onset_bins(session.inputs, getattr(session, "input_names", None) or INPUT_CHANNELS)
    t = np.asarray(session.time_axis_ms, dtype=np.float64)
    edge = t - float(session.bin_size_ms) / 2.0
    out = {}
    for ev, b in bins.items():
        ms = np.full(b.shape, np.nan)
        ok = np.isfinite(b)
        ms[ok] = edge[b[ok].astype(np.int64)]
        out[ev] = ms
    return out
