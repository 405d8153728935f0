"""Old import path of :mod:`eirnn.data.task_base` (kept for checkpoints and code that name it)."""
import importlib
import sys

sys.modules[__name__] = importlib.import_module('eirnn.data.task_base')
