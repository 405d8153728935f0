"""Per-epoch dashboard scalars of a fit (TensorBoard, CSV, ``training_log.json``).

Computed at each validation from what validation already produced (no extra forward pass):

- ``dynamics/spectral_radius``: ``max |eig(rate_scale * W_rec)|``, the loop gain of the
  recurrence at unit softplus slope (``model.spectral_radius`` at initialisation; runs that
  blew up went past ~1 first).
- ``currents/E``, ``currents/I``: mean over all units ``i`` of the recurrent input from the E
  and from the I units at the validation mean rates ``rbar`` (sp/s):
  ``E = mean_i sum_{j in E} W_ij rbar_j`` (>= 0 under Dale), ``I`` likewise (<= 0);
  ``currents/I_over_E = -I / E`` (1 = balanced on average).
- ``rates/model_E``, ``rates/data_E``, ``rates/model_I``, ``rates/data_I``: mean rate (sp/s)
  of the recorded E and I neurons over valid validation bins, model and data.
- ``val/condition_psth_corr``: :func:`eirnn.metrics.condition_psth_corr` of the validation
  trials grouped by their condition id (the PSTH correlation of the stacked condition-mean
  PSTHs, per neuron, averaged). For SC task inputs the module logs the event-aligned,
  smoothed version of issue 15 instead (``FitModule._condition_val_metrics``), and this one
  is only the fallback.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from eirnn import metrics as M

#: TensorBoard "Custom Scalars" layout: model vs data rates and E vs I currents on one chart each
CUSTOM_SCALARS = {
    "E-I fit": {
        "mean rate E: model vs data (sp/s)": ["Multiline", ["rates/model_E", "rates/data_E"]],
        "mean rate I: model vs data (sp/s)": ["Multiline", ["rates/model_I", "rates/data_I"]],
        "recurrent input currents E and I": ["Multiline", ["currents/E", "currents/I"]],
        "spectral radius of rate_scale * W_rec": ["Multiline", ["dynamics/spectral_radius"]],
    },
}


def validation_sums(rates_all: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-batch sums for :func:`epoch_scalars`: ``unit_rate_sum`` ``[1, n]`` (rates of all
    units summed over valid bins; a bin is valid when any recorded neuron is) and ``unit_bins`` ``[1]``."""
    valid = mask.any(-1).to(rates_all.dtype)  # [B, T]
    return {"unit_rate_sum": torch.einsum("btn,bt->n", rates_all.detach(), valid)[None],
            "unit_bins": valid.sum().reshape(1)}


def _mean_by_type(x: np.ndarray, valid: np.ndarray, exc: np.ndarray) -> dict[str, float]:
    """Masked mean over trials and bins per neuron, then mean over E and over I neurons."""
    n = valid.sum(axis=(0, 1))
    per = np.where(valid, x, 0.0).sum(axis=(0, 1)) / np.maximum(n, 1)
    per = np.where(n > 0, per, np.nan)
    out = {}
    for name, sel in (("E", exc), ("I", ~exc)):
        vals = per[sel]
        out[name] = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
    return out


@torch.no_grad()
def epoch_scalars(model, v: dict[str, torch.Tensor]) -> dict[str, float]:
    """The scalars of the module docstring from the gathered validation tensors ``v``
    (``rates``/``target``/``mask`` ``[B, T, N]``, optional ``condition`` ``[B]``,
    ``unit_rate_sum``/``unit_bins`` from :func:`validation_sums`)."""
    out: dict[str, float] = {}
    W = getattr(model, "W_rec", None)
    if W is not None:
        W = W.detach().double().cpu()
        scale = getattr(model, "rate_scale", None)
        gain = float(scale) if scale is not None else 1.0
        try:
            out["dynamics/spectral_radius"] = float(torch.linalg.eigvals(W * gain).abs().max())
        except RuntimeError:  # non-finite weights
            out["dynamics/spectral_radius"] = float("nan")
        exc_all = model.is_excitatory.detach().cpu().numpy().astype(bool)
        if "unit_rate_sum" in v and "unit_bins" in v:
            rbar = (v["unit_rate_sum"].double().sum(0) / v["unit_bins"].double().sum().clamp_min(1)).cpu()
            e_in = (W[:, exc_all] @ rbar[exc_all]).mean() if exc_all.any() else torch.tensor(0.0)
            i_in = (W[:, ~exc_all] @ rbar[~exc_all]).mean() if (~exc_all).any() else torch.tensor(0.0)
            out["currents/E"], out["currents/I"] = float(e_in), float(i_in)
            out["currents/I_over_E"] = float(-i_in / e_in) if float(e_in) != 0 else float("nan")
    exc = model.is_excitatory[: model.n_recorded].detach().cpu().numpy().astype(bool)
    rates = v["rates"].float().cpu().numpy()
    target = v["target"].float().cpu().numpy()
    mask = v["mask"].cpu().numpy().astype(bool)
    for who, x in (("model", rates), ("data", target)):
        for typ, val in _mean_by_type(x, mask, exc).items():
            out[f"rates/{who}_{typ}"] = val
    if "condition" in v:
        cond = v["condition"].cpu().numpy()
        if np.unique(cond).size > 1:
            out["val/condition_psth_corr"] = float(M.condition_psth_corr(rates, target, cond, mask))
    return {k: (float("nan") if val is None or not math.isfinite(val) else val) for k, val in out.items()}


def event_markers_ms(dm: Any, split: str = "val") -> dict[str, float]:
    """Median time (ms, on the session's time axis) of each task event over ``split``'s trials.

    Uses :func:`eirnn.data.conditions.event_times_ms` when the project has it; otherwise
    ``session.events`` when it has any, else the first onset of the SC input channels
    (fixation_on, any target_loc_*, go_signal, reward_on).
    Empty when the data module has no session (task RNNs).
    """
    session = getattr(dm, "session", None)
    if session is None or getattr(session, "time_axis_ms", None) is None:
        return {}
    idx = getattr(dm, "val_idx" if split == "val" else "train_idx", None)
    events: dict[str, np.ndarray] = {}
    try:
        from eirnn.data.conditions import event_times_ms  # the shared definition (eirnn/data/conditions.py)

        events = {k: np.asarray(t, dtype=float) for k, t in event_times_ms(session).items()}
    except Exception:  # not there (yet): the session's own events (NWB), else the SC input channels
        own = getattr(session, "events", None) or {}
        events = {k: np.asarray(t, dtype=float) for k, t in own.items()} or _events_from_inputs(session)
    out = {}
    for name, times in events.items():
        t = times if idx is None else times[np.asarray(idx)]
        t = t[np.isfinite(t)]
        if t.size:
            out[name] = float(np.median(t))
    return out


def _events_from_inputs(session) -> dict[str, np.ndarray]:
    from eirnn.data.session import INPUT_CHANNELS

    names = tuple(getattr(session, "input_names", None) or INPUT_CHANNELS)
    groups = {"fixation": ("fixation_on",), "target": tuple(n for n in names if n.startswith("target_loc")),
              "go": ("go_signal",), "reward": ("reward_on",)}
    t_axis = np.asarray(session.time_axis_ms, dtype=float)
    x = np.nan_to_num(np.asarray(session.inputs, dtype=float))
    out = {}
    for event, chans in groups.items():
        cols = [names.index(c) for c in chans if c in names]
        if not cols:
            continue
        on = (x[:, :, cols] > 0.5).any(-1)  # [K, T]
        first = np.where(on.any(1), on.argmax(1), -1)
        out[event] = np.where(first >= 0, t_axis[np.clip(first, 0, len(t_axis) - 1)], np.nan)
    return out
