"""Process-wide CPU run-time settings of a fit: torch threads and the C allocator.

:func:`configure` is called once by ``python -m eirnn.train`` (config keys ``threads`` and
``malloc_tuning``) and by the benchmark (:mod:`benchmarks.run`).

* ``threads``: ``auto`` keeps torch's choice (one intra-op thread per core, or
  ``OMP_NUM_THREADS``); an integer ``N`` calls ``torch.set_num_threads(N)``.
* ``malloc_tuning`` (glibc only): ``mallopt(M_MMAP_THRESHOLD, 32 MiB)`` and
  ``mallopt(M_TRIM_THRESHOLD, 2 GiB)``. A training step allocates and frees tens of
  buffers of 1-30 MB (states, rates, loss intermediates, gradients); by default glibc
  serves many of them with fresh ``mmap`` pages or trims the freed heap, so every step
  pays for the page faults of touching that memory again (measured on the real session,
  full batch, 1 thread: ~25-57k minor faults per step, ~0.2 s of a ~1 s step under load;
  with the tuning: 0 faults, see ``experiments/speed.md``). With the tuning, blocks below
  32 MiB come from the heap and freed memory stays in the process for reuse. Allocations
  above 32 MiB still use ``mmap`` (glibc's upper limit for the threshold). The cost: the
  process keeps its peak heap size instead of returning it to the OS.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["configure", "tune_malloc", "resolve_threads"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's maximum (HEAP_MAX_SIZE / 2 on 64-bit)
TRIM_THRESHOLD = 2 ** 31 - 1  # mallopt takes an int: ~2 GiB
_malloc_state: str | None = None


def tune_malloc() -> str:
    """Apply the glibc ``mallopt`` settings above (once per process); returns a one-line status."""
    global _malloc_state
    if _malloc_state is not None:
        return _malloc_state
    if not sys.platform.startswith("linux"):
        _malloc_state = "malloc tuning: not applied (not Linux)"
        return _malloc_state
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        _malloc_state = "malloc tuning: not applied (no glibc mallopt)"
        return _malloc_state
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok_mmap = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    ok_trim = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    _malloc_state = ("malloc tuning: on (mmap threshold 32 MiB, no heap trimming)" if ok_mmap and ok_trim
                     else f"malloc tuning: partly rejected by mallopt (mmap {ok_mmap}, trim {ok_trim})")
    return _malloc_state


def resolve_threads(threads) -> int | None:
    """``auto`` / ``None`` -> ``None`` (torch's choice); an integer >= 1 -> that number.

    Raises ``ValueError`` naming the ``threads`` setting otherwise.
    """
    if threads is None or (isinstance(threads, str) and threads.strip().lower() in ("auto", "")):
        return None
    try:
        n = int(threads)
    except (TypeError, ValueError):
        raise ValueError(f"threads must be 'auto' or a positive integer, got {threads!r}") from None
    if n < 1 or str(n) != str(threads).strip():
        raise ValueError(f"threads must be 'auto' or a positive integer, got {threads!r}")
    return n


def configure(threads="auto", malloc_tuning: bool = True) -> str:
    """Set torch's intra-op threads and (optionally) tune glibc malloc; returns a status line."""
    import torch

    n = resolve_threads(threads)
    if n is not None:
        torch.set_num_threads(n)
    parts = [f"torch threads {torch.get_num_threads()}"
             + ("" if n is not None else f" (auto; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})")]
    if malloc_tuning:
        parts.append(tune_malloc())
    return "; ".join(parts)
