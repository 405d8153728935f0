"""Figures shared by TensorBoard logging and run reports (no pyplot state: safe headless)."""
from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

E_COLOR = "#d62728"  # excitatory: red
I_COLOR = "#1f77b4"  # inhibitory: blue


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def psth_grid_figure(
    psth_data: np.ndarray,
    psth_model: np.ndarray,
    per_neuron_corr: np.ndarray,
    is_excitatory: np.ndarray | None = None,
    n_neurons: int = 8,
    time_ms: np.ndarray | None = None,
    title: str = "",
) -> Figure:
    """Model vs data PSTHs (``[T, N]`` each) for the best and worst fitted neurons."""
    corr = np.asarray(per_neuron_corr, dtype=float)
    order = np.argsort(np.where(np.isfinite(corr), -corr, np.inf))
    finite = order[np.isfinite(corr[order])]
    half = max(1, n_neurons // 2)
    picks = list(finite[:half]) + [i for i in finite[::-1][:half] if i not in finite[:half]]
    picks = picks[:n_neurons] or list(range(min(n_neurons, psth_data.shape[1])))
    cols = min(4, len(picks))
    rows = int(np.ceil(len(picks) / cols))
    fig = new_figure(3.2 * cols, 2.4 * rows)
    t = np.arange(psth_data.shape[0]) if time_ms is None else np.asarray(time_ms)
    for k, n in enumerate(picks):
        ax = fig.add_subplot(rows, cols, k + 1)
        exc = True if is_excitatory is None else bool(is_excitatory[n])
        ax.plot(t, psth_data[:, n], color="0.3", lw=1.2, label="data")
        ax.plot(t, psth_model[:, n], color=E_COLOR if exc else I_COLOR, lw=1.2, label="model")
        ax.set_title(f"neuron {n} ({'E' if exc else 'I'}) r={corr[n]:.2f}", fontsize=9)
        ax.set_xlabel("time (ms)" if time_ms is not None else "time bin", fontsize=8)
        ax.set_ylabel("rate (sp/s)", fontsize=8)
        ax.tick_params(labelsize=7)
        if k == 0:
            ax.legend(fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
