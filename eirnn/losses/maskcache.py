"""Per-tensor caches for the data side of the losses (performance only: the same values).

While the same target / mask tensors are fed (full-batch training, a fixed validation
set), what the losses compute from them alone does not change: the mask counts of a masked
mean, the population trajectory of the recorded trials, its smoothing and z-scoring. Those
results are kept per tensor *object* and reused while the tensor is unmodified (its version
counter is checked); tensors that require gradients are never cached. At most a few entries
are kept (strong references, so an ``id`` cannot be reused while cached).

:func:`mask_counts` also tells whether a mask is entirely ``True`` (decided on the CPU only:
on a GPU it would need a host synchronisation); ``torch.where(mask, x, 0)`` is then ``x``
itself and the losses skip the copy.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["TensorCache", "mask_counts"]

CAPACITY = 4


class TensorCache:
    """``get(tensors, key)`` / ``put(tensors, value, key)`` keyed on tensor identity and version."""

    def __init__(self, capacity: int = CAPACITY):
        self.capacity = int(capacity)
        self.entries: list = []  # (tensors, versions, key, value)

    def get(self, tensors, key=None):
        for t, v, k, value in self.entries:
            if k == key and len(t) == len(tensors) and all(a is b for a, b in zip(t, tensors)) \
                    and v == tuple(x._version for x in tensors):
                return value
        return None

    def put(self, tensors, value, key=None):
        if any(x.requires_grad for x in tensors):
            return value
        self.entries.append((tuple(tensors), tuple(x._version for x in tensors), key, value))
        if len(self.entries) > self.capacity:
            self.entries.pop(0)
        return value

    def clear(self) -> None:
        self.entries.clear()


_MASKS = TensorCache(capacity=8)


def mask_counts(mask: Tensor, dim: int) -> tuple[bool, Tensor, Tensor]:
    """``(all_valid, max(count, 1), count > 0)`` with ``count = mask.sum(dim)`` (int32), cached per mask."""
    hit = _MASKS.get((mask,), dim)
    if hit is not None:
        return hit
    count = mask.sum(dim=dim, dtype=torch.int32)  # (an int32 count of a bool tensor is ~4x faster than int64)
    all_valid = bool(mask.all()) if mask.device.type == "cpu" else False
    return _MASKS.put((mask,), (all_valid, count.clamp_min(1), count > 0), dim)
