"""Shared helpers of the task analyses: loading trained runs, PCA, participation ratios,
overlaps, figures and files.

Run folders are those of ``python -m eirnn.train`` (``checkpoints/best.ckpt``,
``last.ckpt``); task checkpoints carry the model's constructor arguments and the task's
parameters (``checkpoint["eirnn_task"]``), so a model is rebuilt without Hydra.
"""
from __future__ import annotations

import importlib
import math
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import torch

from eirnn.errors import UserError
from eirnn.utils import savefig_atomic


class AnalysisError(UserError):
    """Bad input to an analysis (missing run folder, checkpoint without task data): one line."""


# ----------------------------------------------------------------- loading
def _build(spec: dict) -> Any:
    target = str(spec.get("target", ""))
    if not target.startswith("eirnn."):  # only this package's classes are rebuilt from a file
        raise AnalysisError(f"refusing to build {target!r} from a checkpoint (not an eirnn class)")
    module, _, name = target.rpartition(".")
    return getattr(importlib.import_module(module), name)(**spec.get("kwargs", {}))


def load_checkpoint(path: str | Path) -> tuple[torch.nn.Module, dict]:
    """(model in eval mode, task parameters) from a task checkpoint (``TaskModule``)."""
    path = Path(path)
    if not path.is_file():
        raise AnalysisError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # not a torch file, truncated, or holding arbitrary objects
        raise AnalysisError(f"{path}: cannot read the checkpoint ({type(err).__name__})") from err
    info = ckpt.get("eirnn_task") if isinstance(ckpt, dict) else None
    if not info or "model" not in info:
        raise AnalysisError(f"{path}: not a task-RNN checkpoint (no 'eirnn_task' entry; trained with an experiment=... task?)")
    model = _build(info["model"])
    state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict(state)
    model.eval()
    task = dict(info.get("task") or {})
    task["_history"] = info.get("history", [])
    return model, task


def find_checkpoint(run_dir: str | Path, which: str = "best") -> Path:
    """``run_dir/checkpoints/{which}.ckpt`` in the order of every command (``best`` -> ``last`` ->
    ``interrupted``; :func:`eirnn.runs.run_dir.find_checkpoint`)."""
    from eirnn.runs.run_dir import find_checkpoint as _find

    return _find(run_dir, which, error=AnalysisError)


def build_task(task: dict) -> Any:
    """The task's data module (not set up) from the parameters stored in a checkpoint."""
    if "target" not in task:
        raise AnalysisError("checkpoint has no task parameters")
    return _build({"target": task["target"], "kwargs": task.get("kwargs", {})})


# ----------------------------------------------------------- linear algebra
def overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Population overlap ``(1/N) a . b`` of two N-vectors (the theory's sigma_ab)."""
    a, b = np.asarray(a, float).ravel(), np.asarray(b, float).ravel()
    return float(a @ b / a.size)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """``a . b / (|a| |b|)`` (nan when either is zero)."""
    a, b = np.asarray(a, float).ravel(), np.asarray(b, float).ravel()
    den = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / den) if den > 0 else math.nan


def pca(rates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of the covariance of ``rates`` [T, N] (rows = time points).

    Returns ``(eigenvalues [N] descending, eigenvectors [N, N] as columns)``; each eigenvector's
    sign is fixed so that its largest-magnitude entry is positive (deterministic output).
    """
    return eig_cov(np.cov(np.asarray(rates, float), rowvar=False))


def eig_cov(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Descending eigenvalues / column eigenvectors of a symmetric matrix, with the sign rule of :func:`pca`."""
    cov = np.atleast_2d(np.asarray(cov, float))
    vals, vecs = np.linalg.eigh(0.5 * (cov + cov.T))
    order = np.argsort(vals)[::-1]
    vals, vecs = vals[order], vecs[:, order]
    idx = np.argmax(np.abs(vecs), axis=0)
    signs = np.sign(vecs[idx, np.arange(vecs.shape[1])])
    signs[signs == 0] = 1.0
    return vals, vecs * signs


def participation_ratio(v: np.ndarray, eigvecs: np.ndarray, kind: str = "readme",
                        n_components: Optional[int] = None) -> float:
    """Participation ratio of a vector ``v`` [N] over the eigenvectors ``e_i`` (columns of ``eigvecs``).

    With the projections ``c_i = e_i . v`` (over the first ``n_components`` eigenvectors; all by default):

    - ``kind="readme"`` -- exactly the lab's formula (README 004)::

          PR = (sum_i c_i)^2 / sum_i c_i^2

      It uses the SIGNED projections, so it depends on the arbitrary sign of each eigenvector
      (fixed here by :func:`eig_cov`'s rule) and can be anywhere in [0, n]; it is 1 when ``v``
      is aligned with a single eigenvector.
    - ``kind="squared"`` -- the conventional participation ratio, the same formula on the squared
      projections ``p_i = c_i^2`` (the share of ``v``'s squared norm along ``e_i``)::

          PR = (sum_i p_i)^2 / sum_i p_i^2 = (sum_i c_i^2)^2 / sum_i c_i^4

      sign-free, between 1 (one component) and n (spread evenly over all n).

    Both are scale-invariant in ``v``.  NOTE: higher values mean ``v`` is spread over MORE
    components (README 004 says the opposite in one place).
    """
    E = np.asarray(eigvecs, float)
    if n_components is not None:
        E = E[:, : int(n_components)]
    c = E.T @ np.asarray(v, float).ravel()
    if kind == "readme":
        num, den = c.sum() ** 2, (c ** 2).sum()
    elif kind == "squared":
        p = c ** 2
        num, den = p.sum() ** 2, (p ** 2).sum()
    else:
        raise ValueError(f"participation ratio kind must be 'readme' or 'squared', got {kind!r}")
    return float(num / den) if den > 0 else math.nan


# ----------------------------------------------------------------- figures
def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_losses(steps: Sequence[dict], history: Sequence[dict], path: Path,
                title: str = "training and validation loss") -> Path:
    """Training loss per step (thin) and per epoch, validation loss per epoch -> PNG."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    if steps:
        s = [r["step"] for r in steps]
        ax.plot(s, [r["train/loss"] for r in steps], lw=0.6, alpha=0.5, color="C0", label="train (step)")
    if history and steps:
        per_epoch = max(1, len(steps) // max(len(history), 1))
        xs = [(i + 1) * per_epoch for i in range(len(history))]
    else:
        xs = [h["epoch"] + 1 for h in history]
    if history:
        if "train/loss" in history[0]:
            ax.plot(xs, [h.get("train/loss", np.nan) for h in history], "o-", ms=3, lw=1.2, color="C0", label="train (epoch mean)")
        if "val/loss" in history[0]:
            ax.plot(xs, [h.get("val/loss", np.nan) for h in history], "s-", ms=3, lw=1.2, color="C3", label="validation (epoch)")
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("masked MSE")
    ax.grid(alpha=0.3, which="both", lw=0.4)
    ax.legend(frameon=False, fontsize=8, loc="upper right")
    ax.set_title(title)
    fig.tight_layout()
    savefig_atomic(fig, path, dpi=110)
    plt.close(fig)
    return path


def _epoch_means(steps: Sequence[dict], key: str) -> tuple[list[float], list[float]]:
    """(step at the end of each epoch, mean of ``key`` over the epoch's steps)."""
    by: dict[int, list] = {}
    for r in steps:
        if key in r and "epoch" in r:
            by.setdefault(int(r["epoch"]), []).append((r["step"], r[key]))
    xs = [max(s for s, _ in v) for _, v in sorted(by.items())]
    ys = [float(np.nanmean([y for _, y in v])) for _, v in sorted(by.items())]
    return xs, ys


def plot_grad_norms(steps: Sequence[dict], path: Path, title: str = "gradient magnitudes") -> Path:
    """Per-step gradient norm of every trainable parameter (``grad_norm/*`` keys; thin lines) and its
    mean over each epoch (markers, when there are several epochs) -> PNG."""
    plt = _plt()
    keys = sorted({k for r in steps for k in r if k.startswith("grad_norm/")})
    fig, ax = plt.subplots(figsize=(8, 4))
    s = [r["step"] for r in steps]
    alpha = 0.45 if len(steps) <= 1000 else 0.3
    many = False
    for i, k in enumerate(keys):
        name = k.split("/", 1)[1]
        ax.plot(s, [r.get(k, np.nan) for r in steps], lw=0.6, alpha=alpha, color=f"C{i}")
        xs, ys = _epoch_means(steps, k)
        many = len(xs) > 1
        if many:
            ax.plot(xs, ys, "o-", ms=3, lw=1.5, color=f"C{i}", label=f"|dL/d{name}|")
        else:
            ax.plot([], [], color=f"C{i}", lw=1.5, label=f"|dL/d{name}|")
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("gradient norm (before clipping)")
    ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3, which="both", lw=0.4)
    ax.set_title(title + ("\n(thin: every step; dots: epoch mean)" if many else " (every step)"), fontsize=10)
    fig.tight_layout()
    savefig_atomic(fig, path, dpi=110)
    plt.close(fig)
    return path


def plot_member_losses(histories: Sequence[Sequence[dict]], seeds: Sequence[int], path: Path,
                       key: str = "val/loss") -> Path:
    """Every ensemble member's ``key`` per epoch (one line per member, colour = seed; log scale) -> PNG."""
    plt = _plt()
    from matplotlib.colors import Normalize

    fig, ax = plt.subplots(figsize=(7, 4.2))
    norm = Normalize(min(seeds), max(max(seeds), min(seeds) + 1))
    cmap = plt.cm.viridis
    for hist, seed in zip(histories, seeds):
        ax.plot([h["epoch"] + 1 for h in hist], [h.get(key, np.nan) for h in hist], lw=1, alpha=0.85,
                color=cmap(norm(seed)))
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(key)
    ax.grid(alpha=0.3, which="both", lw=0.4)
    ax.set_title(f"{len(seeds)} ensemble members: {key} per epoch")
    sm = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(sm, ax=ax, label="seed")
    fig.tight_layout()
    savefig_atomic(fig, path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------- files
def write_json(path: Path, obj: Any) -> Path:
    from eirnn.utils import write_json_atomic

    write_json_atomic(Path(path), obj)
    return Path(path)


def cli_main(run: Any, argv: Optional[Iterable[str]] = None) -> int:
    """Run ``run(argv)`` (default ``sys.argv[1:]``): 0, or 2 after one line for a :class:`UserError`
    (:func:`eirnn.errors.cli_main`: AnalysisError, DiskFullError, ...)."""
    import sys

    from eirnn import errors

    @errors.cli_main
    def main(args: list) -> int:
        run(args)
        return 0

    return main(list(sys.argv[1:] if argv is None else argv))
