"""One labelled results file: ``results.nc`` (NetCDF4 via xarray + h5netcdf).

Opens with ``xarray.open_dataset("results.nc")``. Dimensions (coordinates in brackets):

- ``trial`` K validation trials [``trial`` = index in the session, ``condition`` id, one
  coordinate per condition factor, e.g. ``location``; text labels when the factor has them]
- ``time`` T bins [``time`` = bin centre, ms from ``alignment_event``]
- ``neuron`` N recorded neurons [``neuron_id``, ``ei`` = "E" / "I"]
- ``unit`` n model units (recorded first) and ``unit_from`` (presynaptic, for ``W_rec``)
  [``unit_ei``, ``unit_recorded``]
- ``input`` C task input channels [their names]
- ``condition`` [one coordinate per factor], ``pc`` k principal components

Variables (``units`` / ``description`` attributes on each): ``model_rates`` /
``target_rates`` / ``mask`` (trial, time, neuron), ``latent_rates`` (trial, time, unit: every
model unit, hidden ones too), ``inputs`` (trial, time, input), ``psth_model`` /
``psth_target`` (time, neuron), ``pca_model`` / ``pca_real`` (time, pc), the per-neuron
metrics (neuron), ``W_rec`` (unit, unit_from: weight from ``unit_from`` onto ``unit``),
``W_in`` (unit, input), ``bias`` / ``h0`` / ``tau_ms`` (unit). Headline numbers, the session
and the checkpoint are global attributes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import numpy as np

__all__ = ["results_dataset", "write_labelled"]

_METRIC_UNITS = {
    "per_neuron_correlation": ("1", "Pearson correlation over time of model and data PSTH"),
    "per_neuron_mean_rate_model": ("spikes/s", "mean model rate over valid bins"),
    "per_neuron_mean_rate_target": ("spikes/s", "mean recorded rate over valid bins"),
    "per_neuron_variance_model": ("(spikes/s)^2", "variance over time of the model PSTH"),
    "per_neuron_variance_target": ("(spikes/s)^2", "variance over time of the data PSTH"),
    "per_neuron_fano_model": ("1", "Fano factor of Poisson spikes from the model rates"),
    "per_neuron_fano_target": ("1", "Fano factor of the recorded counts"),
}


def results_dataset(session, outputs: Mapping[str, np.ndarray], metrics: Mapping[str, np.ndarray],
                    weights: Mapping[str, np.ndarray], population: Mapping[str, np.ndarray],
                    attrs: Optional[Mapping[str, Any]] = None):
    """The ``xarray.Dataset`` described in the module docstring (``outputs`` etc. are the
    dicts of :mod:`eirnn.report.artifacts`; ``session`` is the data module's session)."""
    import xarray as xr

    def var(dims, data, units, description):
        return xr.Variable(dims, np.asarray(data), attrs={"units": units, "description": description})

    trial = np.asarray(outputs["val_trial_index"], np.int64)
    factors = np.asarray(outputs["val_trial_factors"])
    names = list(session.factors)
    exc_all = np.asarray(weights["E_mask"], bool)
    rec = np.asarray(weights["recorded_mask"], bool)
    n_rec = int(rec.sum())
    C = outputs["val_inputs"].shape[-1]
    coords: Dict[str, Any] = {
        "trial": var(("trial",), trial, "1", "trial index in the (filtered) session"),
        "condition_id": var(("trial",), outputs["val_trial_conditions"], "1", "condition id (row of condition)"),
        "time": var(("time",), outputs["time_ms"], "ms", f"bin centre, from {session.alignment_event or 'alignment'}"),
        "neuron_id": var(("neuron",), np.asarray(session.neuron_ids), "1", "recorded neuron id"),
        "ei": var(("neuron",), np.where(exc_all[:n_rec], "E", "I").astype(str), "1", "E or I"),
        "unit_ei": var(("unit",), np.where(exc_all, "E", "I").astype(str), "1", "E or I"),
        "unit_recorded": var(("unit",), rec.astype(np.int8), "1", "1 = a recorded neuron"),
        "input": var(("input",), np.asarray(session.input_names if len(session.input_names) == C
                                            else [f"input_{i}" for i in range(C)], dtype=str), "1", "task input"),
    }
    table = np.asarray(outputs["condition_table"])
    for j, f in enumerate(names):
        labels = session.factor_labels.get(f)
        coords[f] = var(("trial",), factors[:, j], "1", f"condition factor {f}")
        coords[f"condition_{f}"] = var(("condition",), table[:, j], "1", f"condition factor {f}")
        if labels:
            coords[f"{f}_label"] = var(("trial",), np.asarray(labels, dtype=str)[factors[:, j]], "1", f"text of {f}")
    data = {
        "model_rates": var(("trial", "time", "neuron"), outputs["val_model_rates"], "spikes/s", "model rate"),
        "target_rates": var(("trial", "time", "neuron"), outputs["val_target_rates"], "spikes/s",
                            "recorded rate (NaN = missing)"),
        "mask": var(("trial", "time", "neuron"), np.asarray(outputs["val_mask"]).astype(np.int8), "1",
                    "1 = valid bin"),
        "latent_rates": var(("trial", "time", "unit"), outputs["val_model_rates_all_units"], "spikes/s",
                            "rate of every model unit (recorded first, then hidden)"),
        "inputs": var(("trial", "time", "input"), outputs["val_inputs"], "a.u.", "task inputs"),
        "psth_model": var(("time", "neuron"), outputs["val_model_psth"], "spikes/s", "trial-mean model rate"),
        "psth_target": var(("time", "neuron"), outputs["val_target_psth"], "spikes/s", "trial-mean recorded rate"),
    }
    for k in ("pca_model", "pca_real"):
        if k in population:
            data[k] = var(("time", "pc"), population[k], "spikes/s", f"{k.split('_')[1]} PSTH on the data's PCs")
    for k, (u, d) in _METRIC_UNITS.items():
        if k in metrics:
            data[k.replace("per_neuron_", "")] = var(("neuron",), metrics[k], u, d)
    W_in = np.asarray(weights["W_in"])
    data["W_rec"] = var(("unit", "unit_from"), weights["W_rec"], "1", "recurrent weight from unit_from onto unit")
    data["W_in"] = var(("unit", "input" if W_in.shape[1] == C else "embedding"), W_in, "1", "input weights")
    for k, u in (("bias", "1"), ("h0", "1"), ("tau_ms", "ms"), ("alpha", "1")):
        if k in weights and np.ndim(weights[k]) == 1 and np.shape(weights[k])[0] == exc_all.size:
            data[k] = var(("unit",), weights[k], u, k)
    glob = {"session_name": session.session_name, "source": session.source, "bin_size_ms": session.bin_size_ms,
            "alignment_event": session.alignment_event, "factors": ", ".join(names),
            "conventions": "dimension names and units as in eirnn/report/labelled.py"}
    for k, v in (attrs or {}).items():
        if isinstance(v, (bool, np.bool_)):
            glob[k] = int(v)
        elif isinstance(v, (int, float, str, np.integer, np.floating)):
            glob[k] = v
    ds = xr.Dataset(data, coords=coords, attrs=glob)
    return ds


def write_labelled(path, session, outputs, metrics, weights, population, attrs=None) -> Path:
    """Write :func:`results_dataset` to ``path`` (NetCDF4, h5netcdf); temp file + rename."""
    ds = results_dataset(session, outputs, metrics, weights, population, attrs)
    p = Path(path)
    from eirnn.utils import atomic_write  # temp file beside p, fsync, rename (full disk: p unchanged)

    enc = {k: {"zlib": True, "complevel": 3} for k, v in ds.data_vars.items() if v.size >= 4096}
    atomic_write(p, lambda tmp: ds.to_netcdf(tmp, engine="h5netcdf", encoding=enc), by_path=True)
    return p
