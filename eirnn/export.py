"""Write the analysis artifacts of a run: ``python -m eirnn.export RUN_DIR [options]``.

The run's composed config (``RUN_DIR/.hydra/config.yaml``) and a checkpoint
(``checkpoints/best.ckpt`` by default) rebuild the data module, the model and the
LightningModule (:func:`eirnn.runs.run_dir.open_run`; the code is :mod:`eirnn.report.export`);
the model is run once on the validation trials (same noise seed as validation, so the numbers are the validation
numbers of that checkpoint) and the run folder receives::

    weights/      W_rec (Dale applied), W_in, W_out, h0, E/I masks, time constants, attention projections
    outputs/      validation model / target rates and PSTHs, inputs, trial conditions, time axis
    metrics/      per-neuron correlation, mean rate, temporal variance, Fano factor (model, data), E/I labels
    population/   PCA of the data PSTH, model PSTH on the same components (also per target location)
    figures/      PNG figures (eirnn.report.figures)
    results.nc    the rates, latents, inputs, condition labels, per-neuron metrics and weights above in
                  one labelled NetCDF4 file (dimension names, units; xarray.open_dataset; eirnn.report.labelled)
    config.yaml, config.json      the fully resolved config (data.path made absolute)
    training_report.md            summary, metrics with E/I breakdown, config table, files, loading snippet
    artifacts.json                every file written, with its shape and dtype

Options: ``--out DIR`` (write the artifacts there instead of into the run folder, e.g. when the
run folder is read-only or shared; ``training_log.json`` and ``metrics.json`` are copied beside
them), ``--checkpoint best|last|interrupted|PATH`` (``best`` falls back to ``last``, then
``interrupted``), ``--data-path FILE`` (when the session moved), ``--no-figures``, ``--n-pcs K``. Training writes the same artifacts at its end when the
config has an ``export`` section (``experiment=final_model``).
"""
from __future__ import annotations

import argparse
import logging
import sys

from eirnn.errors import cli_main
# the names this module had before eirnn/report/export.py (tests and scripts import them from here)
from eirnn.report.export import (CHECKPOINT_NAMES, FIGURES, ExportError, export_after_training,  # noqa: F401
                                 export_run, find_checkpoint, load_module, load_run_config, resolved_config,
                                 write_config, write_figures)
from eirnn.utils import fmt_num


# --------------------------------------------------------------------- CLI
def _f4(v) -> str:
    """A metric for the one-line summary: ``n/a`` when there is none (no I neurons, a diverged run), as in the report."""
    return fmt_num(v, ".4f", inf="n/a")


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eirnn.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a run folder of python -m eirnn.train")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="write the artifacts into DIR (default: the run folder itself)")
    parser.add_argument("--checkpoint", default="best", help="best | last | interrupted | PATH (default: best)")
    parser.add_argument("--data-path", default=None, help="the session file, when it is not where the run found it")
    parser.add_argument("--no-figures", action="store_true", help="arrays and report only")
    parser.add_argument("--n-pcs", type=int, default=10, help="principal components kept (default 10)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    manifest = export_run(args.run_dir, checkpoint=args.checkpoint, figures=not args.no_figures,
                          n_pcs=args.n_pcs, data_path=args.data_path, out_dir=args.out)
    fm = manifest["final_metrics"]
    n_files = sum(len(v) for v in manifest["files"].values())

    f4 = _f4
    print(f"exported {manifest['checkpoint']} (epoch {fm['checkpoint_epoch'] + 1}): val PSTH corr {f4(fm['psth_corr'])} "
          f"(E {f4(fm['psth_corr_E'])}, I {f4(fm['psth_corr_I'])}); {n_files} result files (arrays, results.nc, "
          f"figures) in {manifest['out_dir']}; "
          f"report: {manifest['report']} ({manifest['export_time_s']:.1f} s)")
    if manifest["figure_errors"]:
        print(f"figures that failed: {', '.join(manifest['figure_errors'])}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
