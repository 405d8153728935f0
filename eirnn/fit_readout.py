"""Fit a trained model's spike readout on its training trials (:mod:`eirnn.models.readout`).

``python -m eirnn.fit_readout RUN_DIR [--checkpoint best last] [--noise-draws 10] [--data-path FILE]``

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
from pathlib import Path
from typing import Optional, Sequence

from eirnn.errors import cli_main
from eirnn.utils import fmt_epoch
from eirnn.evaluation.readout import fit_checkpoint_readouts, fit_spike_readout, refuse_diverged  # noqa: F401

__all__ = ["fit_spike_readout", "fit_checkpoint_readouts", "main"]


@cli_main(also=(ValueError, FileNotFoundError))  # a readout that cannot be fitted, a missing file
def main(argv: Optional[Sequence[str]] = None) -> int:
    from eirnn.evaluation.score import EvaluationError
    from eirnn.runs.build import build_datamodule
    from eirnn.runs.run_dir import find_checkpoint, load_run_config

    parser = argparse.ArgumentParser(prog="python -m eirnn.fit_readout", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--checkpoint", nargs="+", default=["best", "last"],
                        help="best, last, or checkpoint paths (default: best last)")
    parser.add_argument("--noise-draws", type=int, default=10)
    parser.add_argument("--data-path", default=None, help="the session file, when it is not where the run found it")
    args = parser.parse_args(argv)
    from eirnn.runs.lock import refuse_if_running

    refuse_if_running(args.run_dir, "refit the readout of")
    refuse_diverged(args.run_dir)
    cfg = load_run_config(args.run_dir, args.data_path, error=EvaluationError)
    paths = list(dict.fromkeys(find_checkpoint(args.run_dir, c, error=EvaluationError) for c in args.checkpoint))
    dm = build_datamodule(cfg)
    res = fit_checkpoint_readouts(cfg, dm, paths, args.noise_draws)
    for name, info in res.items():
        ep = fmt_epoch(info["epoch"])  # counted from 1, as everywhere people read it
        print(f"{args.run_dir}/{name}: epoch {ep}, readout gain median {info['gain_median']:.3f} "
              f"(range {info['gain_range'][0]:.3f}-{info['gain_range'][1]:.3f}), offset median "
              f"{info['offset_median_hz']:.2f} sp/s, fitted on {info['n_train_trials']} training trials")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
