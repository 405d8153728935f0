"""Fit a trained model's spike readout on its training trials (:mod:`eirnn.models.readout`).

``python -m eirnn.fit_readout RUN_DIR [--checkpoint best last] [--noise-draws 10]``

For each checkpoint: the model's expected rates for the run's *training* trials (the mean
over ``noise_draws`` noise draws, as :mod:`eirnn.evaluate` predicts), then per recorded
neuron the Poisson maximum-likelihood ``(gain, offset)`` of
``lambda = max(gain r + offset, floor)`` against their spike counts
(:func:`eirnn.calibration.fit_affine_calibration`), written into the checkpoint (atomic
replace; the network's weights are untouched). No validation trial is looked at.
``eirnn.train`` does this at the end of every fit of recorded data
(``fit_spike_readout: true``, ``conf/train.yaml``); this command does it for runs trained
before, or again.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Sequence

import numpy as np

__all__ = ["fit_spike_readout", "fit_checkpoint_readouts", "main"]


def fit_spike_readout(module, dm, noise_draws: int = 10) -> Dict[str, Any]:
    """Fit ``module.model.spike_readout`` on ``dm``'s training trials; returns a summary."""
    from eirnn.baselines import TrialSet
    from eirnn.calibration import fit_affine_calibration
    from eirnn.evaluate import predict_expected_rates

    readout = module.model.spike_readout
    train = TrialSet.from_tensors(dm.tensors("train"), dm.session, dm.bin_size_ms)
    pred, _ = predict_expected_rates(module, dm.tensors("train"), dm.batch_size, noise_draws)
    cal = fit_affine_calibration(pred, train.rates, train.mask, dm.bin_size_ms, floor=readout.floor)
    readout.set_affine(cal.gain, cal.offset)
    g = np.asarray(cal.gain)
    return {"n_train_trials": int(train.n_trials), "noise_draws": int(noise_draws),
            "gain_median": float(np.median(g)), "gain_range": [float(g.min()), float(g.max())],
            "offset_median_hz": float(np.median(cal.offset)),
            "gain": [float(x) for x in g], "offset_hz": [float(x) for x in cal.offset]}


def _save_atomic(obj: Any, path: Path) -> None:
    from eirnn.utils import torch_save_atomic

    torch_save_atomic(obj, path)


def fit_checkpoint_readouts(cfg, dm, paths: Iterable[Path], noise_draws: int = 10) -> Dict[str, Any]:
    """Fit the readout of each checkpoint file in ``paths`` and write it back into the file."""
    import torch

    from eirnn.evaluate import load_module

    out: Dict[str, Any] = {}
    for path in paths:
        path = Path(path)
        if not path.exists():
            continue
        module, epoch = load_module(cfg, dm, path)
        if not hasattr(module.model, "spike_readout"):
            raise ValueError(f"{path}: model {type(module.model).__name__} has no spike readout")
        from eirnn.errors import UserError
        from eirnn.training.callbacks import params_finite

        if not params_finite(module):  # a diverged model: a readout fitted to NaN rates means nothing
            raise UserError(f"{path}: the model's weights are not finite (a diverged run); no readout fitted")
        info = fit_spike_readout(module, dm, noise_draws)
        ckpt = torch.load(str(path), map_location="cpu", weights_only=False)
        ckpt["state_dict"] = {k: v.detach().cpu() for k, v in module.state_dict().items()}
        _save_atomic(ckpt, path)
        out[path.stem] = {"epoch": epoch, **info}
    return out


def refuse_diverged(run_dir: Path) -> None:
    """A run whose ``metrics.json`` says ``diverged`` gets no readout: its rates are not finite,
    and a readout fitted to them (gain 1, offset 0) would look like a result."""
    import json

    from eirnn.errors import UserError

    path = Path(run_dir) / "metrics.json"
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if isinstance(m, dict) and m.get("outcome") == "diverged":
        raise UserError(f"{run_dir}: the run diverged ({m.get('reason', '')}); no readout fitted")


def main(argv: Optional[Sequence[str]] = None) -> int:
    from eirnn.evaluate import EvaluationError, _resolve_checkpoint, load_config
    from eirnn.runs.build import build_datamodule

    parser = argparse.ArgumentParser(prog="python -m eirnn.fit_readout", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--checkpoint", nargs="+", default=["best", "last"],
                        help="best, last, or checkpoint paths (default: best last)")
    parser.add_argument("--noise-draws", type=int, default=10)
    args = parser.parse_args(argv)
    from eirnn.errors import UserError, exit_user_error
    from eirnn.run_dir import refuse_if_running

    try:
        refuse_if_running(args.run_dir, "refit the readout of")
        refuse_diverged(args.run_dir)
        cfg = load_config(args.run_dir)
        paths = list(dict.fromkeys(_resolve_checkpoint(args.run_dir, c) for c in args.checkpoint))
        dm = build_datamodule(cfg)
        res = fit_checkpoint_readouts(cfg, dm, paths, args.noise_draws)
    except UserError as err:
        return exit_user_error(err)
    except (EvaluationError, ValueError, FileNotFoundError) as err:
        return exit_user_error(err)
    for name, info in res.items():
        ep = "n/a" if info["epoch"] is None else int(info["epoch"]) + 1  # counted from 1, as everywhere people read it
        print(f"{args.run_dir}/{name}: epoch {ep}, readout gain median {info['gain_median']:.3f} "
              f"(range {info['gain_range'][0]:.3f}-{info['gain_range'][1]:.3f}), offset median "
              f"{info['offset_median_hz']:.2f} sp/s, fitted on {info['n_train_trials']} training trials")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
