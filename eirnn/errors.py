"""One error type for the user's mistakes, shared by every command.

:class:`UserError` is a problem with what the user gave (a setting, a file, a run folder),
not a bug: every command line (``eirnn.train``, ``eirnn.cv``, ``eirnn.evaluate``,
``eirnn.export``, ``eirnn.fit_readout``, ``eirnn.sweep_report``, ``eirnn.data.report``,
``eirnn.data.convert``, ``eirnn.analysis.*``) prints ``error: <message>`` in one line and exits
with status :data:`EXIT_USER_ERROR` (2); :func:`cli_main` is that wrapper (``eirnn.train`` and
the run-folder guard also record the failure in ``metrics.json``).
The older names (``DataFormatError``, ``EvaluationError``, ``ExportError``,
``AnalysisError``, ``SweepReportError``, ``eirnn.train.UserError``) are subclasses of it
or this class itself, so ``except UserError`` catches them all.

Exit statuses of ``python -m eirnn.train`` / ``eirnn.cv``:

==========  ==========================================================================
0           completed, or early stopped
1           failed with a traceback (a bug, or an error outside the user's control)
2           a user error (one line on stderr; includes a full disk, :class:`DiskFullError`)
3           diverged (:data:`EXIT_DIVERGED`): non-finite metrics or weights; nothing fitted to it
128 + sig   interrupted by a signal (130 Ctrl+C, 143 SIGTERM), after every file is written
==========  ==========================================================================
"""
from __future__ import annotations

import functools
import sys

__all__ = ["UserError", "ConfigError", "DiskFullError", "RunFolderError", "EXIT_USER_ERROR", "EXIT_DIVERGED",
           "one_line", "exit_user_error", "cli_main"]

EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3


def one_line(text: object) -> str:
    """``text`` with every run of whitespace (newlines included) made one space."""
    return " ".join(str(text).split())


class UserError(Exception):
    """A problem with the user's input (bad data file, setting, run folder): reported in one line."""

    def __str__(self) -> str:
        return one_line(super().__str__())


class ConfigError(UserError, ValueError):
    """A configuration value out of its range or of the wrong type (``eirnn/config_check.py``)."""


class RunFolderError(UserError):
    """A run folder that belongs to another run, or is still being written by a live process."""


class DiskFullError(UserError, OSError):
    """A write failed for lack of space (ENOSPC/EDQUOT); the previous file is left as it was."""

    def __str__(self) -> str:  # the message alone, not OSError's "[Errno 28] ..."
        return one_line(self.strerror if self.strerror else super().__str__())


def exit_user_error(err: BaseException, prog: str | None = None) -> int:
    """Print ``error: <message>`` on stderr in one line; returns :data:`EXIT_USER_ERROR`."""
    prefix = f"{prog}: " if prog else ""
    print(f"{prefix}error: {one_line(err)}", file=sys.stderr, flush=True)
    return EXIT_USER_ERROR


def cli_main(fn=None, *, also: tuple = (), hint=None, prog: str | None = None, sys_exit: bool = False, log=None):
    """Decorate a command line's ``main``: a :class:`UserError` (or one of the types in ``also``)
    raised inside it prints ``error: <message>`` in one line (``hint(message)`` when given, and
    ``log.error`` too when given) and gives :data:`EXIT_USER_ERROR`: ``main`` returns 2, or with
    ``sys_exit=True`` (Hydra mains, whose return value is the sweep objective) ``sys.exit(2)``.
    Use bare (``@cli_main``) or with options (``@cli_main(also=(ValueError,))``)."""
    def wrap(main):
        @functools.wraps(main)
        def run(*args, **kwargs):
            try:
                return main(*args, **kwargs)
            except (UserError, *also) as err:
                msg = hint(str(err)) if hint is not None else err
                if log is not None:
                    log.error("%s", msg)
                code = exit_user_error(msg, prog)
                if sys_exit:
                    sys.exit(code)
                return code
        return run

    return wrap(fn) if fn is not None else wrap
