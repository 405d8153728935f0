"""Speed benchmarks of the fit (``python -m benchmarks.run``)."""
