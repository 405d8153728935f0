"""Old import paths of the task-RNN code, which now lives beside the rest of the package.

Each ``eirnn.tasks.<name>`` module is the moved module itself (an alias in ``sys.modules``), so
task checkpoints that name a class by its old path (``eirnn.tasks.lowrank.LowRankRNN``, ...)
and old imports still resolve:

=========================  ====================================================
old                        now
=========================  ====================================================
``tasks.lowrank``          :mod:`eirnn.models.ctx_lowrank` (context-switch low-rank net)
``tasks.system_a_model``   :mod:`eirnn.models.system_a`
``tasks.integrators``      :mod:`eirnn.models.integrators`
``tasks.tanh_recurrence``  :mod:`eirnn.models.tanh_recurrence`
``tasks.datamodule``       :mod:`eirnn.data.task_base`
``tasks.context_switch``   :mod:`eirnn.data.context_switch`
``tasks.system_a``         :mod:`eirnn.data.system_a`
``tasks.module``           :mod:`eirnn.training.task_module`
``tasks.callbacks``        :mod:`eirnn.training.task_callbacks`
``tasks.ensemble``         :mod:`eirnn.training.ensemble.task` (network: ``models.system_a.SystemAEnsembleRNN``)
``tasks.bench_system_a``   ``python -m benchmarks.system_a`` (repository's benchmarks/)
=========================  ====================================================
"""
