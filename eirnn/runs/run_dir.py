"""Open a run folder: the one way every command reads a trained run.

``RUN/.hydra/config.yaml`` -> config (:func:`load_run_config`, with a usable ``data.path``)
-> checkpoint (:func:`find_checkpoint`: ``best`` -> ``last`` -> ``interrupted``) -> data module
(:func:`eirnn.runs.build.build_datamodule`) -> LightningModule with the checkpoint's weights
(:func:`load_module`); an ensemble's members (:func:`member_states`). :func:`open_run` does the first four; :func:`load_checkpoint_module` rebuilds a
module from a checkpoint file alone (its ``eirnn_spec``, :mod:`eirnn.training.rebuild`).
Every problem is a one-line :class:`~eirnn.errors.UserError` naming the file.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eirnn.errors import RunFolderError, UserError

__all__ = ["CHECKPOINT_NAMES", "Run", "open_run", "load_run_config", "run_relative_path", "find_checkpoint",
           "load_module", "load_checkpoint_module", "member_dirs", "member_states"]

log = logging.getLogger("eirnn.runs")

#: ``--checkpoint`` names; ``best`` falls back to ``last``, then ``interrupted``.
CHECKPOINT_NAMES = {"best": "best.ckpt", "last": "last.ckpt", "interrupted": "interrupted.ckpt"}


# ------------------------------------------------------------------ config
def run_relative_path(run_dir: Path | str, value: Any) -> str | None:
    """``value`` (e.g. a relative ``data.path`` of the run's config) as the run saw it: joined to
    the directory the training was started from (``.hydra/hydra.yaml``: ``hydra.runtime.cwd``)
    when it is relative, missing from here and present there; else ``None``."""
    if value is None:
        return None
    p = Path(str(value)).expanduser()
    if p.is_absolute() or p.exists():
        return None
    try:
        import yaml

        hydra_cfg = yaml.safe_load((Path(run_dir) / ".hydra" / "hydra.yaml").read_text()) or {}
        cwd = ((hydra_cfg.get("hydra") or {}).get("runtime") or {}).get("cwd")
    except (OSError, ValueError, AttributeError, ImportError):
        return None
    if not cwd or not (Path(cwd) / p).exists():
        return None
    return str(Path(cwd) / p)


def _recorded_data_path(run_dir: Path) -> str | None:
    """The absolute ``data.path`` an export wrote into ``run_dir/config.json``, if any."""
    p = run_dir / "config.json"
    if p.exists():
        try:
            return (json.loads(p.read_text()).get("data") or {}).get("path")
        except (OSError, ValueError, AttributeError):
            return None
    return None


def load_run_config(run_dir: Path | str, data_path: str | None = None, error: type[UserError] = RunFolderError):
    """The composed config of ``run_dir`` with ``paths.output_dir = run_dir`` and a usable ``data.path``.

    Read from ``.hydra/config.yaml`` (else an export's ``config.yaml``). ``data.path`` is, in
    order: ``data_path``; the path as recorded (``${oc.env:...}`` resolved now; a relative one
    against the current directory, then the directory the training started from); the absolute
    path an export recorded in ``config.json``. None of them found: ``error`` (one line).
    """
    from omegaconf import OmegaConf, open_dict

    run_dir = Path(run_dir)
    src = run_dir / ".hydra" / "config.yaml"
    if not src.exists():
        src = run_dir / "config.yaml"
    if not src.exists():
        raise error(f"{run_dir / '.hydra' / 'config.yaml'}: not found (is {run_dir} a run folder?)")
    cfg = OmegaConf.load(src)
    with open_dict(cfg):
        cfg.paths = cfg.get("paths") or {}
        cfg.paths.output_dir = str(run_dir)
        data = cfg.get("data")
        if data is None:
            return cfg  # e.g. a task run without a data group: nothing to find
        if data_path is not None:
            data.path = str(data_path)
        elif data.get("path", None) is not None:
            try:
                current = str(data.path)
            except Exception as err:  # an interpolation that cannot be resolved here
                current = f"<{err}>"
            if not Path(current).exists():
                found = run_relative_path(run_dir, current) or _recorded_data_path(run_dir)
                if found and Path(found).exists():
                    data.path = found
                else:
                    raise error(f"{src}: data.path {current} not found (pass --data-path FILE)")
    return cfg


# -------------------------------------------------------------- checkpoint
def find_checkpoint(run_dir: Path | str, which: str = "best", error: type[UserError] = RunFolderError) -> Path:
    """``best`` / ``last`` / ``interrupted`` under ``run_dir/checkpoints``, or a path.

    ``best`` falls back to ``last`` then ``interrupted`` (e.g. a NaN metric every epoch, or a
    run stopped before its first validation); the others do not.
    """
    if which not in CHECKPOINT_NAMES:
        p = Path(which)
        if not p.is_file():
            raise error(f"checkpoint {p}: not found")
        return p
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise error(f"{run_dir}: run folder not found")
    order = [which] + (["last", "interrupted"] if which == "best" else [])
    for name in order:
        p = run_dir / "checkpoints" / CHECKPOINT_NAMES[name]
        if p.is_file():
            return p
    tried = ", ".join(CHECKPOINT_NAMES[n] for n in order[1:])
    raise error(f"{run_dir / 'checkpoints' / CHECKPOINT_NAMES[which]}: not found"
                + (f" (nor {tried})" if tried else "") + "; train the run first, or pass --checkpoint PATH")


def _load_weights(module, ckpt: dict, path: Path, error: type[UserError]):
    try:
        module.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        raise error(f"{path}: does not match the run's config ({str(err).splitlines()[0]})") from err
    module.on_load_checkpoint(ckpt)
    module.eval()
    return module


def load_module(cfg, dm, ckpt_path: Path | str, error: type[UserError] = RunFolderError):
    """LightningModule with the weights and state of ``ckpt_path``; returns ``(module, checkpoint dict)``.

    Rebuilt from the checkpoint's own spec when it has one (:func:`load_checkpoint_module`),
    else from ``cfg`` on ``dm`` (:mod:`eirnn.runs.build`; checkpoints written before the spec).
    """
    from eirnn.runs.build import build_model, build_module, read_checkpoint

    ckpt_path = Path(ckpt_path)
    hint = "is it this run's checkpoint?"
    try:
        ckpt = read_checkpoint(ckpt_path, hint=hint)
        module = _from_spec(ckpt)
        if module is None:
            module = build_module(cfg, build_model(cfg, dm), dm)
        _check_shapes(ckpt, module, ckpt_path, hint)
    except UserError as err:
        raise (err if isinstance(err, error) else error(str(err))) from None
    return _load_weights(module, ckpt, ckpt_path, error), ckpt


def _check_shapes(ckpt: dict, module, path: Path, hint: str) -> None:
    from eirnn.runs.build import checkpoint_mismatch

    problems = checkpoint_mismatch(ckpt["state_dict"], module.state_dict())
    if problems:
        raise UserError(f"{path}: belongs to another configuration ({problems}); {hint}")


def _from_spec(ckpt: dict):
    """The module of ``ckpt["eirnn_spec"]``, or ``None`` (no spec; or a class since renamed)."""
    from eirnn.runs.build import rebuild
    from eirnn.training.rebuild import SPEC_KEY

    spec = ckpt.get(SPEC_KEY)
    if not spec:
        return None
    try:
        return rebuild(spec)
    except Exception as err:  # e.g. a class moved since: the run folder's config still rebuilds it
        log.info("checkpoint spec not usable (%s); rebuilding from the run's config", err)
        return None


def load_checkpoint_module(path: Path | str, error: type[UserError] = RunFolderError):
    """``(module, checkpoint dict)`` from a checkpoint file alone, without Hydra or the data:
    the model and LightningModule of its ``eirnn_spec``, its weights and state."""
    from eirnn.runs.build import read_checkpoint

    path = Path(path)
    try:
        ckpt = read_checkpoint(path)
    except UserError as err:
        raise (err if isinstance(err, error) else error(str(err))) from None
    module = _from_spec(ckpt)
    if module is None:
        raise error(f"{path}: holds no rebuild spec (written before it existed); open its run folder instead")
    _check_shapes(ckpt, module, path, "is the file intact?")
    return _load_weights(module, ckpt, path, error), ckpt


# ------------------------------------------------------------------- a run
def member_dirs(run_dir: Path | str) -> list[Path]:
    """An ensemble run's member folders ``members/m{k}`` in member order (empty for one model)."""
    root = Path(run_dir) / "members"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name[:1] == "m" and p.name[1:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[1:]))


def member_states(run_dir: Path | str, which: str = "best", error: type[UserError] = RunFolderError) -> list[tuple]:
    """``[(state dict, info)]`` of each ensemble member's ``which`` checkpoint (``members/m{k}/checkpoints/``,
    order of :func:`find_checkpoint`; the older ``members/m{k}/best.pt``), read with
    :func:`eirnn.training.ensemble.members.load_member_checkpoint`. Empty for one model."""
    from eirnn.training.ensemble.members import load_member_checkpoint

    out = []
    for d in member_dirs(run_dir):
        old = d / "best.pt"
        path = old if which == "best" and old.is_file() and not (d / "checkpoints").is_dir() else \
            find_checkpoint(d, which, error=error)
        try:
            out.append(load_member_checkpoint(path))
        except UserError as err:
            raise (err if isinstance(err, error) else error(str(err))) from None
    return out


@dataclass
class Run:
    """An opened run folder (:func:`open_run`)."""

    run_dir: Path
    cfg: Any
    checkpoint: Path
    datamodule: Any
    module: Any
    ckpt: dict
    members: list[Path] = field(default_factory=list)

    @property
    def epoch(self) -> int | None:
        """The checkpoint's 0-based epoch (``None`` when it has none)."""
        return self.ckpt.get("epoch")


def open_run(run_dir: Path | str, checkpoint: str = "best", data_path: str | None = None, cfg=None,
             datamodule=None, error: type[UserError] = RunFolderError) -> Run:
    """Config, checkpoint, set-up data module and module of ``run_dir`` (``cfg`` / ``datamodule``
    from the caller when given, e.g. at the end of training)."""
    from eirnn.runs.build import build_datamodule

    run_dir = Path(run_dir)
    if cfg is None:
        cfg = load_run_config(run_dir, data_path, error=error)
    ckpt_path = find_checkpoint(run_dir, checkpoint, error=error)
    if datamodule is None:
        try:
            datamodule = build_datamodule(cfg)
        except UserError as err:
            raise error(f"{run_dir}: {err}") from err
    module, ckpt = load_module(cfg, datamodule, ckpt_path, error=error)
    return Run(run_dir, cfg, ckpt_path, datamodule, module, ckpt, member_dirs(run_dir))
