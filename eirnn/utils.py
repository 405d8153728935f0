"""Small helpers shared across modules."""
from __future__ import annotations

from typing import Any, Iterable


def flatten_config(cfg: Any, prefix: str = "", skip: Iterable[str] = ()) -> dict[str, Any]:
    """Flatten a nested dict/list config to ``{"a.b.c": scalar}`` (lists and None become strings)."""
    skip = set(skip)
    out: dict[str, Any] = {}
    if isinstance(cfg, dict):
        for k, v in cfg.items():
            if not prefix and k in skip:
                continue
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, dict):
                out.update(flatten_config(v, key))
            elif isinstance(v, (int, float, bool, str)):
                out[key] = v
            else:
                out[key] = str(v)
    return out
