"""Artifacts of a finished run: arrays (``artifacts``), figures (``figures``), the markdown
report (``report``). ``python -m eirnn.export RUN_DIR`` writes them all (see :mod:`eirnn.export`)."""
