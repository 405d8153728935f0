"""The arrays a run leaves for analysis (all numpy; written as ``.npy`` by :func:`save_arrays`).

Shapes: ``K`` validation trials, ``T`` time bins, ``N`` recorded neurons, ``n`` model units
(recorded first, then hidden E, then hidden I), ``C`` input channels, ``d`` embedding
width, ``H`` attention heads, ``k`` principal components, ``L`` target locations.

* :func:`validation_rates` -- the model's rates on the validation trials, exactly as the
  validation metric saw them (same batches, noise generator seeded with ``val_seed``).
* :func:`weight_arrays` -- ``weights/``: effective ``W_rec`` (Dale's law applied), ``W_in``,
  ``W_out``, ``h0``, E/I masks, time constants, attention projections when used.
* :func:`output_arrays` -- ``outputs/``: model and target rates and PSTHs, trial conditions.
* :func:`neuron_metrics` -- ``metrics/``: per-neuron correlation, mean rate, temporal
  variance and Fano factor for model and data, E/I labels.
* :func:`population_arrays` -- ``population/``: PCA of the data PSTH, model PSTH on the
  same components.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from eirnn import metrics as M

__all__ = [
    "validation_rates", "weight_arrays", "output_arrays", "neuron_metrics", "population_arrays",
    "save_arrays", "masked_mean", "group_psths",
]


def masked_mean(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Trial average ``psth[t, n] = sum_b m x / sum_b m`` of ``[K, T, N]``; NaN where no valid trial."""
    m = np.asarray(mask, bool)
    cnt = m.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(m, x, 0.0).sum(0) / cnt
    return np.where(cnt > 0, out, np.nan)


@torch.no_grad()
def validation_rates(module, datamodule, attention: bool = False) -> dict[str, np.ndarray]:
    """Run ``module.model`` on the validation trials like ``FitModule`` validation does.

    Batches come from ``datamodule.val_dataloader()`` in order and the state noise from
    one generator seeded with ``module.val_seed`` (so the rates are the ones the
    validation metric was computed on). No RNG other than that generator is touched.

    Returns:
        ``model_rates`` ``[K, T, N]`` float32 (recorded units), ``all_rates`` ``[K, T, n]``,
        ``target_rates`` ``[K, T, N]`` (NaN where missing), ``mask`` ``[K, T, N]`` bool,
        ``inputs`` ``[K, T, C]``, ``condition`` ``[K]``, ``trial`` ``[K]`` (index into
        ``datamodule.session``) and, with ``attention=True`` and an attention embedding,
        ``attention`` ``[K, T, H, C]`` attention weights.
    """
    model = module.model
    device = next(model.parameters()).device
    gen = torch.Generator(device=device)
    gen.manual_seed(int(module.val_seed))
    parts: dict[str, list[np.ndarray]] = {}
    emb = getattr(model, "embedding", None)
    for batch in datamodule.val_dataloader():
        u = batch["inputs"].to(device)
        out = model(u, noise=True, generator=gen)
        rates = out.rates.float()
        mask = batch["mask"].cpu().numpy()
        item = {
            "model_rates": rates[..., : model.n_recorded].cpu().numpy(),
            "all_rates": rates.cpu().numpy(),
            "target_rates": np.where(mask, batch["rates"].cpu().numpy(), np.nan).astype(np.float32),
            "mask": mask,
            "inputs": batch["inputs"].cpu().numpy(),
            "condition": batch["condition"].cpu().numpy(),
            "trial": batch["trial"].cpu().numpy(),
        }
        if attention and emb is not None and hasattr(emb, "attention"):
            item["attention"] = emb.attention(u)[0].float().cpu().numpy()
        for k, v in item.items():
            parts.setdefault(k, []).append(v)
    return {k: np.concatenate(v, 0) for k, v in parts.items()}


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().float().numpy()


@torch.no_grad()
def weight_arrays(model) -> dict[str, np.ndarray]:
    """The ``weights/`` folder: ``{name: array}``.

    ``W_rec`` ``[n, n]`` (``W[i, j]``: from unit ``j`` onto unit ``i``; Dale's law and zero
    diagonal applied), ``W_in`` ``[n, d]``, ``bias`` ``[n]``, ``h0`` ``[n]``,
    ``E_mask`` / ``I_mask`` / ``recorded_mask`` ``[n]`` bool, ``alpha`` ``[n]`` (``dt/tau``),
    ``tau_ms`` ``[n]``, ``rate_scale`` / ``rate_baseline`` (scalars); with a readout
    ``W_out`` ``[n_outputs, n_E]`` and ``b_out``; with low-rank connectivity ``W_rec_U`` /
    ``W_rec_V`` ``[n, r]``; with the attention embedding ``attention_query`` ``[H, d/H]``,
    ``attention_W_K`` / ``attention_W_V`` / ``attention_W_O`` ``[d, d]`` and
    ``attention_channel_scale`` / ``attention_channel_bias`` ``[C, d]``; with a fitted spike
    readout (:mod:`eirnn.models.readout`) ``spike_readout_gain`` / ``spike_readout_offset``
    ``[n_recorded]`` (predicted spike rate ``max(gain r + offset, 1e-3)`` sp/s).
    """
    exc = model.is_excitatory.cpu().numpy().astype(bool)
    rec = np.zeros(exc.shape, bool)
    rec[: model.n_recorded] = True
    alpha = _np(model.alpha())
    out = {
        "W_rec": _np(model.W_rec),
        "W_in": _np(model.W_in),
        "bias": _np(model.bias),
        "h0": _np(model.h0),
        "E_mask": exc,
        "I_mask": ~exc,
        "recorded_mask": rec,
        "alpha": alpha,
        "tau_ms": (float(model.dt) / alpha).astype(np.float32),
        "rate_scale": np.asarray(float(model.rate_scale), np.float32),
        "rate_baseline": np.asarray(float(model.rate_baseline), np.float32),
    }
    if getattr(model, "n_outputs", 0) > 0:
        out["W_out"] = _np(model.W_out)
        out["b_out"] = _np(model.b_out)
    ro = getattr(model, "spike_readout", None)
    if ro is not None and ro.is_fitted:
        out["spike_readout_gain"], out["spike_readout_offset"] = _np(ro.gain), _np(ro.offset)
    rw = model.recurrent
    if hasattr(rw, "U") and hasattr(rw, "V"):
        out["W_rec_U"], out["W_rec_V"] = _np(rw.U), _np(rw.V)
    emb = model.embedding
    if hasattr(emb, "query"):
        out.update({
            "attention_query": _np(emb.query), "attention_W_K": _np(emb.W_K), "attention_W_V": _np(emb.W_V),
            "attention_W_O": _np(emb.W_O), "attention_channel_scale": _np(emb.channel_scale),
            "attention_channel_bias": _np(emb.channel_bias),
        })
    return out


def output_arrays(val: dict[str, np.ndarray], session, time_ms: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The ``outputs/`` folder from :func:`validation_rates` and the (filtered) session.

    ``val_model_rates`` / ``val_target_rates`` ``[K, T, N]`` (target NaN where missing),
    ``val_mask`` ``[K, T, N]``, ``val_model_rates_all_units`` ``[K, T, n]``,
    ``val_model_psth`` / ``val_target_psth`` ``[T, N]`` (masked trial means),
    ``val_inputs`` ``[K, T, C]``, ``val_trial_conditions`` ``[K]`` (condition id),
    ``val_trial_factors`` ``[K, F]`` (``session.factors``; SC: location, identity, reward, salience),
    ``condition_table`` ``[C, F]`` (the factors of each condition id),
    ``val_trial_index`` ``[K]`` (trial in the session), ``time_ms`` ``[T]``; with attention
    ``val_attention_mean`` ``[T, H, C]`` (attention weights averaged over trials).
    """
    trial = np.asarray(val["trial"], np.int64)
    factors = (np.stack([np.asarray(v)[trial] for v in session.factors.values()], 1) if session.factors
               else np.zeros((trial.size, 0), np.int64))
    out = {
        "val_model_rates": val["model_rates"].astype(np.float32),
        "val_target_rates": val["target_rates"].astype(np.float32),
        "val_mask": val["mask"].astype(bool),
        "val_model_rates_all_units": val["all_rates"].astype(np.float32),
        "val_model_psth": masked_mean(val["model_rates"], val["mask"]).astype(np.float32),
        "val_target_psth": masked_mean(val["target_rates"], val["mask"]).astype(np.float32),
        "val_inputs": val["inputs"].astype(np.float32),
        "val_trial_conditions": np.asarray(val["condition"], np.int64),
        "val_trial_factors": factors.astype(np.int64),
        "condition_table": session.condition_table().astype(np.int64),
        "val_trial_index": trial,
        "time_ms": np.asarray(session.time_axis_ms if time_ms is None else time_ms, np.float64),
    }
    if "attention" in val:
        out["val_attention_mean"] = val["attention"].mean(0).astype(np.float32)
    return out


def neuron_metrics(val: dict[str, np.ndarray], is_excitatory: np.ndarray, bin_size_ms: float) -> dict[str, np.ndarray]:
    """The ``metrics/`` folder: per recorded neuron ``[N]``.

    ``per_neuron_correlation`` (:func:`eirnn.metrics.psth_correlation`),
    ``per_neuron_mean_rate_model`` / ``_target`` (masked mean over trials and time, sp/s),
    ``per_neuron_variance_model`` / ``_target`` (variance over time of the PSTH, (sp/s)^2),
    ``per_neuron_fano_model`` (:func:`eirnn.metrics.model_fano_factor`: Poisson spikes from the
    model rates) / ``per_neuron_fano_target`` (:func:`eirnn.metrics.fano_factor` of the data),
    ``neuron_ei_labels`` (0 = E, 1 = I).
    """
    rates, target, mask = val["model_rates"], val["target_rates"], val["mask"]
    psth_m, psth_d = masked_mean(rates, mask), masked_mean(target, mask)
    n_valid = np.maximum(mask.sum((0, 1)), 1)
    return {
        "per_neuron_correlation": M.psth_correlation(rates, target, mask),
        "per_neuron_mean_rate_model": np.where(mask, rates, 0.0).sum((0, 1)) / n_valid,
        "per_neuron_mean_rate_target": np.where(mask, np.nan_to_num(target), 0.0).sum((0, 1)) / n_valid,
        "per_neuron_variance_model": np.nanvar(psth_m, axis=0),
        "per_neuron_variance_target": np.nanvar(psth_d, axis=0),
        "per_neuron_fano_model": M.model_fano_factor(rates, mask, bin_size_ms=bin_size_ms),
        "per_neuron_fano_target": M.fano_factor(np.nan_to_num(target), mask, bin_size_ms=bin_size_ms),
        "neuron_ei_labels": (~np.asarray(is_excitatory, bool)).astype(np.int64),
    }


def population_arrays(psth_target: np.ndarray, psth_model: np.ndarray, n_pcs: int = 10,
                      groups: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> dict[str, np.ndarray]:
    """The ``population/`` folder: PCA of the data PSTH ``D`` ``[T, N]``.

    ``mu = mean_t D``; ``D - mu = U S V^T`` (SVD; bins or neurons with NaN filled with the
    neuron's mean); components ``V[:, :k]^T`` ``[k, N]``. Data and model PSTHs are projected
    on the same components with the same centring::

        pca_real  = (D - mu) V_k      [T, k]
        pca_model = (M - mu) V_k      [T, k]

    ``pca_explained_variance`` ``[k]`` is the variance along each component
    (``S^2 / (T - 1)``) and ``pca_explained_variance_ratio`` its fraction of the total.
    ``groups`` maps a name to ``(data [G, T, N], model [G, T, N])`` condition PSTHs that
    are projected too (``pca_real_<name>`` / ``pca_model_<name>`` ``[G, T, k]``). Bins where
    a PSTH has no finite value (no valid trial) are NaN in the projections.
    """
    d = np.asarray(psth_target, np.float64)
    m = np.asarray(psth_model, np.float64)
    mu = np.nanmean(d, 0)
    mu = np.where(np.isfinite(mu), mu, 0.0)
    dc = np.where(np.isfinite(d), d - mu, 0.0)
    _, s, vt = np.linalg.svd(dc, full_matrices=False)
    k = int(min(n_pcs, vt.shape[0]))
    comps = vt[:k]
    # deterministic sign: the largest-magnitude loading of each component is positive
    sign = np.sign(comps[np.arange(k), np.abs(comps).argmax(1)])
    comps = comps * np.where(sign == 0, 1.0, sign)[:, None]
    var = s**2 / max(d.shape[0] - 1, 1)

    def project(x: np.ndarray) -> np.ndarray:
        """``(x - mu) V_k``; a NaN entry counts as the mean, a bin with no finite entry stays NaN."""
        p = np.where(np.isfinite(x), x - mu, 0.0) @ comps.T
        empty = ~np.isfinite(x).any(-1)
        return np.where(empty[..., None], np.nan, p)

    out = {
        "pca_real": project(d),
        "pca_model": project(m),
        "pca_components": comps,
        "pca_explained_variance": var[:k],
        "pca_explained_variance_ratio": var[:k] / var.sum() if var.sum() > 0 else np.zeros(k),
        "pca_mean": mu,
    }
    for name, (gd, gm) in (groups or {}).items():
        out[f"pca_real_{name}"] = project(np.asarray(gd, np.float64))
        out[f"pca_model_{name}"] = project(np.asarray(gm, np.float64))
    return out


def group_psths(rates: np.ndarray, mask: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``([G, T, N] masked trial means per label, [G] sorted labels)`` of ``rates`` ``[K, T, N]``."""
    labels = np.asarray(labels)
    uniq = np.unique(labels)
    return np.stack([masked_mean(rates[labels == g], mask[labels == g]) for g in uniq]), uniq


def save_arrays(folder: Path, arrays: dict[str, Any]) -> list[dict[str, Any]]:
    """``np.save`` each array as ``folder/<name>.npy``; returns ``[{path, shape, dtype}]``."""
    from eirnn.utils import np_save_atomic

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, arr in arrays.items():
        a = np.asarray(arr)
        path = folder / f"{name}.npy"
        np_save_atomic(path, a)
        written.append({"path": str(path), "shape": list(a.shape), "dtype": str(a.dtype)})
    return written
