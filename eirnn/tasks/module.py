"""Old import path of :mod:`eirnn.training.task_module` (kept for checkpoints and code that name it)."""
import importlib
import sys

sys.modules[__name__] = importlib.import_module('eirnn.training.task_module')
