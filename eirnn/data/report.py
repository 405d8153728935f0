"""Old name of :mod:`eirnn.data.quality` (the data-quality report): ``python -m eirnn.data.report FILE``
runs it; importing this module gives :mod:`eirnn.data.quality` itself."""
import importlib
import sys

if __name__ == "__main__":
    sys.exit(importlib.import_module("eirnn.data.quality").main())
sys.modules[__name__] = importlib.import_module("eirnn.data.quality")
