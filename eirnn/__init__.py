"""eirnn: fit excitatory-inhibitory (Dale's law) RNNs to neural recordings and train task RNNs.

Entry points: ``python -m eirnn.train`` (Hydra; configs in ``conf/``).
Submodules are imported lazily so ``python -m eirnn.train --help`` stays fast.
"""
__version__ = "0.1.0"
