"""Whole training steps (and validation forwards) replayed as CUDA graphs.

On a GPU the fit is bound by kernel-launch latency, not arithmetic: one optimiser step of the
default configuration runs ~220 sequential time steps forward and again backward, each a
handful of kernels on ``[32, 80]`` tiles (experiments/speed.md, "GPU"). A CUDA graph records
those launches once and replays them as one submission. :class:`StepGraphs` keeps one graph per
*key* (the batch shapes and whatever else changes the sequence of kernels, e.g. whether
``L_trial`` is active), built the first time the key is seen::

    first call of a key:  out = fn(**inputs)               # eagerly, on the capture stream
                          capture fn(**static_inputs)      # recorded, not executed
    later calls:          static_inputs <- inputs (device copies); replay; out = static outputs

So every step computes exactly what the eager step computes on the same inputs; the first
step of each key runs eagerly (it also creates lazily built state: the optimiser's moments,
cached bands). Requirements of ``fn`` (checked by the CUDA tests): no host synchronisation,
no host-side decision on device values, every tensor it reads that is not an input kept alive
by its owner (parameters, optimiser state, cached noise), and every Python scalar it bakes in
constant for the key (a learning rate that changes is a device tensor the caller fills before
the replay). While a graph is captured, :func:`capturing` is true: module-level buffer caches
(:func:`eirnn.models.recurrence._scratch`) then allocate private buffers, and
:func:`keep_alive` pins cached tensors the graph reads (``eirnn.losses.trial`` bands).

Outputs are the graph's static tensors, overwritten by the next replay of the same key: copy
what must outlive it.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch

log = logging.getLogger(__name__)

__all__ = ["StepGraphs", "capturing", "keep_alive"]

_STATE: dict[str, Any] = {"capturing": False, "keep": None}


def capturing() -> bool:
    """Whether a CUDA graph is being captured by :class:`StepGraphs` right now."""
    return bool(_STATE["capturing"])


def keep_alive(t: torch.Tensor) -> torch.Tensor:
    """Pin ``t`` (a cached tensor read by the graph being captured) for the graph's lifetime."""
    if _STATE["capturing"] and _STATE["keep"] is not None:
        _STATE["keep"].append(t)
    return t


@contextmanager
def _capture_scope(keep: list) -> Iterator[None]:
    prev = dict(_STATE)
    _STATE.update(capturing=True, keep=keep)
    try:
        yield
    finally:
        _STATE.update(prev)


class _Entry:
    def __init__(self, graph, inputs, outputs, keep):
        self.graph, self.inputs, self.outputs, self.keep = graph, inputs, outputs, keep
        self.replays = 0


class StepGraphs:
    """One captured CUDA graph per key; see the module docstring.

    ``run(key, fn, inputs, setup=None)``: ``inputs`` is a dict of device tensors (the dynamic
    inputs, copied into static buffers before a replay); ``fn(**inputs)`` returns a dict of
    tensors (or ``None`` values). ``setup(capture: bool)`` is called just before the eager
    call (``False``) and just before the capture (``True``), as a context manager, to switch
    whatever the capture needs (e.g. an optimiser's learning rate to a device tensor).
    """

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.entries: dict[Any, _Entry] = {}
        self.stream = torch.cuda.Stream(device=self.device)
        self.captures = 0
        self.failed: str | None = None  # why a capture failed (every call then runs eagerly)

    def __contains__(self, key) -> bool:
        return key in self.entries

    def run(self, key, fn: Callable[..., dict], inputs: dict[str, torch.Tensor],
            setup: Callable[[bool], Any] | None = None) -> dict[str, torch.Tensor | None]:
        entry = self.entries.get(key)
        if entry is not None:
            for k, v in inputs.items():
                entry.inputs[k].copy_(v)
            entry.graph.replay()
            entry.replays += 1
            return entry.outputs
        # eagerly, on the capture stream (as PyTorch's graph examples warm up): autograd nodes that
        # outlive this call (a parameter's AccumulateGrad) then belong to the stream the graph is
        # captured on; a node of another stream would make the capture wait for it, which fails
        cur = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(cur)
        with torch.cuda.stream(self.stream), (setup(False) if setup is not None else _null()):
            out = fn(**inputs)
        cur.wait_stream(self.stream)
        for t in out.values():
            if t is not None:
                t.record_stream(cur)  # used on the current stream from now on
        if self.failed is not None:
            return out
        static = {k: v.clone() for k, v in inputs.items()}
        graph = torch.cuda.CUDAGraph()
        keep: list = []
        try:
            with _capture_scope(keep), (setup(True) if setup is not None else _null()):
                with torch.cuda.graph(graph, stream=self.stream):
                    outputs = fn(**static)
        except Exception as err:  # noqa: BLE001 - e.g. an op that cannot be captured: stay eager
            self.failed = f"{type(err).__name__}: {err}"
            log.warning("CUDA graph capture failed (%s); the steps run eagerly", self.failed)
            return out
        self.entries[key] = _Entry(graph, static, outputs, keep)
        self.captures += 1
        return out

    def clear(self) -> None:
        self.entries.clear()


@contextmanager
def _null() -> Iterator[None]:
    yield
