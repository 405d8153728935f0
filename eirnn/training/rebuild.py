"""What a LightningModule's checkpoint holds to be rebuilt without Hydra.

``module.rebuild_spec`` (set by :func:`eirnn.runs.build.build_module`) is
``{"model": {"_target_": CLASS, **kwargs}, "module": {"_target_": CLASS, **kwargs}}`` in plain
containers (the constructor arguments as instantiated, data-derived ones included); the
module's ``on_save_checkpoint`` calls :func:`save_spec`, which stores it as
``checkpoint["eirnn_spec"]``. :func:`eirnn.runs.run_dir.load_checkpoint_module` reads it back.
"""
from __future__ import annotations

from typing import Any

__all__ = ["SPEC_KEY", "save_spec", "plain"]

SPEC_KEY = "eirnn_spec"


def plain(obj: Any) -> Any:
    """``obj`` as plain containers a ``weights_only`` load accepts (arrays and tensors -> lists)."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy array / scalar, torch tensor
        return obj.tolist()
    return obj


def save_spec(module: Any, checkpoint: dict) -> None:
    """Put ``module.rebuild_spec`` (when set) into ``checkpoint`` under :data:`SPEC_KEY`."""
    spec = getattr(module, "rebuild_spec", None)
    if spec:
        checkpoint[SPEC_KEY] = spec
