"""Old import path of :mod:`eirnn.training.ensemble.task` (kept for code that names it)."""
import importlib
import sys

sys.modules[__name__] = importlib.import_module("eirnn.training.ensemble.task")
