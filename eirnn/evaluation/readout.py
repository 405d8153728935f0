"""The spike readout of a trained model, fitted on its training trials (:mod:`eirnn.models.readout`).

Per recorded neuron ``n`` the Poisson maximum-likelihood ``(gain_n, offset_n)`` of
``lambda = max(gain_n r_n + offset_n, floor)`` against its spike counts, where ``r [K, T, N]`` is
the model's expected rate on the training trials (:func:`eirnn.evaluation.predict.predict_expected_rates`);
written into the checkpoint file (atomic replace; the network's weights are untouched).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Iterable

import numpy as np

__all__ = ["fit_spike_readout", "fit_checkpoint_readouts", "fit_after_training", "refuse_diverged"]

log = logging.getLogger("eirnn.train")  # fit_after_training logs into the training's log


def fit_spike_readout(module, dm, noise_draws: int = 10) -> Dict[str, Any]:
    """Fit ``module.model.spike_readout`` on ``dm``'s training trials; returns a summary."""
    from eirnn.baselines import TrialSet
    from eirnn.calibration import fit_affine_calibration
    from eirnn.evaluation.predict import predict_expected_rates

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


def fit_checkpoint_readouts(cfg, dm, paths: Iterable[Path], noise_draws: int = 10) -> Dict[str, Any]:
    """Fit the readout of each checkpoint file in ``paths`` and write it back into the file."""
    import torch

    from eirnn.errors import UserError
    from eirnn.runs.run_dir import load_module
    from eirnn.training.callbacks import params_finite
    from eirnn.utils import torch_save_atomic

    out: Dict[str, Any] = {}
    for path in paths:
        path = Path(path)
        if not path.exists():
            continue
        module, ckpt = load_module(cfg, dm, path)
        epoch = ckpt.get("epoch")
        if not hasattr(module.model, "spike_readout"):
            raise ValueError(f"{path}: model {type(module.model).__name__} has no spike readout")
        if not params_finite(module):  # a diverged model: a readout fitted to NaN rates means nothing
            raise UserError(f"{path}: the model's weights are not finite (a diverged run); no readout fitted")
        info = fit_spike_readout(module, dm, noise_draws)
        ckpt = torch.load(str(path), map_location="cpu", weights_only=False)
        ckpt["state_dict"] = {k: v.detach().cpu() for k, v in module.state_dict().items()}
        torch_save_atomic(ckpt, path)
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


def fit_after_training(cfg, dm, module, out_dir: Path) -> dict:
    """Fit the spike readout (eirnn/models/readout.py) of best.ckpt and last.ckpt on the
    training trials, write it into them, and give the in-memory (last-epoch) model the last one."""
    ckpt_dir = out_dir / "checkpoints"
    res = fit_checkpoint_readouts(cfg, dm, [ckpt_dir / "best.ckpt", ckpt_dir / "last.ckpt"])
    if "last" in res:
        module.model.spike_readout.set_affine(res["last"]["gain"], res["last"]["offset_hz"])
    for name, info in res.items():  # epoch 1-based here, like the summary; 0-based in metrics.json
        ep = info["epoch"] + 1 if isinstance(info["epoch"], int) else info["epoch"]
        log.info("spike readout of %s.ckpt (epoch %s): gain median %.3f, offset median %.2f sp/s",
                 name, ep, info["gain_median"], info["offset_median_hz"])
    return res
