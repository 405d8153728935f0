"""Process-wide CPU run-time settings of a fit: torch threads and the C allocator.

:func:`configure` is called once by ``python -m eirnn.train`` (config keys ``threads`` and
``malloc_tuning``) and by the benchmark (:mod:`benchmarks.run`).

* ``threads``: an integer ``N`` calls ``torch.set_num_threads(N)``. ``auto``: with
  ``OMP_NUM_THREADS`` set, torch's choice (that number); otherwise one thread per core
  that is idle at start-up, ``round(cores - 1-minute load average)``, at least 1 and at most
  torch's default. On a machine shared with other jobs, intra-op threads that have to wait
  for a descheduled partner make every parallel region slow: measured on this project's
  2-core machine at load ~4, one epoch of the default real-data fit took 1.9 s with 1
  thread and 13.6 s with 2 (experiments/speed.md); on an idle machine 2 threads gain
  ~10-15%.
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

__all__ = ["configure", "tune_malloc", "resolve_threads", "auto_threads"]

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


def auto_threads(default: int, cores: int | None = None, load: float | None = None) -> int:
    """Threads for ``threads=auto`` without ``OMP_NUM_THREADS``: the idle cores, ``round(cores - load)``,
    clipped to ``[1, default]``."""
    cores = cores if cores is not None else (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                             else (os.cpu_count() or 1))
    if load is None:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(int(default), int(round(cores - load))))


def configure(threads="auto", malloc_tuning: bool = True) -> str:
    """Set torch's intra-op threads and (optionally) tune glibc malloc; returns a status line."""
    import torch

    n = resolve_threads(threads)
    note = ""
    if n is None and os.environ.get("OMP_NUM_THREADS"):
        note = f" (auto: OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']})"
    elif n is None:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        n = auto_threads(torch.get_num_threads(), load=load)
        note = f" (auto: 1-min load {load:.1f} on {os.cpu_count()} cores)"
    if n is not None:
        torch.set_num_threads(n)
    parts = [f"torch threads {torch.get_num_threads()}{note}"]
    if malloc_tuning:
        parts.append(tune_malloc())
    return "; ".join(parts)
