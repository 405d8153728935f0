"""Figures of a run report, drawn from the saved arrays (matplotlib object API, no pyplot).

Every function takes numpy arrays (shapes as in :mod:`eirnn.report.artifacts`) and
returns a :class:`matplotlib.figure.Figure` with a canvas attached; :func:`save` writes
it as PNG. E units are red, I units blue (:mod:`eirnn.plotting`). ``K`` trials, ``T``
bins, ``N`` recorded neurons, ``n`` units, ``k`` components.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from eirnn.plotting import E_COLOR, I_COLOR, new_figure

DATA_COLOR = "0.15"
MODEL_COLOR = "#ff7f0e"

__all__ = [
    "save", "training_curves", "correlation_histogram", "correlation_scatter", "best_worst_neurons",
    "weight_matrices", "h0_distribution", "attention_patterns", "pca_trajectories", "pca_state_space",
    "fano_comparison",
]


def save(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` as PNG (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from eirnn.utils import savefig_atomic

    savefig_atomic(fig, path, dpi=dpi)
    return path


def _series(history: Sequence[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    ep = [h.get("epoch") for h in history if h.get(key) is not None]
    val = [h.get(key) for h in history if h.get(key) is not None]
    x = np.asarray(ep, float) + 1.0  # completed epochs, 1-based like the console
    y = np.asarray(val, float)
    ok = np.isfinite(y)
    return x[ok], y[ok]


def _positive_log(ax, ys: Sequence[np.ndarray], xs: Sequence[np.ndarray] | None = None,
                  labels: Sequence[str] | None = None, outlier_ratio: float = 1e3) -> None:
    """Log y scale when the positive values span more than 30x. With ``xs``, the epochs whose
    value is more than ``outlier_ratio`` x the series' median (a blow-up in the first epochs)
    are left above the axes and named in a note, so they do not flatten the other epochs."""
    vals = np.concatenate([y for y in ys if y.size]) if any(y.size for y in ys) else np.zeros(0)
    if not vals.size:
        return
    keep, notes = [], []
    for k, y in enumerate(ys):
        med = float(np.nanmedian(np.abs(y))) if y.size else 0.0
        out = np.abs(y) > outlier_ratio * med if (xs is not None and y.size >= 3 and med > 0) else np.zeros(y.shape, bool)
        keep.append(y[~out])
        if out.any():
            name = labels[k] if labels is not None else f"series {k}"
            pts = ", ".join(f"{v:.2g} at epoch {int(e)}" for e, v in zip(xs[k][out][:2], y[out][:2]))
            notes.append(f"{name}: {pts}{' ...' if out.sum() > 2 else ''}")
    kept = np.concatenate([y for y in keep if y.size]) if any(y.size for y in keep) else vals
    log = bool(np.all(kept > 0) and kept.max() / max(kept.min(), 1e-300) > 30)
    if log:
        ax.set_yscale("log")
    if notes:
        lo, hi = float(kept.min()), float(kept.max())
        if log:
            ax.set_ylim(lo / 2.0, hi * 3.0)
        else:
            pad = 0.08 * (hi - lo) + 1e-12
            ax.set_ylim(lo - pad, hi + 2 * pad)
        ax.text(0.99, 0.98, "off scale: " + "; ".join(notes), transform=ax.transAxes, ha="right", va="top",
                fontsize=7, color="0.25", bbox=dict(facecolor="white", alpha=0.85, edgecolor="none", pad=1.5))


def _log_if_wide(axis, set_scale, values: np.ndarray, ratio: float = 8.0) -> bool:
    """Log scale with plain-number tick labels when the positive ``values`` span more than ``ratio``."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if v.size == 0 or np.any(v <= 0) or v.max() / v.min() < ratio:
        return False
    set_scale("log")
    fmt = ScalarFormatter()
    fmt.set_scientific(False)
    axis.set_major_formatter(fmt)
    axis.set_minor_formatter(NullFormatter())
    return True


def _smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing along axis -2 (time) of ``[..., T, k]``, NaN rows kept NaN."""
    if sigma <= 0:
        return x
    from scipy.ndimage import gaussian_filter1d

    nan = ~np.isfinite(x)
    out = gaussian_filter1d(np.where(nan, 0.0, x), sigma, axis=-2, mode="nearest")
    w = gaussian_filter1d((~nan).astype(float), sigma, axis=-2, mode="nearest")
    with np.errstate(invalid="ignore", divide="ignore"):
        out = out / w
    return np.where(nan, np.nan, out)


# ---------------------------------------------------------------------- training
def training_curves(history: Sequence[dict], monitor: str = "val/psth_corr") -> Figure:
    """4 panels: losses (train total, train ``L_neuron``, val ``L_neuron``), validation
    correlation (all / E / I, best epoch marked), learning rate, loss terms by term."""
    fig = new_figure(12, 8)
    axes = fig.subplots(2, 2)
    ax = axes[0, 0]
    xs, ys, names = [], [], []
    for key, label, style in (("train/loss", "train total", "-"), ("train/L_neuron", "train L_neuron", "--"),
                              ("val/L_neuron", "val L_neuron", "-")):
        x, y = _series(history, key)
        if x.size:
            ax.plot(x, y, style, lw=1.3, label=label)
            xs.append(x), ys.append(y), names.append(label)
    _positive_log(ax, ys, xs, names)
    ax.set(xlabel="epoch", ylabel="loss", title="Train / validation loss")
    ax.legend(fontsize=8, frameon=False, loc="center right")

    ax = axes[0, 1]
    for key, label, color in ((monitor, "all neurons", "k"), ("val/psth_corr_E", "E neurons", E_COLOR),
                              ("val/psth_corr_I", "I neurons", I_COLOR)):
        x, y = _series(history, key)
        if x.size:
            ax.plot(x, y, color=color, lw=1.5 if key == monitor else 1.0, label=label,
                    alpha=1.0 if key == monitor else 0.7)
    x, y = _series(history, monitor)
    if x.size:
        i = int(np.argmax(y))
        ax.plot([x[i]], [y[i]], marker="*", ms=14, color="gold", mec="k", ls="",
                label=f"best {y[i]:.3f} (epoch {int(x[i])})")
    ax.set(xlabel="epoch", ylabel="PSTH correlation", title="Validation PSTH correlation")
    ax.legend(fontsize=8, frameon=False, loc="lower right")
    ax.grid(alpha=0.3)

    ax = axes[1, 0]
    x, y = _series(history, "lr")
    if x.size:
        ax.plot(x, y, color="tab:purple", lw=1.5)
        if np.all(y > 0):
            ax.set_yscale("log")
    ax.set(xlabel="epoch", ylabel="learning rate", title="Learning rate")
    ax.grid(alpha=0.3, which="both")

    ax = axes[1, 1]
    xs, ys, names = [], [], []
    for key in ("train/L_neuron", "train/L_trial", "train/L_reg", "train/L_activity", "train/balance_weight"):
        x, y = _series(history, key)
        if x.size and np.any(y != 0):
            ax.plot(x, y, lw=1.2, label=key.split("/")[1])
            xs.append(x), ys.append(y), names.append(key.split("/")[1])
    _positive_log(ax, ys, xs, names)
    ax.set(xlabel="epoch", ylabel="value", title="Training loss terms (and L_trial balance weight)")
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: curves span the axes
    from matplotlib.ticker import MaxNLocator

    for a in axes.ravel():
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------- per neuron
def correlation_histogram(corr: np.ndarray, is_excitatory: np.ndarray) -> Figure:
    """Histogram of per-neuron PSTH correlations, E and I stacked, means marked."""
    corr = np.asarray(corr, float)
    exc = np.asarray(is_excitatory, bool)
    fig = new_figure(7, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    ok = np.isfinite(corr)
    lo = min(-0.2, np.floor(np.nanmin(corr[ok]) * 10) / 10) if ok.any() else -1
    bins = np.linspace(lo, 1.0, 25)
    ax.hist([corr[ok & exc], corr[ok & ~exc]], bins=bins, stacked=True, color=[E_COLOR, I_COLOR],
            label=[f"E (n={int((ok & exc).sum())})", f"I (n={int((ok & ~exc).sum())})"], edgecolor="white")
    for sel, color, name in ((ok & exc, E_COLOR, "E"), (ok & ~exc, I_COLOR, "I")):
        if sel.any():
            m = corr[sel].mean()
            ax.axvline(m, color=color, ls="--", lw=1.5, label=f"{name} mean {m:.3f}")
    if ok.any():
        ax.axvline(corr[ok].mean(), color="k", ls=":", lw=1.5, label=f"all mean {corr[ok].mean():.3f}")
    ax.set(xlabel="PSTH correlation (model vs data, validation trials)", ylabel="neurons",
           title="Per-neuron PSTH correlation")
    ax.legend(fontsize=8, frameon=False, loc="upper left")
    fig.tight_layout()
    return fig


def correlation_scatter(corr: np.ndarray, mean_rate: np.ndarray, is_excitatory: np.ndarray) -> Figure:
    """Per-neuron correlation vs the neuron's mean firing rate in the data (log x)."""
    corr, rate = np.asarray(corr, float), np.asarray(mean_rate, float)
    exc = np.asarray(is_excitatory, bool)
    fig = new_figure(7, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    for sel, color, name in ((exc, E_COLOR, "E"), (~exc, I_COLOR, "I")):
        ax.scatter(np.maximum(rate[sel], 1e-2), corr[sel], c=color, s=30, alpha=0.8, edgecolors="k",
                   linewidths=0.4, label=f"{name} (n={int(sel.sum())})")
    _log_if_wide(ax.xaxis, ax.set_xscale, rate)
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set(xlabel="mean firing rate in the data (sp/s)", ylabel="PSTH correlation",
           title="Fit quality vs firing rate")
    ax.legend(fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def time_label(time_ms, align_event: str = "fixation_on") -> str:
    """x-axis label of a time axis aligned on ``align_event`` (the session's ``alignment_event``)."""
    if time_ms is None:
        return "time bin"
    if align_event == "fixation_on":
        return "time from fixation onset (ms)"
    return f"time from {align_event} (ms)" if align_event else "time (ms)"


def best_worst_neurons(psth_data: np.ndarray, psth_model: np.ndarray, corr: np.ndarray,
                       is_excitatory: np.ndarray, time_ms: np.ndarray | None = None, n: int = 4,
                       align_event: str = "fixation_on") -> Figure:
    """2 x ``n`` grid: data vs model PSTH of the ``n`` best (top row) and ``n`` worst (bottom) neurons."""
    corr = np.asarray(corr, float)
    finite = np.flatnonzero(np.isfinite(corr))
    order = finite[np.argsort(-corr[finite])]
    best, worst = list(order[:n]), list(order[::-1][:n])
    t = np.arange(psth_data.shape[0]) if time_ms is None else np.asarray(time_ms, float)
    fig = new_figure(3.4 * n, 6.2)
    axes = np.atleast_2d(fig.subplots(2, n, squeeze=False))
    for row, (picks, label) in enumerate(((best, "best"), (worst, "worst"))):
        for col in range(n):
            ax = axes[row, col]
            if col >= len(picks):
                ax.axis("off")
                continue
            i = picks[col]
            exc = bool(is_excitatory[i])
            ax.plot(t, psth_data[:, i], color=DATA_COLOR, lw=1.3)
            ax.plot(t, psth_model[:, i], color=E_COLOR if exc else I_COLOR, lw=1.3)
            ax.set_title(f"{label} #{col + 1}: neuron {i} ({'E' if exc else 'I'}), r = {corr[i]:.2f}", fontsize=9)
            ax.set_xlabel(time_label(time_ms, align_event), fontsize=8)
            if col == 0:
                ax.set_ylabel("rate (sp/s)", fontsize=9)
            ax.tick_params(labelsize=7)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=DATA_COLOR, lw=1.5, label="data"),
               Line2D([], [], color=E_COLOR, lw=1.5, label="model, E neuron"),
               Line2D([], [], color=I_COLOR, lw=1.5, label="model, I neuron")]
    fig.suptitle("Validation PSTHs (trial averages): best-fitted (top) and worst-fitted (bottom) neurons", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.96), ncol=3, fontsize=9, frameon=False)
    return fig


# -------------------------------------------------------------------- weights
def _ei_order(exc: np.ndarray) -> tuple[np.ndarray, int]:
    exc = np.asarray(exc, bool)
    order = np.concatenate([np.flatnonzero(exc), np.flatnonzero(~exc)])
    return order, int(exc.sum())


def _ei_block_labels(ax, n_e: int, n: int, which: str = "xy") -> None:
    """Coloured "E (n)" / "I (n)" labels at the centre of each block of an E|I-sorted
    heatmap, on the top edge (``x`` in ``which``) and the right edge (``y``)."""
    centres, names = [(n_e - 1) / 2.0, n_e + (n - n_e - 1) / 2.0], [f"E ({n_e})", f"I ({n - n_e})"]
    keep = [i for i, size in enumerate((n_e, n - n_e)) if size > 0]
    pos, text = [centres[i] for i in keep], [names[i] for i in keep]
    colors = [E_COLOR if i == 0 else I_COLOR for i in keep]
    labels = []
    if "x" in which:
        sec = ax.secondary_xaxis("top")
        sec.set_xticks(pos, text)
        sec.tick_params(length=0, labelsize=9)
        labels += list(zip(sec.get_xticklabels(), colors))
    if "y" in which:
        sec = ax.secondary_yaxis("right")
        sec.set_yticks(pos, text, rotation=90, va="center")
        sec.tick_params(length=0, labelsize=9)
        labels += list(zip(sec.get_yticklabels(), colors))
    for lab, color in labels:
        lab.set_color(color)
        lab.set_fontweight("bold")


def _sym_limit(a: np.ndarray, q: float = 99.0) -> float:
    v = np.abs(a[np.isfinite(a)])
    lim = float(np.percentile(v, q)) if v.size else 1.0
    return lim if lim > 0 else (float(v.max()) if v.size and v.max() > 0 else 1.0)


def weight_matrices(W_rec: np.ndarray, W_in: np.ndarray, is_excitatory: np.ndarray, n_recorded: int | None = None,
                    input_labels: Sequence[str] | None = None) -> Figure:
    """Heatmaps of ``W_rec`` ``[n, n]`` (rows = postsynaptic, columns = presynaptic) and
    ``W_in`` ``[n, d]``, units sorted E first then I (lines mark the E|I border); colour
    limits at the 99th percentile of ``|W|`` (diverging, 0 white)."""
    exc = np.asarray(is_excitatory, bool)
    order, n_e = _ei_order(exc)
    W = np.asarray(W_rec)[np.ix_(order, order)]
    Win = np.asarray(W_in)[order]
    fig = new_figure(14, 6.2)
    gs = fig.add_gridspec(1, 2, width_ratios=[1.0, max(0.45, min(1.0, Win.shape[1] / W.shape[1]))])
    ax = fig.add_subplot(gs[0, 0])
    lim = _sym_limit(W)
    im = ax.imshow(W, cmap="RdBu_r", norm=TwoSlopeNorm(0.0, -lim, lim), interpolation="nearest", aspect="equal")
    for p in (n_e - 0.5,):
        ax.axhline(p, color="k", lw=1)
        ax.axvline(p, color="k", lw=1)
    ax.set(xlabel=f"presynaptic unit j (sorted: E 0-{n_e - 1}, I {n_e}-{len(exc) - 1})",
           ylabel="postsynaptic unit i (sorted E | I)")
    ax.set_title(f"W_rec[i, j] (Dale's law applied), {len(exc)} units", pad=22)
    _ei_block_labels(ax, n_e, len(exc), "xy")
    cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.06, extend="both")
    cb.set_label("weight (per sp/s)")
    ax2 = fig.add_subplot(gs[0, 1])
    lim2 = _sym_limit(Win)
    im2 = ax2.imshow(Win, cmap="RdBu_r", norm=TwoSlopeNorm(0.0, -lim2, lim2), interpolation="nearest", aspect="auto")
    ax2.axhline(n_e - 0.5, color="k", lw=1)
    _ei_block_labels(ax2, n_e, len(exc), "y")
    if input_labels is not None and len(input_labels) == Win.shape[1]:
        ax2.set_xticks(range(Win.shape[1]))
        ax2.set_xticklabels(input_labels, rotation=90, fontsize=7)
        ax2.set_xlabel("input channel")
    else:
        ax2.set_xlabel("input embedding dimension")
    ax2.set(ylabel="unit (sorted E | I)")
    ax2.set_title("W_in (input weights)", pad=22)
    cb2 = fig.colorbar(im2, ax=ax2, fraction=0.08, pad=0.1, extend="both")
    cb2.set_label("weight (per unit of input)" if input_labels is not None and len(input_labels) == Win.shape[1]
                  else "weight (per unit of embedded input)")
    fig.suptitle("Weights sorted E | I (colour limits: 99th percentile of |W|; arrows = beyond)", fontsize=11)
    fig.tight_layout()
    return fig


def h0_distribution(h0: np.ndarray, is_excitatory: np.ndarray, learnable: bool = True) -> Figure:
    """Histogram of the initial state ``h0`` ``[n]``, E and I overlaid."""
    h0 = np.asarray(h0, float)
    exc = np.asarray(is_excitatory, bool)
    fig = new_figure(7, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    span = h0.max() - h0.min()
    bins = np.linspace(h0.min() - 0.05 - 0.05 * span, h0.max() + 0.05 + 0.05 * span, 30)
    groups = [(h0[sel], color, f"{name} (n={int(sel.sum())}, mean {h0[sel].mean():.3f}, sd {h0[sel].std():.3f})")
              for sel, color, name in ((exc, E_COLOR, "E"), (~exc, I_COLOR, "I")) if sel.any()]
    ax.hist([g[0] for g in groups], bins=bins, stacked=True, color=[g[1] for g in groups],
            label=[g[2] for g in groups], edgecolor="white")
    ax.set(xlabel="initial state h0 (pre-activation x at t = -1)", ylabel="units",
           title="Learned initial state h0" if learnable else "Initial state h0 (fixed, not learned)")
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def attention_patterns(attention_mean: np.ndarray, time_ms: np.ndarray | None = None,
                       channel_labels: Sequence[str] | None = None, align_event: str = "fixation_on") -> Figure:
    """Attention weights of the input embedding, averaged over validation trials.

    ``attention_mean`` ``[T, H, C]``, shown relative to uniform attention: ``C * w``
    (1 = the head weighs every channel equally, 2 = twice its share) on a log colour scale
    symmetric about 1 (``LogNorm``-like: 1/2 and 2 are equally far from white). Left: time
    average per head and channel (``[C, H]``). Right: each head over time (``[C, T]``).
    """
    from matplotlib.colors import LogNorm

    A = np.asarray(attention_mean, float) * attention_mean.shape[-1]
    T, H, C = A.shape
    labels = list(channel_labels) if channel_labels is not None and len(channel_labels) == C else [str(c) for c in range(C)]
    t = np.arange(T) if time_ms is None else np.asarray(time_ms, float)
    fig = new_figure(3.0 + 3.0 * H, 5.0)
    fig.set_layout_engine("constrained")
    axes = fig.subplots(1, H + 1, gridspec_kw={"width_ratios": [0.9] + [1.0] * H})
    pos = A[np.isfinite(A) & (A > 0)]
    dev = float(np.max(np.abs(np.log(pos)))) if pos.size else 0.0
    dev = max(dev, np.log(1.05))  # at least 1/1.05 .. 1.05
    norm = LogNorm(np.exp(-dev), np.exp(dev))
    A = np.clip(A, np.exp(-dev), None)  # exact zeros (masked channels) at the bottom of the scale
    ax = axes[0]
    im = ax.imshow(A.mean(0).T, aspect="auto", cmap="PuOr_r", norm=norm, interpolation="nearest")
    ax.set_yticks(range(C))
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xticks(range(H))
    ax.set_xticklabels([f"head {h}" for h in range(H)], fontsize=8, rotation=45)
    ax.set_ylabel("task input channel")
    ax.set_title("time average", fontsize=10)
    for h in range(H):
        axh = axes[h + 1]
        axh.imshow(A[:, h, :].T, aspect="auto", cmap="PuOr_r", norm=norm, interpolation="nearest",
                   extent=(t[0], t[-1], C - 0.5, -0.5))
        axh.set_yticks(range(C))
        axh.set_yticklabels([])
        axh.set_xlabel(time_label(time_ms, align_event), fontsize=8)
        axh.set_title(f"head {h} over time", fontsize=10)
        axh.tick_params(axis="x", labelsize=7)
    cb = fig.colorbar(im, ax=list(axes), fraction=0.02, pad=0.01)
    from matplotlib.ticker import FixedLocator, NullLocator

    ticks = [v for v in (0.125, 0.25, 0.5, 0.67, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 4.0, 8.0)
             if np.exp(-dev) <= v <= np.exp(dev)]
    cb.ax.yaxis.set_major_locator(FixedLocator(ticks))
    cb.ax.yaxis.set_minor_locator(NullLocator())
    cb.ax.set_yticklabels([f"{v:g}" for v in ticks])
    cb.set_label("attention / uniform share (C x weight, log scale)")
    fig.suptitle("Input attention: weight of each task channel per head, relative to uniform (validation trials)",
                 fontsize=11)
    return fig


# ----------------------------------------------------------------- population
def pca_trajectories(pca_real: np.ndarray, pca_model: np.ndarray, explained_ratio: np.ndarray,
                     time_ms: np.ndarray | None = None, n: int = 3, align_event: str = "fixation_on") -> Figure:
    """PC1..PC``n`` of the data PSTH over time (data solid, model dashed, same components)."""
    n = min(n, pca_real.shape[1])
    t = np.arange(pca_real.shape[0]) if time_ms is None else np.asarray(time_ms, float)
    fig = new_figure(4.2 * n, 3.8)
    axes = fig.subplots(1, n, squeeze=False)[0]
    for i, ax in enumerate(axes):
        ax.plot(t, pca_real[:, i], color=DATA_COLOR, lw=1.5, label="data")
        ax.plot(t, pca_model[:, i], color=MODEL_COLOR, lw=1.5, ls="--", label="model")
        ax.set_title(f"PC{i + 1} ({100 * explained_ratio[i]:.1f}% of data variance)", fontsize=10)
        ax.set_xlabel(time_label(time_ms, align_event))
        ax.set_ylabel("projection (sp/s)")
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=8, frameon=False)
    fig.suptitle("Population PSTH on the data's principal components", fontsize=11)
    fig.tight_layout()
    return fig


def pca_state_space(pca_real: np.ndarray, pca_model: np.ndarray, explained_ratio: np.ndarray,
                    groups_real: np.ndarray | None = None, groups_model: np.ndarray | None = None,
                    group_labels: Sequence[Any] | None = None, group_name: str = "location",
                    smooth_bins: float = 2.0) -> Figure:
    """PC1 vs PC2 trajectories, data vs model. Left: all validation trials (start o, end x);
    with groups (``[G, T, k]``), data (middle) and model (right) per group on the same axes.
    Trajectories are drawn smoothed over time (Gaussian, ``smooth_bins`` bins; display only)."""
    pca_real, pca_model = _smooth(pca_real, smooth_bins), _smooth(pca_model, smooth_bins)
    if groups_real is not None:
        groups_real, groups_model = _smooth(groups_real, smooth_bins), _smooth(groups_model, smooth_bins)
    ncol = 3 if groups_real is not None else 1
    fig = new_figure(5.2 * ncol, 4.8)
    axes = fig.subplots(1, ncol, squeeze=False)[0]
    ax = axes[0]
    for arr, color, name, ls in ((pca_real, DATA_COLOR, "data", "-"), (pca_model, MODEL_COLOR, "model", "--")):
        ax.plot(arr[:, 0], arr[:, 1], color=color, ls=ls, lw=1.4, label=name)
        fin = np.flatnonzero(np.isfinite(arr[:, :2]).all(1))
        if fin.size:
            ax.plot(arr[fin[0], 0], arr[fin[0], 1], "o", color=color, ms=6)
            ax.plot(arr[fin[-1], 0], arr[fin[-1], 1], "x", color=color, ms=8, mew=2)
    ax.set_title("all validation trials (o start, x end)", fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    xlab, ylab = (f"PC{i + 1} projection (sp/s; {100 * explained_ratio[i]:.1f}% of data variance)" for i in (0, 1))
    ax.set(xlabel=xlab, ylabel=ylab)
    if groups_real is not None:
        G = groups_real.shape[0]
        colors = [f"C{i % 10}" for i in range(G)]
        labels = list(group_labels) if group_labels is not None else list(range(G))
        allx = np.concatenate([groups_real[..., 0].ravel(), groups_model[..., 0].ravel()])
        ally = np.concatenate([groups_real[..., 1].ravel(), groups_model[..., 1].ravel()])
        allx, ally = allx[np.isfinite(allx)], ally[np.isfinite(ally)]
        pad_x, pad_y = 0.05 * np.ptp(allx) + 1e-9, 0.05 * np.ptp(ally) + 1e-9
        for ax, arr, title in ((axes[1], groups_real, "data"), (axes[2], groups_model, "model")):
            for g in range(G):
                ax.plot(arr[g, :, 0], arr[g, :, 1], color=colors[g], lw=1.3, label=f"{group_name} {labels[g]}")
                fin = np.flatnonzero(np.isfinite(arr[g, :, :2]).all(1))
                if fin.size:
                    ax.plot(arr[g, fin[0], 0], arr[g, fin[0], 1], "o", color=colors[g], ms=5)
            ax.set_xlim(allx.min() - pad_x, allx.max() + pad_x)
            ax.set_ylim(ally.min() - pad_y, ally.max() + pad_y)
            ax.set(xlabel=xlab, ylabel=ylab)
            ax.set_title(f"{title}, by target {group_name}", fontsize=10)
            ax.legend(fontsize=7, frameon=False)
    smooth = f"; smoothed over {smooth_bins:g} bins for display" if smooth_bins > 0 else ""
    fig.suptitle(f"State space: PC1 vs PC2 of the data PSTH (model projected on the same PCs{smooth})", fontsize=11)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------- Fano
def fano_comparison(fano_model: np.ndarray, fano_data: np.ndarray, is_excitatory: np.ndarray,
                    bin_ms: float | None = None) -> Figure:
    """Left: per-neuron Fano factor, model vs data (log-log when wide, identity line). Right:
    the two distributions side by side. ``bin_ms``: the count window (labels only)."""
    fm, fd = np.asarray(fano_model, float), np.asarray(fano_data, float)
    exc = np.asarray(is_excitatory, bool)
    ok = np.isfinite(fm) & np.isfinite(fd) & (fm > 0) & (fd > 0)
    fig = new_figure(12, 4.8)
    ax, ax2 = fig.subplots(1, 2)
    for sel, color, name in ((exc & ok, E_COLOR, "E"), (~exc & ok, I_COLOR, "I")):
        ax.scatter(fd[sel], fm[sel], c=color, s=30, alpha=0.8, edgecolors="k", linewidths=0.4,
                   label=f"{name} (n={int(sel.sum())})")
    if ok.any():
        both = np.concatenate([fm[ok], fd[ok], [1.0]])
        lo, hi = both.min(), both.max()
        wide = hi / lo >= 3.0
        lo, hi = (lo / 1.25, hi * 1.25) if wide else (lo - 0.05 * (hi - lo) - 0.01, hi + 0.05 * (hi - lo) + 0.01)
        ax.plot([lo, hi], [lo, hi], color="0.5", ls="--", lw=1, label="model = data")
        ax.axhline(1.0, color="0.7", ls=":", lw=1)
        ax.axvline(1.0, color="0.7", ls=":", lw=1, label="Poisson (F = 1)")
        if wide:
            _log_if_wide(ax.xaxis, ax.set_xscale, both, ratio=1.0)
            _log_if_wide(ax.yaxis, ax.set_yscale, both, ratio=1.0)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
    win = f"{bin_ms:g}-ms " if bin_ms else ""
    ax.set(xlabel=f"Fano factor, data ({win}spike counts)", ylabel=f"Fano factor, model (Poisson {win}counts from rates)",
           title="Per-neuron Fano factor (validation trials)")
    ax.legend(fontsize=8, frameon=False)
    if ok.any():
        both = np.concatenate([fm[ok], fd[ok]])
        wide = both.max() / both.min() >= 3.0
        if wide:
            bins = np.logspace(np.log10(both.min()) - 0.05, np.log10(both.max()) + 0.05, 30)
        else:
            bins = np.linspace(both.min() - 0.02, both.max() + 0.02, 30)
        for vals, color, name in ((fd[ok], DATA_COLOR, "data"), (fm[ok], MODEL_COLOR, "model")):
            ax2.hist(vals, bins=bins, color=color, alpha=0.45, edgecolor=color, histtype="stepfilled",
                     label=f"{name} (median {np.median(vals):.2f})")
            ax2.hist(vals, bins=bins, color=color, histtype="step", lw=1.5)
        ax2.axvline(1.0, color="0.7", ls=":", lw=1)
        if wide:
            _log_if_wide(ax2.xaxis, ax2.set_xscale, both, ratio=1.0)
    ax2.set(xlabel=f"Fano factor ({win}counts, mean over bins)", ylabel="neurons", title="Distributions, side by side")
    ax2.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig
