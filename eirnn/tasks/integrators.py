"""Old import path of :mod:`eirnn.models.integrators` (kept for checkpoints and code that name it)."""
import importlib
import sys

sys.modules[__name__] = importlib.import_module('eirnn.models.integrators')
