"""One entry point for session files: the format from the file name, then its reader.

``load_session(path, format=None, options=None)``: the lab's MAT export
(:func:`eirnn.data.mat_io.load_mat`), NWB (:func:`eirnn.data.nwb_io.load_nwb`) or arrays
(:func:`eirnn.data.arrays_io.load_arrays`); every session is validated
(:func:`eirnn.data.validate.validate_session`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict

from .arrays_io import load_arrays
from .errors import DataFormatError
from .mat_io import load_mat
from .nwb_io import load_nwb
from .session import Session
from .validate import validate_session

__all__ = ["FORMATS", "detect_format", "load_session"]

PathLike = "str | os.PathLike[str]"

FORMATS = ("mat", "nwb", "arrays")


def detect_format(path) -> str:
    """"mat", "nwb" or "arrays" from the file name (.mat / .nwb / .npz .h5 .hdf5)."""
    suffix = Path(os.fspath(path)).suffix.lower()
    return {".nwb": "nwb", ".npz": "arrays", ".h5": "arrays", ".hdf5": "arrays"}.get(suffix, "mat")


def load_session(path, format: str | None = None, options: Dict[str, Any] | None = None) -> Session:
    """Load a session file; ``format`` None = from the file name, ``options`` = the
    reader's options (not for MAT, whose schema is fixed)."""
    if path is None or (isinstance(path, str) and not path.strip()):
        raise DataFormatError(None, None, "no session path given")
    fmt = detect_format(path) if format in (None, "auto") else str(format)
    if fmt in ("nwb", "arrays"):
        reader = load_nwb if fmt == "nwb" else load_arrays
        try:
            session = reader(path, options)
        except DataFormatError as err:  # e.g. data=arrays given an .nwb file: say so beside the reader's complaint
            named = detect_format(path)
            if named != fmt and err.message != "file not found":
                groups = {"mat": "data=sc_mat", "nwb": "data=nwb", "arrays": "data=arrays"}
                raise DataFormatError(err.path, err.field, f"{err.message} (read as {fmt} ({groups[fmt]}); "
                                      f"the file's name says {named}: {groups[named]} reads it)") from None
            raise
    elif fmt == "mat":
        if options:
            raise DataFormatError(path, "options", "the MAT export takes no reader options (its schema is fixed)")
        return load_mat(path)  # validated in session_from_fields
    else:
        raise DataFormatError(path, "format", f"unknown data format {fmt!r}; one of {list(FORMATS)}")
    validate_session(session)
    return session
