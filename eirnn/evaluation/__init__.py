"""Scoring trained runs against baselines and the noise ceiling.

``predict`` (a model's rates), ``score`` (metrics, baselines, ceilings), ``tables`` (files and
tables), ``run`` (one run folder, :func:`evaluate_run`), ``readout`` (the spike readout fit).
Definitions: experiments/evaluation.md. Command line: ``python -m eirnn.evaluate``.
"""
