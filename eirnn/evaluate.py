"""Score a trained run against baselines and the noise ceiling: ``python -m eirnn.evaluate RUN_DIR``.

Opens the run folder (:func:`eirnn.runs.run_dir.open_run`: config, ``checkpoints/best.ckpt``,
data, module), scores the model's expected rate ``lambda [K, T, N]`` (mean of ``--noise-draws``
draws), the baselines (fitted on the training trials) and the split-half noise ceiling on the
validation trials, and writes ``RUN_DIR/evaluation.json``, ``evaluation.md`` and TensorBoard
scalars ``eval/<set>/<predictor>/<metric>``. The code is in :mod:`eirnn.evaluation`; what each
metric is and why: experiments/evaluation.md, "What eirnn.evaluate computes".
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Iterable, Optional

from eirnn.errors import cli_main
# the names this module had before eirnn/evaluation/ (tests, notebooks and scripts import them from here)
from eirnn.evaluation.predict import (DEFAULT_NOISE_DRAWS, model_predictions, predict_expected_rates,  # noqa: F401
                                      predict_rates)
from eirnn.evaluation.run import evaluate_run  # noqa: F401
from eirnn.evaluation.score import (CEILING_METRICS, DEFAULT_BASELINES, FACTOR_METRICS, FANO_WINDOW_MS,  # noqa: F401
                                    PER_NEURON_METRICS, EvaluationError, condition_config_of, data_info,
                                    evaluate_modules, noise_ceiling, score_prediction, trial_term_from_config)
from eirnn.evaluation.tables import (FACTOR_COLUMNS, TABLE_HEADER, _epoch1, factor_table_rows,  # noqa: F401
                                     format_markdown, print_summary, table_rows, write_outputs, write_tensorboard)

log = logging.getLogger("eirnn.evaluate")


def load_config(run_dir: Path, data_path: str | None = None):
    """The run's composed config (:func:`eirnn.runs.run_dir.load_run_config`)."""
    from eirnn.runs.run_dir import load_run_config

    return load_run_config(Path(run_dir), data_path, error=EvaluationError)


def _resolve_checkpoint(run_dir: Path, checkpoint: str) -> Path:
    from eirnn.runs.run_dir import find_checkpoint

    return find_checkpoint(run_dir, checkpoint, error=EvaluationError)


def load_module(cfg, dm, checkpoint_path: Path):
    """``(module, epoch)`` of ``checkpoint_path`` (:func:`eirnn.runs.run_dir.load_module`)."""
    from eirnn.runs.run_dir import load_module as _load

    module, ckpt = _load(cfg, dm, checkpoint_path, error=EvaluationError)
    return module, ckpt.get("epoch")


@cli_main
def main(argv: Optional[Iterable[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eirnn.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", help="a run folder of python -m eirnn.train (holds .hydra/config.yaml)")
    parser.add_argument("--checkpoint", default="best",
                        help="best (default; else last, then interrupted), last, interrupted, or a .ckpt path")
    parser.add_argument("--baselines", default=",".join(DEFAULT_BASELINES),
                        help="comma-separated baselines to fit (default: %(default)s; '' for none)")
    parser.add_argument("--compare", action="append", default=[], metavar="NAME=RUN_DIR",
                        help="also score another run trained on the same data (repeatable)")
    parser.add_argument("--ceiling-splits", type=int, default=50, help="random half splits of the noise ceiling")
    parser.add_argument("--seed", type=int, default=0, help="seed of the ceiling splits and baseline inner folds")
    parser.add_argument("--noise-draws", type=int, default=DEFAULT_NOISE_DRAWS,
                        help="noise draws averaged into a model's predicted rate (0: noise-free pass; default %(default)s)")
    parser.add_argument("--no-calibration", action="store_true",
                        help="score the predictors' rates as they are (no per-neuron affine calibration)")
    parser.add_argument("--data-path", default=None, help="the session file, when it is not where the run found it")
    args = parser.parse_args(None if argv is None else list(argv))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    names = [b for b in args.baselines.split(",") if b.strip()]
    from eirnn.baselines import BASELINES

    unknown = [b for b in names if b not in BASELINES]
    if unknown:
        raise EvaluationError(f"--baselines: unknown {unknown}; known: {sorted(BASELINES)}")
    extra = {}
    for item in args.compare:
        if "=" not in item:
            raise EvaluationError(f"--compare: expected NAME=RUN_DIR, got {item!r}")
        k, v = item.split("=", 1)
        extra[k] = v
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise EvaluationError(f"{run_dir}: no such run folder")
    if args.noise_draws < 0:
        raise EvaluationError(f"--noise-draws must be >= 0, got {args.noise_draws}")
    result = evaluate_run(run_dir, args.checkpoint, names, extra, args.ceiling_splits, args.seed,
                          noise_draws=args.noise_draws, calibrate=not args.no_calibration,
                          data_path=args.data_path)
    print_summary(result)
    print(f"wrote {run_dir / 'evaluation.json'}, {run_dir / 'evaluation.md'} and TensorBoard scalars "
          f"under {run_dir / 'tensorboard'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
