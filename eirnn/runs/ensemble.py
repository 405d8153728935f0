"""Ensemble wiring (``ensemble.size=K``): a config -> the members' data, the stacked model and the
ensemble module, for whichever machinery of :mod:`eirnn.training.ensemble` the config's module
class names (its ``ensemble_machinery``: ``fit`` for recorded-data fits, ``task`` for System A).

Member ``k`` is built exactly as the single run of ``seed + k`` (:func:`~eirnn.runs.build.build_model`
on the config with that seed); the machinery says whether it also gets that run's own data
(``OWN_DATA``), how the members are stacked (``stack_data``, ``stack_models``), what it refuses
(``check_config``) and which module trains them (``ENSEMBLE_MODULE``, same settings as the
config's module).

``ensemble.vary={key: [v_0, ..., v_{K-1}]}`` (fits only; keys in
:data:`~eirnn.training.ensemble.members.VARY_KEYS`): member ``k`` is the single run with
``key=v_k`` as well; ``ensemble.same_seed=true``: every member is built with ``seed`` (the same
initialisation and noise), not ``seed + k``.
"""
from __future__ import annotations

import importlib

from eirnn.errors import UserError
from eirnn.runs.build import build_datamodule as _build_one_datamodule
from eirnn.runs.build import build_model, build_module
from eirnn.training.ensemble.members import (ensemble_same_seed, ensemble_size, ensemble_vary, with_module_target,
                                             with_seed, with_values)

__all__ = ["ensemble_size", "ensemble_vary", "ensemble_same_seed", "machinery", "build_datamodule", "build_ensemble"]


def machinery(cfg):
    """The machinery module (:mod:`eirnn.training.ensemble.fit` or ``.task``) of the config's module
    class; :class:`~eirnn.errors.UserError` when that class has none."""
    from hydra.utils import get_class

    target = str(cfg.module.get("_target_", ""))
    try:
        name = getattr(get_class(target), "ensemble_machinery", None)
    except Exception as err:
        raise UserError(f"module._target_={target}: {err}") from err
    if not name:
        raise UserError(f"ensemble.size > 1 is not supported for module {target}: it trains fits to recorded "
                        "data (module=fit) and System A task networks (module=task_system_a)")
    return importlib.import_module(name)


def build_datamodule(cfg, dm0, size: int):
    """The ensemble's data: ``dm0`` (the data module of ``cfg``), shared by every member, or -- for a
    machinery whose members get their own data -- ``dm0`` and the data modules of ``seed + k``
    (k = 1 .. K-1) stacked."""
    mach = machinery(cfg)
    if not mach.OWN_DATA:
        return dm0
    members = [dm0] + [_build_one_datamodule(with_seed(cfg, int(cfg.seed) + k)) for k in range(1, size)]
    try:
        return mach.stack_data(members)
    except ValueError as err:
        raise UserError(f"ensemble: {err}") from err


def build_ensemble(cfg, dm, size: int):
    """``(model, module)``: the ``K`` members (seeds ``seed .. seed+K-1``) stacked, and the
    machinery's ensemble module around them (``dm``: from :func:`build_datamodule`)."""
    mach = machinery(cfg)
    mach.check_config(cfg)
    if cfg.get("export"):
        raise UserError("export=true is not supported with ensemble.size > 1 (each member's weights are "
                        "written to members/m{k}/checkpoints/)")
    vary = ensemble_vary(cfg, size)
    same = ensemble_same_seed(cfg)
    if (vary or same) and not hasattr(mach.ENSEMBLE_MODULE, "set_member_settings"):
        raise UserError(f"ensemble.vary / ensemble.same_seed are supported for fits to recorded data (module=fit), "
                        f"not for module {cfg.module.get('_target_')}")
    seeds = [int(cfg.seed) + (0 if same else k) for k in range(size)]
    try:
        member_dms = mach.member_datamodules(dm, size)
    except ValueError as err:
        raise UserError(f"ensemble: {err}") from err
    members = [build_model(with_seed(cfg, s), d) for s, d in zip(seeds, member_dms)]
    try:
        model = mach.stack_models(members, seeds, cfg)
    except ValueError as err:
        raise UserError(f"ensemble: {err}") from err
    try:
        mcfg = with_module_target(cfg, mach.ENSEMBLE_MODULE)
        if "optim.lr" in vary:  # the optimiser runs at the largest lr; member k's step is scaled to lr_k
            mcfg = with_values(mcfg, {"optim.lr": max(vary["optim.lr"])})
        module = build_module(mcfg, model, dm)
        if vary or same:
            module.set_member_settings(vary, [s - int(cfg.seed) for s in seeds])
    except Exception as err:  # the module's own refusals (e.g. a plateau schedule for task members)
        cause = err.__cause__ if err.__cause__ is not None else err
        if isinstance(cause, ValueError):
            raise UserError(f"ensemble: {cause}") from err
        raise
    return model, module
