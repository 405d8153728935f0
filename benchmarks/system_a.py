"""Timing of one System A training batch (forward + backward of the masked MSE), one thread.

``python -m benchmarks.system_a MODE [--k K] [--steps T] [--reps R]`` prints one line per
measurement (wall and CPU seconds, load average):

- ``impl``: the fused recurrence against the plain autograd loop, one 500-unit model, 32
  trials of the full task (``--steps`` of them, default 7000), alternated in one process;
- ``small``: one 100-unit model of ``experiment=system_a_small`` (both implementations)
  against ``K`` stacked models (``--k``, default 20) with each ensemble strategy;
- ``full``: one 500-unit model against ``K`` stacked ones (default 4) with each strategy.

The data are seed 1's training trials; every stacked member gets the same batch.  Numbers
and their reading: experiments/tasks.md ("Cost").
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from eirnn.models.system_a import SystemAEnsembleRNN
from eirnn.training.ensemble.task import member_masked_mse
from eirnn.training.task_module import masked_mse
from eirnn.data.system_a import SystemADataModule
from eirnn.models.system_a import SystemARNN

SMALL = dict(n_steps=700, onset=300.0, onset_jitter=100.0, duration=15.0, duration_jitter=10.0, cost_onset=450.0,
             thresh_rate=0.07)


def _batch(small: bool, steps: int) -> dict[str, torch.Tensor]:
    dm = SystemADataModule(seed=1, **(SMALL if small else {}))
    tr = dm.tensors("train")
    b = {k: tr[k][:32, :steps].contiguous() for k in ("inputs", "target", "mask")}
    if steps < tr["inputs"].shape[1]:  # a shortened trial: score its second half
        b["mask"][:, steps // 2:] = True
    return b


def _timed(fn) -> str:
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return f"{time.perf_counter() - t0:.3f} s wall / {time.process_time() - c0:.3f} s CPU (load {os.getloadavg()[0]:.1f})"


def _single(model: SystemARNN, b: dict):
    def step():
        model.zero_grad(set_to_none=True)
        masked_mse(model(b["inputs"]).output, b["target"], b["mask"]).backward()
    return step


def _stacked(model: SystemAEnsembleRNN, b: dict):
    bk = {k: v.unsqueeze(0).expand(model.size, *v.shape).contiguous() for k, v in b.items()}

    def step():
        model.zero_grad(set_to_none=True)
        member_masked_mse(model(bk["inputs"]).output, bk["target"], bk["mask"]).sum().backward()
    return step


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.system_a", description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=("impl", "small", "full"))
    ap.add_argument("--k", type=int, default=None, help="stacked models (small: 20, full: 4)")
    ap.add_argument("--steps", type=int, default=None, help="time steps per trial (default: the whole trial)")
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    small = args.mode == "small"
    n, tau = (100, 10.0) if small else (500, 100.0)
    b = _batch(small, args.steps or (700 if small else 7000))
    print(f"System A batch: 32 trials x {b['inputs'].shape[1]} steps, {n} units, torch {torch.__version__}, 1 thread")
    for _ in range(args.reps):
        if args.mode in ("impl", "small"):
            for impl in ("autograd", "fused"):
                print(f"one model, impl={impl}: {_timed(_single(SystemARNN(n_units=n, tau=tau, seed=1, impl=impl), b))}",
                      flush=True)
        else:
            print(f"one model, impl=fused: {_timed(_single(SystemARNN(n_units=n, tau=tau, seed=1), b))}", flush=True)
        if args.mode in ("small", "full"):
            k = args.k or (20 if small else 4)
            for strategy in ("bmm", "loop"):
                ens = SystemAEnsembleRNN([SystemARNN(n_units=n, tau=tau, seed=s) for s in range(1, k + 1)], strategy)
                print(f"{k} stacked models, strategy={strategy}: {_timed(_stacked(ens, b))}", flush=True)


if __name__ == "__main__":
    main()
