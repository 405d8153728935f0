"""A trained model's predicted rates for a set of trials (:mod:`eirnn.evaluation`).

``predict_rates`` -> one noise draw ``[K, T, N]`` (``K`` trials, ``T`` bins, ``N`` recorded
units); ``predict_expected_rates`` -> ``lambda[t, n] = (1/S) sum_s r_n(t; u, xi_s)`` over ``S``
draws (seeds ``val_seed + s``; ``S = 0``: the noise-free pass) and the ``val_seed`` draw;
``model_predictions`` adds the rate through the model's fitted spike readout.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Tuple

import numpy as np

__all__ = ["DEFAULT_NOISE_DRAWS", "predict_rates", "predict_expected_rates", "model_predictions"]


def predict_rates(module, tensors: Mapping[str, Any], batch_size: int = 0, seed: Optional[int] = None,
                  noise: bool = True) -> np.ndarray:
    """Run ``module.model`` on ``tensors["inputs"]`` -> ``[K, T, N]`` float64 rates of the
    recorded units: one noise draw (``noise=False``: the noise-free forward pass).

    The noise is drawn from one generator seeded with ``seed`` (default
    ``module.val_seed``) across the batches of
    :class:`~eirnn.data.datamodule.TrialBatchLoader` (``batch_size`` 0 = one batch), so
    on the run's validation tensors the default reproduces the logged validation metrics.
    """
    import torch

    from eirnn.data.datamodule import TrialBatchLoader

    model = module.model
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator(device=device)
    gen.manual_seed(int(module.val_seed if seed is None else seed))
    out = []
    with torch.no_grad():
        for batch in TrialBatchLoader(dict(tensors), batch_size, shuffle=False):
            r = model(batch["inputs"].to(device), noise=noise, generator=gen).rates[..., : model.n_recorded]
            out.append(r.float().cpu())
    return torch.cat(out).numpy().astype(np.float64)


#: Noise draws averaged into a model's predicted (expected) rate (experiments/evaluation.md).
DEFAULT_NOISE_DRAWS = 10


def predict_expected_rates(module, tensors: Mapping[str, Any], batch_size: int = 0,
                           noise_draws: int = DEFAULT_NOISE_DRAWS) -> Tuple[np.ndarray, np.ndarray]:
    """A model's predicted rate and one sample of it (the module docstring).

    Returns ``(expected, sample)``, both ``[K, T, N]``: ``expected`` = the mean of
    ``noise_draws`` draws (seeds ``val_seed + s``, ``s = 0 .. S-1``; ``S = 0``: the
    noise-free pass), ``sample`` = the ``val_seed`` draw (the one training-time validation
    scores).
    """
    s = int(noise_draws)
    if s < 0:
        raise ValueError(f"noise_draws must be >= 0, got {noise_draws}")
    sample = predict_rates(module, tensors, batch_size)
    if s == 0:
        return predict_rates(module, tensors, batch_size, noise=False), sample
    total = sample.copy()
    for k in range(1, s):
        total += predict_rates(module, tensors, batch_size, seed=int(module.val_seed) + k)
    return total / s, sample


def model_predictions(module, tensors: Mapping[str, Any], batch_size: int = 0,
                      noise_draws: int = DEFAULT_NOISE_DRAWS) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A model's predictions ``(expected, sample, spike_rate)``, each ``[K, T, N]``.

    ``expected`` and ``sample`` are the network's rates (:func:`predict_expected_rates`);
    ``spike_rate`` is ``expected`` through the model's fitted spike readout
    (:mod:`eirnn.models.readout`; ``expected`` itself when it is not fitted), the rate of
    the Poisson spike counts that bits/spike scores.
    """
    pred, sample = predict_expected_rates(module, tensors, batch_size, noise_draws)
    readout = getattr(module.model, "spike_readout", None)
    if readout is None or not readout.is_fitted:
        return pred, sample, pred
    return pred, sample, readout.apply_numpy(pred)

