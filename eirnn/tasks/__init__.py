"""Task-trained RNNs in the eirnn framework (same entry point, configs, loop and logging as the SC fits).

- contextual switch task on a trainable low-rank RNN with a fixed random bulk
  (Mastrogiuseppe & Ostojic 2018): :mod:`eirnn.tasks.lowrank`, :mod:`eirnn.tasks.context_switch`;
- System A integration/memory task on a continuous-time RNN with a fixed random
  recurrent matrix: :mod:`eirnn.tasks.system_a_model`, :mod:`eirnn.tasks.system_a`;
- the fused tanh recurrence with a hand-written backward (:mod:`eirnn.tasks.tanh_recurrence`)
  and ``K`` System A seeds trained as one batched model (:mod:`eirnn.tasks.ensemble`,
  ``ensemble.size=K``);
- the shared LightningModule (:mod:`eirnn.tasks.module`), data-module base
  (:mod:`eirnn.tasks.datamodule`), integrators and callbacks.

Train with ``python -m eirnn.train experiment=context_switch`` / ``experiment=system_a``.
"""
