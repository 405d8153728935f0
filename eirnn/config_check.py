"""Every configuration value checked before any work starts, in one place.

:func:`check_config` runs in ``python -m eirnn.train`` / ``eirnn.cv`` before the run folder
is touched (the Hydra callback :class:`eirnn.runs.lock.RunFolderGuard`) and again at the top of
:func:`eirnn.train.train` (API users). Each bad value is one clause ``key=value: why``;
all of them are raised together in one line as :class:`eirnn.errors.ConfigError`
(``eirnn.train`` prints it and exits 2). Values the data decide (e.g. ``model.rank`` at most
the number of units) are checked when the model is built, with the same wording.
"""
from __future__ import annotations

import math
from typing import Any, Callable

from eirnn.errors import ConfigError

__all__ = ["check_config", "config_problems"]

_MISSING = object()


def _get(cfg, key: str) -> Any:
    from omegaconf import OmegaConf

    try:
        return OmegaConf.select(cfg, key, default=_MISSING, throw_on_missing=False)
    except Exception:  # an interpolation that cannot be resolved yet (e.g. ${hydra:...}): not ours to check
        return _MISSING


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int_at_least(lo: int) -> Callable[[Any], str | None]:
    def check(v):
        if not _is_int(v):
            return f"must be an integer >= {lo}"
        return None if v >= lo else f"must be >= {lo}"
    return check


def _int_or_null_at_least(lo: int) -> Callable[[Any], str | None]:
    inner = _int_at_least(lo)
    return lambda v: None if v is None else inner(v)


def _positive_number(v) -> str | None:
    if not _is_num(v) or not math.isfinite(float(v)):
        return "must be a finite number > 0"
    return None if v > 0 else "must be > 0"


def _learning_rate(v) -> str | None:
    if not _is_num(v) or not math.isfinite(float(v)):
        return "must be a finite number >= 0 (0 only keeps the weights frozen)"
    return None if v >= 0 else "must be >= 0 (0 only keeps the weights frozen)"


def _non_negative_number_or_null(v) -> str | None:
    if v is None:
        return None
    if not _is_num(v) or not math.isfinite(float(v)):
        return "must be a finite number >= 0 (or null)"
    return None if v >= 0 else "must be >= 0"


def _fraction_open(v) -> str | None:
    if not _is_num(v) or not math.isfinite(float(v)):
        return "must be a number in (0, 1)"
    return None if 0.0 < float(v) < 1.0 else "must be in (0, 1): the validation set picks the checkpoint and stops training"


def _rank(v) -> str | None:
    if v is None or (isinstance(v, str) and v.lower() in ("full", "none", "null")):
        return None
    if not _is_int(v) or v < 1:
        return "must be an integer >= 1 (at most the number of units), or rank=full"
    return None


def _batch_size(v) -> str | None:
    if v is None:
        return None
    if not _is_int(v):
        return "must be an integer >= 0 (0 = the whole training set in one batch)"
    return None if v >= 0 else "must be >= 0 (0 = the whole training set in one batch)"


def _max_epochs(v) -> str | None:
    if v is None:
        return None
    if not _is_int(v):
        return "must be an integer >= 0"
    return None if v >= 0 else "must be >= 0"


_CHECKS: list[tuple[str, Callable[[Any], str | None]]] = [
    ("seed", lambda v: None if _is_int(v) else "must be an integer"),
    ("trainer.max_epochs", _max_epochs),
    ("trainer.min_epochs", _int_or_null_at_least(0)),
    ("trainer.check_val_every_n_epoch", _int_or_null_at_least(1)),
    ("optim.lr", _learning_rate),
    ("optim.weight_decay", _non_negative_number_or_null),
    ("optim.grad_clip", _non_negative_number_or_null),
    ("optim.warmup_steps", _int_or_null_at_least(0)),
    ("optim.max_skipped_steps", _int_or_null_at_least(0)),
    ("data.batch_size", _batch_size),
    ("data.cv_folds", _int_or_null_at_least(2)),
    ("data.es_fraction", lambda v: None if _is_num(v) and 0.0 <= float(v) < 1.0
     else "must be a number in [0, 1): the share of training trials that drives early stopping (0 = off)"),
    ("data.n_train", _int_at_least(1)),
    ("data.n_val", _int_at_least(1)),
    ("model.rank", _rank),
    ("model.n_hidden", _int_or_null_at_least(0)),
    ("model.tau", _positive_number),
    ("model.dt", lambda v: None if v is None else _positive_number(v)),
    ("model.noise_scale", _non_negative_number_or_null),
    ("model.spectral_radius", _positive_number),
    ("model.rate_scale", _positive_number),
    ("model.embed_dim", _int_at_least(1)),
    ("data.synthetic.n_trials", _int_at_least(1)),
    ("data.split_seed", lambda v: None if v is None or _is_int(v) else "must be an integer"),
    ("callbacks.early_stopping.min_delta", _non_negative_number_or_null),
    ("ensemble.size", _int_at_least(1)),
    ("callbacks.early_stopping.patience", _int_or_null_at_least(0)),
]


def config_problems(cfg) -> list[str]:
    """One ``key=value: why`` clause per bad value of ``cfg`` (a composed train/cv config)."""
    problems: list[str] = []
    for key, check in _CHECKS:
        v = _get(cfg, key)
        if v is _MISSING:
            continue
        why = check(v)
        if why:
            problems.append(f"{key}={v!r}: {why}")
    # the random split needs a validation set unless k-fold cross-validation picks it
    vf, folds = _get(cfg, "data.val_fraction"), _get(cfg, "data.cv_folds")
    if vf is not _MISSING and folds in (None, _MISSING):
        why = _fraction_open(vf)
        if why:
            problems.append(f"data.val_fraction={vf!r}: {why}")
    fold = _get(cfg, "data.cv_fold")
    if _is_int(folds) and folds >= 2 and fold is not _MISSING and not (_is_int(fold) and 0 <= fold < folds):
        problems.append(f"data.cv_fold={fold!r}: must be in 0..{folds - 1}")
    data = _get(cfg, "data")
    from omegaconf import OmegaConf

    try:
        path_missing = OmegaConf.is_config(data) and OmegaConf.is_missing(data, "path")
    except Exception:  # no such key (task data modules)
        path_missing = False
    if path_missing:
        problems.append("data.path: missing (the session file: data.path=FILE)")
    ckpt = _get(cfg, "ckpt_path")
    if isinstance(ckpt, str) and ckpt:
        import os

        if not os.path.isfile(ckpt):
            problems.append(f"ckpt_path={ckpt}: " + ("is a folder, not a checkpoint file" if os.path.isdir(ckpt)
                                                      else "no such file"))
    return problems


def check_config(cfg) -> None:
    """Raise :class:`~eirnn.errors.ConfigError` (one line, every bad value) when ``cfg`` has any."""
    problems = config_problems(cfg)
    if problems:
        raise ConfigError("bad configuration: " + "; ".join(problems))
