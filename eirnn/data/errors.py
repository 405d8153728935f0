"""Error type raised for any malformed or unreadable session file."""
from __future__ import annotations

import os
from typing import Optional

from eirnn.errors import UserError

__all__ = ["DataFormatError"]


class DataFormatError(UserError, ValueError):
    """A session file (or in-memory Session) does not follow the export schema.

    Attributes:
        path: the offending file (str) or a session's ``source``; may be None.
        field: the schema field at fault (e.g. ``"firing_rates"``), or None when
            the problem concerns the whole file (not found, not a MATLAB file).
        message: the explanation without path/field prefix.

    ``str(err)`` is a single line::

        <path>: field 'firing_rates': expected 3 dimensions [...], got shape (3, 4)
        <path>: file not found
    """

    def __init__(self, path: Optional[os.PathLike | str], field: Optional[str], message: str):
        self.path = None if path is None else os.fspath(path)
        self.field = field
        self.message = " ".join(str(message).split())  # force one line
        super().__init__(self.path, self.field, self.message)

    def __str__(self) -> str:
        where = self.path if self.path is not None else "<unknown>"
        if self.field is None:
            return f"{where}: {self.message}"
        return f"{where}: field '{self.field}': {self.message}"

    def __reduce__(self):  # keep pickling (multiprocessing, Lightning) working
        return (type(self), (self.path, self.field, self.message))
