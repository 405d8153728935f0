"""Linear learning-rate warmup over the first optimiser steps, and the non-finite step guard.

Adam's first updates move every parameter by about ``lr`` in the sign of its gradient,
all at once: on the real SC session (``lr`` 5e-3, 32 trials per step) two or three such
steps can push a softplus E-I network into runaway excitation (rates 1e4-1e7 sp/s,
``L_neuron`` up to 1e18; NaN gradients for one of them) for 3 of 8 initialisation seeds
(experiments/evaluation.md, "Early blow-up and the lr warmup"). A linear ramp of the step size over the first
``optim.warmup_steps`` optimiser steps removes it::

    lr_k = lr_sched * min(1, (k + 1) / warmup_steps)        # k = 0, 1, ... optimiser steps

``lr_sched`` is the learning rate the scheduler (if any) has set; the ramp multiplies it
for one step only (:func:`scaled_lr`), so schedulers, checkpoints and ``ReduceLROnPlateau``
see the unscaled value. ``warmup_steps <= 0`` switches the ramp off.

:func:`step_unless_nonfinite` is the guard: an optimiser step taken with a non-finite
gradient is undone on the device (parameters and the optimiser's moment buffers return to
their values before the step), without a host synchronisation; the caller counts the
skipped steps and reads the count once per epoch.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Sequence

import torch


def warmup_factor(step: int, warmup_steps: int) -> float:
    """``min(1, (step + 1) / warmup_steps)`` for optimiser step ``step`` (0-based); 1 if ``warmup_steps <= 0``."""
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, (int(step) + 1) / float(warmup_steps))


@contextmanager
def scaled_lr(optimizer: torch.optim.Optimizer, factor: float) -> Iterator[None]:
    """Multiply every parameter group's ``lr`` by ``factor`` inside the block, then restore it."""
    if factor == 1.0:
        yield
        return
    saved = [g["lr"] for g in optimizer.param_groups]
    for g in optimizer.param_groups:
        g["lr"] = g["lr"] * factor
    try:
        yield
    finally:
        for g, lr in zip(optimizer.param_groups, saved):
            g["lr"] = lr


def grads_finite(params: Iterable[torch.nn.Parameter]) -> torch.Tensor:
    """0-dim bool tensor: every gradient in ``params`` is finite (no host synchronisation)."""
    flags = [torch.isfinite(p.grad).all() for p in params if p.grad is not None]
    return torch.stack(flags).all() if flags else torch.ones((), dtype=torch.bool)


def step_unless_nonfinite(optimizer: torch.optim.Optimizer, params: Sequence[torch.nn.Parameter],
                          step: Callable[[], None]) -> torch.Tensor:
    """Run ``step()`` (the optimiser step) and undo it where a gradient was not finite.

    ``finite = all(isfinite(p.grad))`` is evaluated before the step; after it, every
    parameter and every tensor of ``optimizer.state[p]`` on the parameter's device (Adam's
    ``exp_avg``, ``exp_avg_sq``; a state created by this step goes back to zeros) is set to
    ``where(finite, after, before)``. A step counter kept on another device (Adam's
    ``step`` on the CPU for CUDA parameters) still advances. Returns ``finite`` (0-dim bool,
    on the parameters' device).
    """
    params = [p for p in params if p.grad is not None]
    if not params:
        step()
        return torch.ones((), dtype=torch.bool)
    finite = grads_finite(params)
    before = [p.detach().clone() for p in params]
    saved = [{k: v.clone() for k, v in optimizer.state[p].items() if torch.is_tensor(v) and v.device == p.device}
             if p in optimizer.state else {} for p in params]
    step()
    with torch.no_grad():
        for p, b, old in zip(params, before, saved):
            p.copy_(torch.where(finite, p, b))
            for k, v in optimizer.state.get(p, {}).items():
                if torch.is_tensor(v) and v.device == p.device:
                    v.copy_(torch.where(finite, v, old[k] if k in old else torch.zeros_like(v)))
    return finite
