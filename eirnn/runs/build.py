"""Build a run's objects from a composed config, in one place for every command.

``build_datamodule(cfg)`` -> set-up data module; ``build_model(cfg, dm)`` -> model with the
data-derived arguments; ``build_module(cfg, model, dm)`` -> the LightningModule;
``read_checkpoint(path, module)`` -> a checked checkpoint dict. Bad input is a
:class:`eirnn.errors.UserError` (one line, exit 2 in the CLIs).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from eirnn.errors import UserError

__all__ = ["build_datamodule", "build_model", "build_module", "rebuild", "read_checkpoint",
           "check_resume_checkpoint", "checkpoint_mismatch"]

log = logging.getLogger("eirnn.train")


def _instantiate_dict(section: DictConfig | None) -> list[Any]:
    from hydra.utils import instantiate

    out = []
    if not section:
        return out
    for name, sub in section.items():
        if isinstance(sub, DictConfig) and "_target_" in sub:
            out.append(instantiate(sub))
    return out


def build_datamodule(cfg: DictConfig):
    """Instantiate and set up the data module; data problems become :class:`UserError`."""
    from hydra.utils import instantiate

    from eirnn.data import DataFormatError

    try:
        dm = instantiate(cfg.data, _convert_="all")  # plain containers: checkpoints load with weights_only=True
        dm.setup("fit")
    except DataFormatError as err:
        raise UserError(str(err)) from err
    except MissingMandatoryValue as err:
        raise UserError(f"missing setting: {err.full_key} (e.g. data=sc_mat data.path=FILE.mat)") from err
    return dm


def build_model(cfg: DictConfig, dm):
    """Instantiate ``cfg.model`` with the data-derived arguments of ``dm.model_kwargs()``.

    A data-derived value is used only where the config leaves it unset (absent or null),
    so e.g. ``model.dt`` can still be set by hand.
    """
    from hydra.utils import instantiate

    kwargs: dict[str, Any] = {"seed": cfg.seed}
    for key, value in dm.model_kwargs().items():
        if cfg.model.get(key) is None:
            kwargs[key] = value
    try:
        model = instantiate(cfg.model, **kwargs)
    except Exception as err:  # bad option values: one line, named by the model's own message
        cause = err.__cause__ if err.__cause__ is not None else err
        if isinstance(cause, ValueError):  # Hydra wraps it in InstantiationException
            raise UserError(f"model config: {cause}") from err
        raise
    model._eirnn_spec = _spec(cfg.model, kwargs)  # what eirnn.training.rebuild stores in checkpoints
    return model


def build_module(cfg: DictConfig, model, dm):
    """Instantiate ``cfg.module`` (the LightningModule) around ``model``."""
    from hydra.utils import instantiate

    kwargs = dict(dm.module_kwargs()) if hasattr(dm, "module_kwargs") else {}
    loss = cfg.module.get("loss") if "loss" in cfg.module else None
    if loss is not None and str(OmegaConf.select(loss, "neuron.target_smooth_sigma_bins", default="")) == "auto":
        if not hasattr(dm, "tensors"):
            raise UserError("loss.neuron.target_smooth_sigma_bins=auto needs recorded trials (data=sc_mat or synthetic)")
        from eirnn.baselines.psth import choose_psth_smoothing
        choice = choose_psth_smoothing(dm, seed=int(cfg.get("seed", 0)))
        loss = OmegaConf.to_container(loss, resolve=True)
        loss["neuron"]["target_smooth_sigma_bins"] = choice["sigma_bins"]
        kwargs["loss"] = loss
        log.info("L_neuron target smoothing: sigma %.3g bins, chosen on the training trials (inner-CV psth_corr %s)",
                 choice["sigma_bins"], {k: round(v, 4) for k, v in choice["cv_scores"].items()})
    module = instantiate(cfg.module, model=model, **kwargs, _convert_="all")
    model_spec, module_spec = getattr(model, "_eirnn_spec", None), _spec(cfg.module, kwargs)
    if model_spec is not None and module_spec is not None:
        module.rebuild_spec = {"model": model_spec, "module": module_spec}
    return module


def _spec(node: DictConfig, kwargs: dict) -> dict | None:
    """``node`` resolved to plain containers with ``kwargs`` over it (a constructor call that
    :func:`rebuild` repeats), or ``None`` when it does not resolve outside the run."""
    from eirnn.training.rebuild import plain

    try:
        out = OmegaConf.to_container(node, resolve=True)
    except Exception:  # an interpolation of the Hydra runtime: no spec, the run folder's config rebuilds
        return None
    out.update(plain(kwargs))
    return out


def rebuild(spec: dict):
    """Model and LightningModule from a checkpoint's ``eirnn_spec`` (see :mod:`eirnn.training.rebuild`)."""
    from hydra.utils import instantiate

    model = instantiate(OmegaConf.create(spec["model"]))
    return instantiate(OmegaConf.create(spec["module"]), model=model, _convert_="all")


def read_checkpoint(path, module=None, label: str = "", hint: str = "use the overrides that trained it"):
    """Load a Lightning checkpoint file; a missing, truncated or corrupt file, or one of
    another model than ``module`` (a parameter missing or of another shape), is a
    :class:`UserError` naming the file (``label`` e.g. ``"ckpt_path="``) in one line, instead
    of a traceback from inside torch or Lightning. Returns the checkpoint dict."""
    import torch

    name = f"{label}{path}"
    if not Path(path).is_file():
        raise UserError(f"{name}: no such file")
    try:
        try:
            ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as err:  # older checkpoints hold omegaconf containers; the run's own file is trusted
            if "weights_only" not in str(err) and "Unsupported global" not in str(err):
                raise
            ckpt = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as err:  # truncated zip, not a torch file, unpickling error
        first = " ".join(str(err).split()).split(". ")[0]
        raise UserError(f"{name}: not a readable checkpoint (truncated or corrupt: {first})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise UserError(f"{name}: not a Lightning checkpoint (no state_dict)")
    if module is not None:
        problems = checkpoint_mismatch(ckpt["state_dict"], module.state_dict())
        if problems:
            raise UserError(f"{name}: belongs to another configuration ({problems}); {hint}")
    return ckpt


def check_resume_checkpoint(path: str, module) -> None:
    """``ckpt_path`` must be a readable checkpoint of this configuration (:func:`read_checkpoint`)."""
    read_checkpoint(path, module, label="ckpt_path=", hint="resume with the overrides that trained it")


def checkpoint_mismatch(saved: dict, expected: dict, limit: int = 3) -> str:
    """``""`` when ``saved`` fits ``expected`` (same keys and shapes), else the first differences."""
    out = []
    for k, v in expected.items():
        if k not in saved:
            out.append(f"{k} missing")
        elif tuple(getattr(saved[k], "shape", ())) != tuple(v.shape):
            out.append(f"{k} {list(saved[k].shape)} in the file, {list(v.shape)} in this config")
    extra = [k for k in saved if k not in expected]
    out += [f"{k} not in this model" for k in extra]
    if not out:
        return ""
    more = f" and {len(out) - limit} more" if len(out) > limit else ""
    return "; ".join(out[:limit]) + more
