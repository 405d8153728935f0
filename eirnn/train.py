"""Train an E-I RNN on a session: ``python -m eirnn.train [hydra overrides]``.

Examples::

    python -m eirnn.train                                   # built-in synthetic session
    python -m eirnn.train data=sc_mat data.path=FILE.mat    # a lab export
    python -m eirnn.train model=lowrank model.rank=20 trainer.max_epochs=50
    python -m eirnn.train --multirun seed=1,2,3             # one folder per job
    tensorboard --logdir outputs

Each run folder (``outputs/train/runs/<date_time>/``) holds the composed config
(``.hydra/``), the log, TensorBoard events (``tensorboard/``), checkpoints
(``checkpoints/best.ckpt``, ``last.ckpt``) and ``metrics.json``.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

log = logging.getLogger("eirnn.train")


class _DropLightningAds(logging.Filter):
    """Lightning logs product tips at INFO level; they are noise in a scientist's console."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage() and "Tip:" not in record.getMessage()


def _quiet_third_party() -> None:
    import warnings

    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_DropLightningAds())
    warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    # a resume into its own folder (the only non-empty checkpoints/ eirnn.runs.lock lets a run write into)
    warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")

from eirnn.runs.lock import register_resolvers  # noqa: E402  (${eirnn_token:} in the run folder's name)

register_resolvers()


from eirnn.errors import EXIT_DIVERGED, UserError  # noqa: E402  (one user-error type for every command)
from eirnn.runs.summary import announce, lightning_ctrl_c as _lightning_ctrl_c  # noqa: E402,F401  (old names)
from eirnn.runs.summary import log_hparams as _log_hparams, print_summary as _print_summary  # noqa: E402
from eirnn.runs.summary import collect_summary, record_failure as _record_failure  # noqa: E402
from eirnn.runs.build import (_instantiate_dict, build_datamodule, build_model, build_module,  # noqa: E402,F401
                              check_resume_checkpoint, checkpoint_mismatch, read_checkpoint)


def _output_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.output_dir)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit the configured model; returns the summary written to ``metrics.json``."""
    import lightning as L
    import torch

    from eirnn.config_check import check_config
    from eirnn.training.callbacks import MetricsWriter
    from eirnn.utils import write_json_atomic
    from eirnn.training.console import config_tree, setup_run_logging
    from eirnn.utils import atomic_checkpoint_io

    _quiet_third_party()
    setup_run_logging()  # Lightning's INFO lines once (console + train.log), not also on stderr
    check_config(cfg)  # again here for API callers; the CLI checked before the folder was made
    out_dir = _output_dir(cfg)
    if cfg.get("print_config", True):
        log.info("config (print_config=false skips this):\n%s", config_tree(cfg))
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    torch.set_float32_matmul_precision("high")
    from eirnn.runtime import configure  # torch threads, glibc malloc tuning (speed only)

    try:
        log.info("run time: %s", configure(cfg.get("threads", "auto"), bool(cfg.get("malloc_tuning", True))))
    except ValueError as err:
        raise UserError(str(err)) from err

    from eirnn.runs import ensemble as ens_build

    try:
        n_members = ens_build.ensemble_size(cfg)
    except ValueError as err:
        raise UserError(str(err)) from err
    if n_members == 1 and (ens_build.ensemble_vary(cfg, 1) or ens_build.ensemble_same_seed(cfg)):
        raise UserError("ensemble.vary / ensemble.same_seed need ensemble.size > 1 (for one run, set the key itself)")
    # K seeds as one batched model: the machinery (fit or task network) named by the module class
    ens = ens_build.machinery(cfg) if n_members > 1 else None
    dm = build_datamodule(cfg)
    if ens is not None:  # task networks: member k also gets seed + k's own data
        dm = ens_build.build_datamodule(cfg, dm, n_members)
    log.info("data: %s", dm.describe() if hasattr(dm, "describe") else dm.summary())
    if n_members > 1:  # K seeds as one batched model (eirnn/training/ensemble/)
        model, module = ens_build.build_ensemble(cfg, dm, n_members)
    else:
        model = build_model(cfg, dm)
    log.info("model: %s", model.describe() if hasattr(model, "describe") else type(model).__name__)
    if n_members == 1:
        module = build_module(cfg, model, dm)
    callbacks = _instantiate_dict(cfg.get("callbacks"))
    if n_members > 1:
        try:
            callbacks = ens.ensemble_callbacks(callbacks, module, str(out_dir))
        except ValueError as err:
            raise UserError(str(err)) from err
    if not any(isinstance(c, MetricsWriter) for c in callbacks):
        callbacks.append(MetricsWriter(str(out_dir)))
    loggers = _instantiate_dict(cfg.get("logger"))
    from hydra.utils import instantiate

    trainer: L.Trainer = instantiate(  # checkpoints written atomically beside their target (eirnn/utils.py)
        cfg.trainer, callbacks=callbacks, logger=loggers or False, default_root_dir=str(out_dir),
        plugins=[atomic_checkpoint_io()],
    )
    if cfg.get("ckpt_path"):
        check_resume_checkpoint(str(cfg.ckpt_path), module)
    writer = next(c for c in callbacks if isinstance(c, MetricsWriter))
    monitor = str(cfg.get("optimized_metric") or "val/psth_corr")
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=cfg.get("ckpt_path"))
    except BaseException as err:  # metrics.json says how the run ended, then the error goes on
        _record_failure(writer, trainer, module, out_dir, err)
        raise

    summary = collect_summary(writer, trainer, module, callbacks, out_dir, monitor, ens)
    if (n_members == 1 and bool(cfg.get("fit_spike_readout", True)) and hasattr(module.model, "spike_readout")
            and summary["outcome"] in ("completed", "early_stopped") and summary.get("epochs_trained")):
        from eirnn.evaluation.readout import fit_after_training

        summary["spike_readout"] = fit_after_training(cfg, dm, module, out_dir)
    write_json_atomic(writer.path, summary)
    _log_hparams(loggers, cfg, summary, module.model)
    if cfg.get("export"):  # weights/, outputs/, metrics/, population/, figures/, training_report.md
        from eirnn.report.export import export_after_training

        manifest = export_after_training(cfg, trainer, module, dm, summary)
        summary["report"] = str(out_dir / manifest["report"])
    _print_summary(summary, out_dir, str(cfg.get("optimized_metric") or "val/psth_corr"))
    return summary


def _is_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:  # pragma: no cover
        return False


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns ``cfg.optimized_metric`` (best value) for sweepers."""
    try:
        summary = train(cfg)
    except UserError as err:
        log.error("%s", err)
        if _is_multirun():
            raise RuntimeError(str(err)) from None  # the sweep records the failed job and goes on
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    except Exception:
        # Hydra's launchers run the other jobs, then report only the first failure; keep
        # every failed job's traceback in its own log, where eirnn.sweep_report finds it.
        if _is_multirun():
            log.exception("job failed")
        raise
    except KeyboardInterrupt:  # outside training (data loading, export): nothing to save
        print("interrupted (Ctrl+C)", file=sys.stderr, flush=True)
        sys.exit(130)
    except SystemExit as err:  # Lightning's SIGTERMException (exit status 0 of its own): say so, status 143
        ctrl_c = _lightning_ctrl_c(err)  # Lightning's Ctrl+C shutdown exits 1: say so, status 130
        if type(err).__name__ != "SIGTERMException" and not ctrl_c:
            raise
        print(f"interrupted by {'Ctrl+C' if ctrl_c else 'SIGTERM'} in the middle of an epoch; last saved state: "
              f"{_output_dir(cfg) / 'checkpoints' / 'last.ckpt'} (callbacks=final stops at the end of the "
              f"epoch instead)", file=sys.stderr, flush=True)
        sys.exit(130 if ctrl_c else 143)
    if summary.get("interrupted") and not _is_multirun():
        sys.exit(int(summary.get("exit_code", 130)))  # 128 + signal number, after every file is written
    if summary.get("outcome") == "diverged" and not _is_multirun():
        sys.exit(EXIT_DIVERGED)  # its own status: a script must not take a diverged run for a result
    value = summary.get("best", {}).get(cfg.get("optimized_metric") or "val/psth_corr")
    return None if value is None else float(value)


if __name__ == "__main__":
    from eirnn.fasthelp import fast_help  # --help without Hydra's per-group repository copies (same text)

    _help = fast_help(sys.argv, CONFIG_DIR, "train")
    if _help is not None:
        print(_help)
        sys.exit(0)
    main()
