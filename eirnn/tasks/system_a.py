"""Old import path of :mod:`eirnn.data.system_a` (kept for checkpoints and code that name it)."""
import importlib
import sys

sys.modules[__name__] = importlib.import_module('eirnn.data.system_a')
