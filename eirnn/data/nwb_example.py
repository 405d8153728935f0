"""A small NWB file of another task, written with pynwb: ``python -m eirnn.data.nwb_example OUT.nwb``.

The README's worked example (``data=nwb_example``) and the tests use it. The task: variable-
length trials (1.0, 1.5, 2.0 s) aligned on ``cue_time``; a 1 kHz ``stim`` TimeSeries
(contrast x side for 500 ms after the cue); ``go_time`` (cue + 600 ms) and ``reward_time``
(cue + 700 ms, absent on every 4th trial) event columns; a text factor ``side`` (left /
right) and an int factor ``contrast`` (0-2); E/I in the units column ``cell_type`` (pyr /
pv); an exclusion column ``bad``; Poisson-like spikes over the whole session, between
trials too. :data:`DEMO_OPTIONS` are the reader options for it (= conf/data/nwb_example.yaml).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

__all__ = ["DEMO_OPTIONS", "make_demo_nwb", "main"]

#: Reader options for :func:`make_demo_nwb`'s file (the same as conf/data/nwb_example.yaml).
DEMO_OPTIONS = {
    "bin_size_ms": 20.0, "align_event": "cue_time", "factors": ["side", "contrast"], "exclude_column": "bad",
    "events": ["go_time", "reward_time"],
    "inputs": [{"name": "stim", "timeseries": "stim"}, {"name": "go", "event": "go_time", "kind": "step"},
               {"name": "reward", "event": "reward_time", "kind": "pulse", "duration_ms": 100}],
    "ei": {"column": "cell_type", "excitatory": ["pyr"], "inhibitory": ["pv"]},
}


def make_demo_nwb(path: Path, n_trials: int = 40, n_units: int = 6, seed: int = 0, units: bool = True,
                  spike_shift_s: float = 0.0) -> dict:
    """An NWB file of another lab's task, written with pynwb: variable-length
    trials aligned on ``cue_time``, a 1 kHz stimulus TimeSeries, go / reward event columns,
    a text factor ``side`` and an int factor ``contrast``, E/I in a units column ``cell_type``
    (pyr / pv), an exclusion column ``bad`` and spikes between trials too (module docstring).
    ``units=False`` leaves the units table out; ``spike_shift_s`` moves every spike (a file
    whose spikes are on another clock). Returns the values used, for checks."""
    import datetime

    from pynwb import NWBHDF5IO, NWBFile, TimeSeries

    rng = np.random.default_rng(seed)
    nwb = NWBFile(session_description="eirnn demo task (eirnn.data.nwb_example)", identifier=f"eirnn-demo-{seed}",
                  session_start_time=datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc),
                  session_id="demo")
    for col, desc in (("cue_time", "cue onset, s"), ("go_time", "go cue, s"), ("reward_time", "reward, s"),
                      ("side", "left/right"), ("contrast", "0-2"), ("bad", "exclude")):
        nwb.add_trial_column(col, desc)
    starts = 2.0 + 3.0 * np.arange(n_trials)
    durs = 1.0 + 0.5 * (np.arange(n_trials) % 3)
    cue = starts + 0.2
    side = np.where(rng.random(n_trials) < 0.5, "left", "right")
    contrast = rng.integers(0, 3, n_trials)
    reward = np.where(np.arange(n_trials) % 4 == 3, np.nan, cue + 0.7)
    bad = np.zeros(n_trials, bool)
    bad[[i for i in (5, 17) if i < n_trials]] = True
    for k in range(n_trials):
        nwb.add_trial(start_time=starts[k], stop_time=starts[k] + durs[k], cue_time=cue[k], go_time=cue[k] + 0.6,
                      reward_time=reward[k], side=str(side[k]), contrast=int(contrast[k]), bad=bool(bad[k]))
    t_end = starts[-1] + 4.0
    rate = 1000.0
    tt = np.arange(int(t_end * rate)) / rate
    stim = np.zeros_like(tt)
    for k in range(n_trials):
        on = (tt >= cue[k]) & (tt < cue[k] + 0.5)
        stim[on] = contrast[k] * (1.0 if side[k] == "right" else -1.0)
    nwb.add_stimulus(TimeSeries(name="stim", data=stim, rate=rate, starting_time=0.0, unit="a.u."))
    spikes = []
    if units:
        nwb.add_unit_column("cell_type", "pyr or pv")
        for n in range(n_units):
            st = np.sort(rng.uniform(0, t_end, rng.integers(200, 400))) + spike_shift_s
            spikes.append(st)
            nwb.add_unit(spike_times=st, cell_type="pyr" if n < 4 else "pv")
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    return {"cue": cue, "starts": starts, "durs": durs, "spikes": spikes, "bad": bad, "contrast": contrast,
            "side": side, "reward": reward}


def main(argv=None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m eirnn.data.nwb_example OUT.nwb", file=sys.stderr)
        return 2
    make_demo_nwb(Path(args[0]))
    print(f"wrote {args[0]}: 40 trials (2 marked bad), 6 units (4 pyr, 2 pv), inputs stim / go / reward; "
          f"train with: python -m eirnn.train data=nwb_example data.path={args[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
