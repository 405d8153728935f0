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
``module._target_`` names; :mod:`eirnn.runs.ensemble` builds the members from the config. The
single-model module and its ensemble share :class:`~eirnn.training.base.LifecycleModule`. Each
machinery module provides ``ENSEMBLE_MODULE``, ``OWN_DATA``, ``check_config(cfg)``,
``member_datamodules(dm, K)``, ``stack_models(members, seeds, cfg)`` (+ ``stack_data`` with
``OWN_DATA``), ``ensemble_callbacks(callbacks, module, out_dir)``,
``ensemble_report_lines(summary, out_dir)`` and an ``EnsembleArtifacts`` callback (a
:class:`~.members.MemberArtifacts`).
"""
from __future__ import annotations

from eirnn.training.ensemble.fit import (EnsembleArtifacts, EnsembleFitModule, ensemble_backward,  # noqa: F401
                                         ensemble_callbacks, ensemble_report_lines)
from eirnn.training.ensemble.members import (MemberArtifacts, MemberPlateau, clip_member_grad_norms_,  # noqa: F401
                                             ensemble_size, load_member_checkpoint, member_checkpoint,
                                             member_grad_norms)
