"""Analyses of trained task RNNs: ``python -m eirnn.analysis.context_switch RUN_DIR`` and
``python -m eirnn.analysis.system_a SWEEP_DIR``; shared helpers in :mod:`eirnn.analysis.common`."""
