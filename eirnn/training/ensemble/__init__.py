"""``K`` seeds trained at once as one batched model: ``python -m eirnn.train ... ensemble.size=K``.

One machinery for recorded-data fits and task networks:

- :mod:`.members`: what every ensemble shares -- per-member gradient clipping and plateau, the
  ONE member checkpoint format (``members/m{k}/checkpoints/{best,last}.ckpt``) and the callback
  that writes it, the config helpers;
- :mod:`.fit`: fits to recorded data (:class:`~eirnn.models.ensemble.EnsembleEIRNN`, per-member
  balancing through :meth:`~eirnn.training.balancer.GradientBalancer.backward` with ``members=K``,
  per-member early stopping and plateau);
- :mod:`.task`: task networks (System A; member ``k`` also gets the trials of seed ``k``).

Which one trains a config is the ``ensemble_machinery`` of the module class that the config's
``module._target_`` names (:func:`machinery`); the single-model module and its ensemble share
:class:`~eirnn.training.base.LifecycleModule`. Each machinery module provides
``build_datamodule(cfg, dm, K)``, ``build_ensemble(cfg, dm, K) -> (model, module)``,
``ensemble_callbacks(callbacks, module, out_dir)``, ``ensemble_report_lines(summary, out_dir)``
and an ``EnsembleArtifacts`` callback (a :class:`~.members.MemberArtifacts`).
"""
from __future__ import annotations

import importlib

from eirnn.training.ensemble.fit import (EnsembleArtifacts, EnsembleFitModule, build_ensemble,  # noqa: F401
                                         ensemble_backward, ensemble_callbacks, ensemble_report_lines)
from eirnn.training.ensemble.members import (MemberArtifacts, MemberPlateau, clip_member_grad_norms_,  # noqa: F401
                                             ensemble_size, load_member_checkpoint, member_checkpoint,
                                             member_grad_norms)


def machinery(cfg):
    """The ensemble machinery module (:mod:`.fit` or :mod:`.task`) of the config's module class
    (its ``ensemble_machinery``); :class:`~eirnn.errors.UserError` when it has none."""
    from hydra.utils import get_class

    from eirnn.errors import UserError

    target = str(cfg.module.get("_target_", ""))
    try:
        name = getattr(get_class(target), "ensemble_machinery", None)
    except Exception as err:
        raise UserError(f"module._target_={target}: {err}") from err
    if not name:
        raise UserError(f"ensemble.size > 1 is not supported for module {target}: it trains fits to recorded "
                        "data (module=fit) and System A task networks (module=task_system_a)")
    return importlib.import_module(name)
