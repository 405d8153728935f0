"""Analysis of a trained low-rank RNN on the contextual switch task.

``python -m eirnn.analysis.context_switch RUN_DIR [--checkpoint best|last] [--out DIR]``
(also run at the end of ``experiment=context_switch*`` trainings, into ``RUN_DIR/analysis``).

With ``phi = tanh(x)`` [cond, T, N] on the 8 noise-free conditions (context x sign1 x sign2):

- projections (``proj_M.npy``, ``proj_N.npy``, ``proj_w.npy`` [8, T, R or 1]): ``phi M / N``,
  ``kappa = phi N / N`` (the latent variables: the recurrent input is ``g C phi + M kappa``) and
  ``phi w / N`` (the readout minus its bias); ``readout.npy`` [8, T]; ``conditions.json``;
- overlaps ``sigma_ab = a . b / N`` between all of ``m_r, n_r, B_stim1, B_stim2, B_ctx1,
  B_ctx2, w`` (``overlap_matrix.npy`` + labels), ``sigma_mn`` [R, R] = ``M^T N / N`` and the
  eigenvalues of ``N^T M / N`` (the non-zero eigenvalues of the structured part ``M N^T / N``);
- gain-modulated overlaps per context: with the gains ``phi'(x_i) = 1 - tanh(x_i)^2`` at the end
  of the burn-in of each context, ``sigma~_{n_r, I} = sum_i n_ri I_i phi'(x_i) / N`` for the two
  stimulus input vectors -- the mean-field theory's effective input overlaps, through which the
  contextual inputs select the relevant stimulus (the relevant one should dominate);
- accuracy on fresh noisy trials (overall and per context).

Writes ``analysis.json`` (all scalars), ``trajectories.png``, ``overlaps.png`` and the arrays.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eirnn.utils import np_save_atomic, savefig_atomic

from eirnn.analysis.common import (AnalysisError, build_task, cli_main, find_checkpoint, load_checkpoint,
                                   write_json)
from eirnn.data import context_switch as cs

VECTOR_NAMES = ("stim1", "stim2", "ctx1", "ctx2")


def _vectors(model) -> dict[str, np.ndarray]:
    M, Nv = model.M.detach().double().numpy(), model.N.detach().double().numpy()
    B, w = model.B.detach().double().numpy(), model.w.detach().double().numpy()
    vec = {}
    for r in range(M.shape[1]):
        vec[f"m{r + 1}"] = M[:, r]
    for r in range(Nv.shape[1]):
        vec[f"n{r + 1}"] = Nv[:, r]
    for j in range(B.shape[1]):
        vec[f"B_{VECTOR_NAMES[j] if j < len(VECTOR_NAMES) else j}"] = B[:, j]
    for j in range(w.shape[1]):
        vec["w" if w.shape[1] == 1 else f"w{j + 1}"] = w[:, j]
    return vec


def overlap_quantities(model, gains: dict[int, np.ndarray] | None = None) -> dict[str, Any]:
    """Overlap matrix, ``sigma_mn``, its eigenvalues and (given per-context gains [N]) the
    gain-modulated overlaps of the ``n_r`` with the stimulus input vectors."""
    vec = _vectors(model)
    names = list(vec)
    V = np.stack([vec[k] for k in names], 1)
    n_units = V.shape[0]
    mat = V.T @ V / n_units
    M, Nv = model.M.detach().double().numpy(), model.N.detach().double().numpy()
    sigma_mn = M.T @ Nv / n_units
    eig = np.linalg.eigvals(Nv.T @ M / n_units)
    out: dict[str, Any] = {
        "labels": names, "matrix": mat, "sigma_mn": sigma_mn,
        "structured_eigenvalues": sorted(eig.tolist(), key=lambda z: -abs(z)),
        "pairs": {f"{a}.{b}": float(mat[i, j]) for i, a in enumerate(names) for j, b in enumerate(names) if j > i},
    }
    if gains:
        eff = {}
        for c, gain in gains.items():
            row = {}
            for r in range(M.shape[1]):
                for s in ("stim1", "stim2"):
                    row[f"n{r + 1}.{s}"] = float(np.sum(Nv[:, r] * vec[f"B_{s}"] * gain) / n_units)
            rel, irr = (("stim1", "stim2") if c == 1 else ("stim2", "stim1"))
            nrel = np.sqrt(sum(row[f"n{r + 1}.{rel}"] ** 2 for r in range(M.shape[1])))
            nirr = np.sqrt(sum(row[f"n{r + 1}.{irr}"] ** 2 for r in range(M.shape[1])))
            row["relevant_norm"], row["irrelevant_norm"] = float(nrel), float(nirr)
            row["mean_gain"] = float(np.mean(gain))
            eff[f"ctx{c}"] = row
        out["gain_modulated"] = eff
    return out


@torch.no_grad()
def analyze(model, task: dict, out_dir: str | Path, n_test: int = 400, test_seed: int = 12345) -> dict[str, Any]:
    """Run the analysis (see the module docstring); returns the summary written to ``analysis.json``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dm = build_task(task)
    if not isinstance(dm, cs.ContextSwitchDataModule):
        raise AnalysisError(f"the run's task is {type(dm).__name__}, not the contextual switch task")
    params, lay = dm.params, dm.layout
    model = model.cpu().float().eval()
    ctx, signs = cs.all_conditions()
    clean = cs.make_trials(ctx, signs, **{k: v for k, v in params.items()})  # rng=None: noise-free
    res = model(clean["inputs"], return_states=True)
    x = res.states.double().numpy()
    y = res.output[..., 0].double().numpy()
    phi = np.tanh(x)
    n_units = phi.shape[-1]
    M, Nv = model.M.double().numpy(), model.N.double().numpy()
    w = model.w.double().numpy()
    proj_M, proj_N, proj_w = phi @ M / n_units, phi @ Nv / n_units, phi @ w / n_units
    burn_end = max(lay["stim_start"] - 1, 0)
    gains = {c: (1.0 - phi[ctx == c, burn_end] ** 2).mean(0) for c in (1, 2)}
    ov = overlap_quantities(model, gains)

    test = cs.random_trials(int(n_test), np.random.default_rng(test_seed), **params)
    yt = model(test["inputs"]).output
    correct = (cs.choices(yt, test["mask"]) == test["label"]).double().numpy()
    acc = {"accuracy": float(correct.mean())}
    for c in (1, 2):
        acc[f"acc_ctx{c}"] = float(correct[test["context"].numpy() == c].mean())
    clean_choice = cs.choices(res.output, clean["mask"]).numpy()

    np_save_atomic(out_dir / "proj_M.npy", proj_M.astype(np.float32))
    np_save_atomic(out_dir / "proj_N.npy", proj_N.astype(np.float32))
    np_save_atomic(out_dir / "proj_w.npy", proj_w.astype(np.float32))
    np_save_atomic(out_dir / "readout.npy", y.astype(np.float32))
    np_save_atomic(out_dir / "overlap_matrix.npy", ov["matrix"])
    np_save_atomic(out_dir / "sigma_mn.npy", ov["sigma_mn"])
    conditions = [{"index": i, "context": int(c), "sign1": int(s[0]), "sign2": int(s[1]),
                   "relevant_sign": int(s[c - 1]), "clean_choice": int(clean_choice[i])}
                  for i, (c, s) in enumerate(zip(ctx, signs))]
    write_json(out_dir / "conditions.json", {"conditions": conditions, "dt": params["dt"],
                                             "stim_start_bin": lay["stim_start"], "decision_start_bin": lay["decision_start"]})
    eig = ov["structured_eigenvalues"]
    summary = {
        "test_trials": int(n_test), "test_seed": int(test_seed), **acc,
        "clean_conditions_correct": int(sum(c["clean_choice"] == c["relevant_sign"] for c in conditions)),
        "n_units": int(n_units), "rank": int(M.shape[1]), "parameters": model.n_parameters(),
        "overlap_labels": ov["labels"], "overlaps": ov["pairs"], "sigma_mn": ov["sigma_mn"].tolist(),
        "structured_eigenvalues": [{"real": float(np.real(z)), "imag": float(np.imag(z))} for z in eig],
        "gain_modulated_overlaps": ov["gain_modulated"],
        "headline": f"accuracy {acc['accuracy']:.3f} (ctx1 {acc['acc_ctx1']:.3f}, ctx2 {acc['acc_ctx2']:.3f})",
    }
    write_json(out_dir / "analysis.json", summary)
    _plot_trajectories(out_dir / "trajectories.png", ctx, signs, proj_M, proj_N, y, params, lay)
    _plot_overlaps(out_dir / "overlaps.png", ov)
    return summary


def _style(c: int, s: np.ndarray):
    rel = s[c - 1]
    return dict(color="C3" if rel > 0 else "C0", ls="-" if c == 1 else "--")


def _plot_trajectories(path, ctx, signs, proj_M, proj_N, y, params, lay) -> None:
    from eirnn.analysis.common import _plt

    plt = _plt()
    t = (np.arange(y.shape[1]) + 1) * params["dt"]
    R = proj_M.shape[-1]
    fig, axes = plt.subplots(2, 2, figsize=(9, 7.5))
    for i, (c, s) in enumerate(zip(ctx, signs)):
        st = _style(int(c), s)
        lab = f"ctx{c} s1{'+' if s[0] > 0 else '-'} s2{'+' if s[1] > 0 else '-'}"
        for ax, P, name in ((axes[0, 0], proj_M, "m"), (axes[0, 1], proj_N, "n")):
            if R >= 2:
                ax.plot(P[i, :, 0], P[i, :, 1], lw=1.2, **st, label=lab)
                ax.plot(P[i, -1, 0], P[i, -1, 1], "o", color=st["color"], ms=4)
            else:
                ax.plot(t, P[i, :, 0], lw=1.2, **st, label=lab)
        axes[1, 0].plot(t, y[i], lw=1.2, **st, label=lab)
        axes[1, 1].plot(t, proj_N[i, :, 0], lw=1.2, **st)
    if R >= 2:
        axes[0, 0].set(xlabel=r"$\phi\cdot m_1/N$", ylabel=r"$\phi\cdot m_2/N$", title="activity in the plane of M")
        axes[0, 1].set(xlabel=r"$\kappa_1=\phi\cdot n_1/N$", ylabel=r"$\kappa_2=\phi\cdot n_2/N$",
                       title="latent variables (plane of N)")
    else:
        axes[0, 0].set(xlabel="time (tau)", ylabel=r"$\phi\cdot m_1/N$")
        axes[0, 1].set(xlabel="time (tau)", ylabel=r"$\kappa_1$")
    t_stim, t_dec = lay["stim_start"] * params["dt"], lay["decision_start"] * params["dt"]
    for ax in (axes[1, 0], axes[1, 1]):
        ax.axvline(t_stim, color="0.6", lw=0.8)
        ax.axvspan(t_dec, t[-1], color="0.9", zorder=0)
        ax.set_xlabel("time (tau)")
    axes[1, 0].set(ylabel=r"readout $y = w\cdot\phi/N + b$", title="readout (grey: decision window)")
    axes[1, 1].set(ylabel=r"$\kappa_1$", title="latent variable 1 over time")
    axes[1, 0].legend(fontsize=7, frameon=False, ncol=2)
    fig.suptitle("red/blue: relevant sign +/-;  solid: context 1, dashed: context 2", fontsize=9)
    fig.tight_layout()
    savefig_atomic(fig, path, dpi=110)
    plt.close(fig)


def _plot_overlaps(path, ov) -> None:
    from eirnn.analysis.common import _plt

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    mat, labels = ov["matrix"], ov["labels"]
    lim = np.abs(mat).max() or 1.0
    im = axes[0].imshow(mat, cmap="RdBu_r", vmin=-lim, vmax=lim)
    axes[0].set_xticks(range(len(labels)), labels, rotation=60, fontsize=8)
    axes[0].set_yticks(range(len(labels)), labels, fontsize=8)
    axes[0].set_title(r"overlaps $\sigma_{ab} = a\cdot b/N$")
    fig.colorbar(im, ax=axes[0], fraction=0.046)
    gm = ov.get("gain_modulated", {})
    keys = [k for k in next(iter(gm.values()), {}) if k.startswith("n")]
    xs = np.arange(len(keys))
    for j, (c, row) in enumerate(gm.items()):
        axes[1].bar(xs + 0.4 * j - 0.2, [row[k] for k in keys], width=0.4, label=c)
    axes[1].axhline(0, color="0.3", lw=0.6)
    axes[1].set_xticks(xs, keys, rotation=30, fontsize=8)
    axes[1].set_title("gain-modulated overlaps of n with the stimulus inputs")
    axes[1].legend(frameon=False)
    fig.tight_layout()
    savefig_atomic(fig, path, dpi=110)
    plt.close(fig)


def run(argv: list[str]) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m eirnn.analysis.context_switch", description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", help="a training run folder of experiment=context_switch*")
    ap.add_argument("--checkpoint", default="best", choices=("best", "last"))
    ap.add_argument("--out", default=None, help="output folder (default RUN_DIR/analysis)")
    ap.add_argument("--n-test", type=int, default=400, help="noisy test trials for the accuracy")
    args = ap.parse_args(argv)
    model, task = load_checkpoint(find_checkpoint(args.run_dir, args.checkpoint))
    out = Path(args.out) if args.out else Path(args.run_dir) / "analysis"
    summary = analyze(model, task, out, n_test=args.n_test)
    print(f"{summary['headline']}; sigma_mn = {np.round(np.array(summary['sigma_mn']), 3).tolist()}; written to {out}")
    return summary


if __name__ == "__main__":
    raise SystemExit(cli_main(run))
