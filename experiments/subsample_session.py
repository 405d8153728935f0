"""Sub-sample a session for the generalisation study of experiments/evaluation.md (issue 15).

    python experiments/subsample_session.py SEED N_NEURONS N_TRIALS IN.mat OUT.mat

Draws ``N_NEURONS`` neurons and ``N_TRIALS`` trials without replacement
(``numpy.random.default_rng(SEED)``), keeps every per-neuron and per-trial field in step
(``Session.subset`` for trials; arrays with a neuron axis sliced) and writes a v7.3 export.
"""
from __future__ import annotations

import dataclasses
import sys

import numpy as np

from eirnn.data.mat_io import load_mat, save_mat


def subsample(session, seed: int, n_neurons: int, n_trials: int):
    """The sub-sampled session and the 0-based neuron indices drawn."""
    rng = np.random.default_rng(int(seed))
    N, K = session.rates.shape[2], session.rates.shape[0]
    neu = np.sort(rng.choice(N, int(n_neurons), replace=False))
    s = session.subset(np.sort(rng.choice(K, int(n_trials), replace=False)))
    rep = {}
    for f in dataclasses.fields(s):
        v = getattr(s, f.name)
        if isinstance(v, np.ndarray) and f.name not in ("inputs", "time_axis_ms"):
            if v.ndim == 3 and v.shape[2] == N:
                rep[f.name] = v[..., neu]
            elif v.ndim == 1 and v.shape[0] == N:
                rep[f.name] = v[neu]
        elif isinstance(v, (list, tuple)) and len(v) == N and f.name != "input_names":
            rep[f.name] = type(v)(v[i] for i in neu)
    return dataclasses.replace(s, **rep), neu


if __name__ == "__main__":
    seed, nn, nk, src, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
    sub, neu = subsample(load_mat(src), seed, nn, nk)
    save_mat(sub, out)
    print(f"{out}: neurons {neu.tolist()} ({int(sub.is_excitatory.sum())} E), {sub.rates.shape[0]} trials")
