"""Analysis of the System A models of a sweep (lab README 004).

``python -m eirnn.analysis.system_a SWEEP_DIR [--checkpoint last|best] [--pr readme|squared]
[--n-pcs K] [--pc-rtol RTOL] [--out DIR]`` where SWEEP_DIR is a ``--multirun`` folder of ``experiment=system_a*``
(one sub-folder per seed), an ``ensemble.size=K`` run (its ``members/m{k}/``) or a single run folder.

For every model (its task parameters come from its checkpoint):

- precision at each test duration (``eval_durations``, 50/150/300 ms; pulse at ``eval_onset``):
  the mean squared error over the bins where the target is > 0 (the README's ``mse_loss2``),
  and their mean (lower is better);
- input-output weight correlation ``I . w / (|I| |w|)``;
- input participation ratio: PR of ``I`` over the principal components of spontaneous
  activity -- no input, from a random initial state h ~ N(0, 1) (the model's own ``h0`` when it
  is random; from ``h0 = 0`` the network would stay silent), rates ``tanh(h)`` over
  ``[eval_onset / 6, eval_onset)`` (the first sixth discarded as a transient);
- output participation ratio: PR of ``w`` over the principal components of the memory period:
  the covariance of the rates over ``[cost_onset, end)`` averaged over the test trials (one per
  duration), then diagonalised (the README's ``pca_trials``);

with ``PR = (sum_i c_i)^2 / sum_i c_i^2``, ``c_i = e_i . v`` exactly as README 004 states
(``--pr readme``), and the conventional PR on the squared projections (``--pr squared``); both
go to the CSV, the figure shows the chosen one.  See
:func:`eirnn.analysis.common.participation_ratio`.  The sums run over the components that carry
variance, eigenvalue ``> 1e-6 x`` the largest (``--pc-rtol``; README 004 uses all of them): the
remaining eigenvectors span a zero-variance subspace whose basis is arbitrary, and including
them made the PRs change with the float round-off of the recurrence.  The CSV gives the counts
(``n_pcs_spont``, ``n_pcs_memory``).

Writes ``system_a_summary.csv``, ``system_a_summary.json``, ``performance.png`` (precision
against the three quantities: weight correlation blue, input PR green, output PR red; with the
``--pr`` formula), the same figure with the other PR formula (``performance_squared.png`` or
``performance_readme.png``) and one ``evaluation/seed_<s>.png`` per model (output vs target at
the test durations).
"""
from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from eirnn.utils import atomic_write, savefig_atomic

from eirnn.analysis.common import (AnalysisError, build_task, cli_main, cosine, eig_cov, find_checkpoint,
                                   load_checkpoint, participation_ratio, write_json, _plt)
from eirnn.data.system_a import SystemADataModule


def find_runs(sweep_dir: str | Path) -> list[Path]:
    """The model folders under ``sweep_dir``: run folders (with ``checkpoints/``) of a ``--multirun``,
    the members (``members/m{k}/``) of an ``ensemble.size=K`` run, or ``sweep_dir`` itself."""
    root = Path(sweep_dir)
    if not root.is_dir():
        raise AnalysisError(f"{root}: sweep folder not found")
    if (root / "checkpoints").is_dir() and not (root / "members").is_dir():
        return [root]
    found = {p.parent.parent for p in root.rglob("checkpoints/*.ckpt")}
    runs = [r for r in found if not (r / "members").is_dir()]  # an ensemble run: its members are the models

    def order(p: Path):
        digits = p.name.lstrip("m")
        return (len(p.parts), str(p.parent), int(digits) if digits.isdigit() else 0, p.name)

    runs.sort(key=order)
    if not runs:
        raise AnalysisError(f"{root}: no run folders with checkpoints/ (expected a --multirun folder of "
                            f"experiment=system_a or an ensemble.size=K run)")
    return runs


@torch.no_grad()
def precision(model, dm: SystemADataModule, durations=None) -> tuple[dict[float, float], dict[str, np.ndarray]]:
    """Per-duration precision (MSE where target > 0) and the test trials' outputs / rates."""
    durations = list(dm.eval_durations if durations is None else durations)
    trials = [dm.eval_trials(d, 1) for d in durations]
    inputs = torch.cat([t["inputs"] for t in trials])
    target = torch.cat([t["target"] for t in trials])
    res = model(inputs, return_states=True)
    out = res.output
    prec = {}
    for i, d in enumerate(durations):
        sel = target[i] > 0
        prec[float(d)] = float(((out[i] - target[i])[sel] ** 2).mean()) if sel.any() else math.nan
    return prec, {"output": out[..., 0].numpy(), "target": target[..., 0].numpy(), "inputs": inputs[..., 0].numpy(),
                  "rates": torch.tanh(res.states).double().numpy()}


@torch.no_grad()
def spontaneous_rates(model, dm: SystemADataModule, seed: int = 0) -> np.ndarray:
    """Rates [T, N] without input from a random initial state, over ``[eval_onset/6, eval_onset)``."""
    n_steps = max(int(round(dm.eval_onset / dm.dt)), 2)
    h0 = model.h0 if model.config.get("h0") == "random" else torch.randn(model.n_units, generator=torch.Generator().manual_seed(seed))
    r = model.rates(torch.zeros(1, n_steps, model.config["n_inputs"]), h0=h0)[0].double().numpy()
    return r[n_steps // 6:]


PC_RTOL = 1e-6


def n_variance_components(eigvals: np.ndarray, rtol: float = PC_RTOL, n_max: Optional[int] = None) -> int:
    """How many principal components carry variance: eigenvalues ``> rtol * largest`` (all when
    ``rtol <= 0``), at most ``n_max``.

    The rest span a subspace of (numerically) zero variance in which any orthonormal basis is
    an equally valid set of eigenvectors, so projections onto them -- and any participation
    ratio that includes them -- are arbitrary (they changed with the float round-off of the
    recurrence).  ``1e-6`` is about ten times float32's relative precision.
    """
    ev = np.asarray(eigvals, float)
    n = int((ev > float(rtol) * ev[0]).sum()) if rtol > 0 and ev.size and ev[0] > 0 else int(ev.size)
    return max(1, min(n, int(n_max))) if n_max is not None else max(1, n)


def model_quantities(model, dm: SystemADataModule, n_pcs: Optional[int] = None, spont_seed: int = 0,
                     pc_rtol: float = PC_RTOL) -> dict[str, Any]:
    """All per-model numbers of the module docstring (+ the arrays for the figures under ``_arrays``).

    The participation ratios use the first :func:`n_variance_components` components of each PCA
    (``pc_rtol``; ``n_pcs`` caps the count).
    """
    model = model.cpu().float().eval()
    prec, arrays = precision(model, dm)
    I = model.I.detach().double().numpy()[:, 0]
    w = model.w.detach().double().numpy()[:, 0]
    spont = spontaneous_rates(model, dm, spont_seed)
    v_spont, e_spont = eig_cov(np.cov(spont, rowvar=False))
    c0 = int(round(dm.params["cost_onset"] / dm.dt))
    covs = [np.cov(r[c0:], rowvar=False) for r in arrays["rates"]]
    v_mem, e_mem = eig_cov(np.mean(covs, 0))
    k_spont, k_mem = n_variance_components(v_spont, pc_rtol, n_pcs), n_variance_components(v_mem, pc_rtol, n_pcs)
    row = {f"precision_{d:g}": v for d, v in prec.items()}
    row["precision_mean"] = float(np.mean(list(prec.values())))
    row["weight_corr"] = cosine(I, w)
    for kind in ("readme", "squared"):
        row[f"I_PR_{kind}"] = participation_ratio(I, e_spont, kind, k_spont)
        row[f"w_PR_{kind}"] = participation_ratio(w, e_mem, kind, k_mem)
    row["n_pcs_spont"], row["n_pcs_memory"] = k_spont, k_mem
    row["spont_rate_std"] = float(spont.std())
    row["_arrays"] = arrays
    return row


def _plot_eval(path: Path, arrays: dict, durations, dt: float, title: str, prec: Optional[dict] = None,
               cost_onset: Optional[float] = None) -> None:
    plt = _plt()
    t = np.arange(arrays["output"].shape[1]) * dt
    fig, ax = plt.subplots(figsize=(7, 3.5))
    if cost_onset is not None:
        ax.axvspan(cost_onset, t[-1], color="0.92", zorder=0, label="cost period")
    for i, d in enumerate(durations):
        tg = np.where(arrays["target"][i] > 0, arrays["target"][i], np.nan)
        mse = "" if not prec or float(d) not in prec else f" (precision {prec[float(d)]:.3g})"
        ax.plot(t, arrays["output"][i], color=f"C{i}", lw=1, label=f"output, {d:g} ms pulse{mse}")
        ax.plot(t, tg, color=f"C{i}", lw=2, ls="--", alpha=0.7)
        ax.plot(t, arrays["inputs"][i] * 0.1, color=f"C{i}", lw=0.8, alpha=0.5)
    ax.set(xlabel="time (ms)", ylabel="output", title=title + "  (dashed: target; thin: input x 0.1)")
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    savefig_atomic(fig, path, dpi=100)
    plt.close(fig)


def _plain_log_ticks(ax) -> None:
    """Log-scale y ticks written as plain numbers (0.05, 0.1, 0.2, ...), not 5x10^-2."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fmt = FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(fmt)
    lo, hi = ax.get_ylim()
    if hi / lo < 30:  # within ~1.5 decades: also label 2x and 5x
        ax.yaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
        ax.yaxis.set_minor_formatter(fmt)
    else:
        ax.yaxis.set_minor_formatter(NullFormatter())


def plot_performance(path: Path, rows: list[dict], pr: str = "readme") -> None:
    """Precision (mean over durations) against weight correlation, input PR, output PR."""
    plt = _plt()
    y = np.array([r["precision_mean"] for r in rows])
    specs = (("weight_corr", "input-output weight correlation  I.w / (|I| |w|)", "tab:blue"),
             (f"I_PR_{pr}", f"input PR on spontaneous-activity PCs ({pr})", "tab:green"),
             (f"w_PR_{pr}", f"output PR on memory-period PCs ({pr})", "tab:red"))
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2), sharey=True)
    for ax, (key, label, color) in zip(axes, specs):
        x = np.array([r[key] for r in rows], dtype=float)
        ax.scatter(x, y, color=color, s=30, edgecolor="k", lw=0.4, zorder=3)
        for r, xi, yi in zip(rows, x, y):
            if np.isfinite(xi) and np.isfinite(yi):
                ax.annotate(str(r["seed"]), (xi, yi), xytext=(3, 3), textcoords="offset points", fontsize=7,
                            color="0.3")
        ok = np.isfinite(x) & np.isfinite(y)
        if ok.sum() >= 3 and np.std(x[ok]) > 0 and np.std(y[ok]) > 0:
            ax.set_title(f"Pearson r = {np.corrcoef(x[ok], y[ok])[0, 1]:.2f} (n = {int(ok.sum())})", fontsize=10)
        ax.set_xlabel(label, fontsize=9)
        ax.grid(alpha=0.3, which="both", lw=0.4)
    axes[0].set_ylabel("precision: MSE where target > 0\n(mean over test durations; lower = better)")
    if np.all(y[np.isfinite(y)] > 0):
        axes[0].set_yscale("log")
        _plain_log_ticks(axes[0])
    fig.suptitle(f"System A: {len(rows)} models (labels: seed)")
    fig.tight_layout()
    savefig_atomic(fig, path, dpi=110)
    plt.close(fig)


def analyze_sweep(sweep_dir: str | Path, out_dir: Optional[str | Path] = None, checkpoint: str = "last",
                  pr: str = "readme", n_pcs: Optional[int] = None, pc_rtol: float = PC_RTOL) -> list[dict]:
    """Analyse every run of ``sweep_dir``; returns the CSV rows."""
    if pr not in ("readme", "squared"):
        raise AnalysisError(f"--pr must be readme or squared, got {pr!r}")
    runs = find_runs(sweep_dir)
    out = Path(out_dir) if out_dir else Path(sweep_dir)
    (out / "evaluation").mkdir(parents=True, exist_ok=True)
    rows = []
    for run in runs:
        ckpt = find_checkpoint(run, checkpoint)
        model, task = load_checkpoint(ckpt)
        dm = build_task(task)
        if not isinstance(dm, SystemADataModule):
            raise AnalysisError(f"{ckpt}: the run's task is {type(dm).__name__}, not System A")
        q = model_quantities(model, dm, n_pcs, pc_rtol=pc_rtol)
        arrays = q.pop("_arrays")
        seed = int(model.config.get("seed", -1))
        hist = task.get("_history") or [{}]
        row = {"seed": seed, "run_dir": str(run), "checkpoint": ckpt.name, "epochs": len(hist),
               "final_val_loss": hist[-1].get("val/loss", math.nan), **q}
        rows.append(row)
        prec = {float(d): q[f"precision_{d:g}"] for d in dm.eval_durations}
        _plot_eval(out / "evaluation" / f"seed_{seed}.png", arrays, dm.eval_durations, dm.dt, f"seed {seed}", prec,
                   dm.params["cost_onset"])
    rows.sort(key=lambda r: r["seed"])
    keys = list(rows[0].keys())
    def write_csv(f) -> None:
        wr = csv.DictWriter(f, fieldnames=keys)
        wr.writeheader()
        wr.writerows(rows)

    atomic_write(out / "system_a_summary.csv", write_csv, mode="w")
    write_json(out / "system_a_summary.json", {"n_models": len(rows), "pr": pr, "n_pcs": n_pcs, "pc_rtol": pc_rtol,
                                                     "models": rows})
    plot_performance(out / "performance.png", rows, pr)
    other = "squared" if pr == "readme" else "readme"
    plot_performance(out / f"performance_{other}.png", rows, other)
    return rows


def run(argv: list[str]) -> list[dict]:
    ap = argparse.ArgumentParser(prog="python -m eirnn.analysis.system_a", description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep_dir", help="--multirun folder or ensemble.size=K run of experiment=system_a (or one run)")
    ap.add_argument("--checkpoint", default="last", choices=("last", "best"),
                    help="last = the model after all epochs (default), best = lowest val/loss")
    ap.add_argument("--pr", default="readme", choices=("readme", "squared"), help="PR shown in the figure")
    ap.add_argument("--n-pcs", type=int, default=None, help="use at most the first K principal components")
    ap.add_argument("--pc-rtol", type=float, default=PC_RTOL,
                    help="use the components with eigenvalue > RTOL x the largest (default 1e-6; 0 = all, as README 004)")
    ap.add_argument("--out", default=None, help="output folder (default SWEEP_DIR)")
    args = ap.parse_args(argv)
    if args.pc_rtol < 0:
        raise AnalysisError(f"--pc-rtol must be >= 0, got {args.pc_rtol}")
    rows = analyze_sweep(args.sweep_dir, args.out, args.checkpoint, args.pr, args.n_pcs, args.pc_rtol)
    out = Path(args.out) if args.out else Path(args.sweep_dir)
    prec = np.array([r["precision_mean"] for r in rows])
    print(f"{len(rows)} models; mean precision {np.nanmean(prec):.4g} (min {np.nanmin(prec):.4g}, max {np.nanmax(prec):.4g}); "
          f"written {out / 'system_a_summary.csv'} and {out / 'performance.png'}")
    return rows


if __name__ == "__main__":
    raise SystemExit(cli_main(run))
