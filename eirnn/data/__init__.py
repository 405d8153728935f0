"""Data layer: the lab's MATLAB session exports, NWB files, plain arrays (.npz/.h5),
synthetic teacher sessions, and the Lightning data module.

Public API::

    from eirnn.data import (Session, DataFormatError, load_mat, save_mat, load_session,
                            make_synthetic_session, SessionDataModule, INPUT_CHANNELS,
                            load_nwb, save_nwb, load_arrays, save_arrays)

Arrays in a :class:`Session` are float64 numpy ([trials, time, neurons] /
[trials, time, 14]); batches from :class:`SessionDataModule` are float32 torch tensors.
``SessionDataModule`` (and torch / lightning) is imported lazily on first access.
"""
from .errors import DataFormatError
from .session import INPUT_CHANNELS, Session, session_to_tensors, zscore_eye
from .mat_io import load_mat, read_mat_fields, save_mat
from .nwb_io import load_nwb, save_nwb
from .arrays_io import load_arrays, save_arrays
from .sources import detect_format, load_session
from .synthetic import make_synthetic_session, make_teacher, simulate_teacher

_LAZY = {"SessionDataModule", "TrialBatchLoader", "apply_filters", "stratified_split"}


def __getattr__(name):  # import torch/lightning only when the data module is wanted
    if name in _LAZY:
        from . import datamodule
        return getattr(datamodule, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "Session", "DataFormatError", "load_mat", "save_mat", "load_session",
    "make_synthetic_session", "SessionDataModule", "INPUT_CHANNELS",
    "read_mat_fields", "session_to_tensors", "zscore_eye", "make_teacher", "simulate_teacher",
    "TrialBatchLoader", "apply_filters", "stratified_split", "load_nwb", "save_nwb", "load_arrays",
    "save_arrays",
]
