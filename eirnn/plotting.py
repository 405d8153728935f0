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


#: colours of task-event markers (vertical lines) in PSTH figures
EVENT_COLORS = ("#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def psth_grid_figure(
    psth_data: np.ndarray,
    psth_model: np.ndarray,
    per_neuron_corr: np.ndarray,
    is_excitatory: np.ndarray | None = None,
    n_neurons: int = 8,
    time_ms: np.ndarray | None = None,
    title: str = "",
    events_ms: dict[str, float] | None = None,
) -> Figure:
    """Model vs data PSTHs (``[T, N]`` each) for the best and worst fitted neurons.

    x: ``time_ms`` (ms; bins when not given); ``events_ms`` (``{name: ms}``) draws a dashed
    vertical line per task event. One legend for the figure: data (grey), model E (red),
    model I (blue), and the events.
    """
    from matplotlib.lines import Line2D

    corr = np.asarray(per_neuron_corr, dtype=float)
    order = np.argsort(np.where(np.isfinite(corr), -corr, np.inf))
    finite = order[np.isfinite(corr[order])]
    half = max(1, n_neurons // 2)
    picks = list(finite[:half]) + [i for i in finite[::-1][:half] if i not in finite[:half]]
    picks = picks[:n_neurons] or list(range(min(n_neurons, psth_data.shape[1])))
    if is_excitatory is not None and len(picks) > 1:  # show both types: the best neuron of a missing type
        exc_all = np.asarray(is_excitatory, dtype=bool)
        for want in (True, False):
            if not any(exc_all[i] == want for i in picks):
                cand = [i for i in finite if exc_all[i] == want]
                if cand:
                    picks[-1 if want is False else 0] = cand[0]
    cols = min(4, len(picks))
    rows = int(np.ceil(len(picks) / cols))
    fig = new_figure(3.2 * cols, 2.4 * rows + 0.6)
    t = np.arange(psth_data.shape[0]) if time_ms is None else np.asarray(time_ms)
    events = {k: float(v) for k, v in (events_ms or {}).items() if v is not None and np.isfinite(v)}
    types = set()
    for k, n in enumerate(picks):
        ax = fig.add_subplot(rows, cols, k + 1)
        exc = True if is_excitatory is None else bool(is_excitatory[n])
        types.add(exc)
        ax.plot(t, psth_data[:, n], color="0.3", lw=1.2)
        ax.plot(t, psth_model[:, n], color=E_COLOR if exc else I_COLOR, lw=1.2)
        for j, at in enumerate(events.values()):
            ax.axvline(at, color=EVENT_COLORS[j % len(EVENT_COLORS)], lw=0.8, ls="--", alpha=0.8)
        ax.set_title(f"neuron {n} ({'E' if exc else 'I'}) r={corr[n]:.2f}", fontsize=9)
        ax.set_xlabel("time (ms)" if time_ms is not None else "time bin", fontsize=8)
        ax.set_ylabel("rate (sp/s)", fontsize=8)
        ax.tick_params(labelsize=7)
    handles = [Line2D([], [], color="0.3", lw=1.2, label="data")]
    if is_excitatory is None or True in types:
        handles.append(Line2D([], [], color=E_COLOR, lw=1.2, label="model (E neuron)"))
    if is_excitatory is not None and False in types:
        handles.append(Line2D([], [], color=I_COLOR, lw=1.2, label="model (I neuron)"))
    handles += [Line2D([], [], color=EVENT_COLORS[j % len(EVENT_COLORS)], lw=0.8, ls="--", label=name)
                for j, name in enumerate(events)]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.6 / (2.4 * rows + 0.6), 1, 1))
    return fig
