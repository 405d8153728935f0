"""Base class of the task data modules: trials generated once, served as batch dicts.

A task generates a fixed training set and a fixed validation set in :meth:`setup` from its
seed (deterministic: same seed, same trials), as dicts of tensors with trials first::

    inputs [B, T, n_inputs] float32   the input channels on the data grid (step ``dt``)
    target [B, T, n_outputs] float32  the desired readout (0 where undefined)
    mask   [B, T, n_outputs] bool     True where the loss is evaluated

plus task-specific per-trial labels.  Batches are cut by
:class:`eirnn.data.datamodule.TrialBatchLoader` (training order reshuffled each epoch from
``shuffle_seed + epoch``).
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import lightning as L
import torch

from eirnn.data.datamodule import TrialBatchLoader


class TaskDataModule(L.LightningDataModule):
    """Subclasses implement :meth:`generate` (split -> tensors) and :meth:`config` (task parameters)."""

    n_inputs: int = 1
    n_outputs: int = 1

    def __init__(self, n_train: int, n_val: int, batch_size: int, seed: int, shuffle_seed: Optional[int], dt: float):
        super().__init__()
        if int(n_train) < 1 or int(n_val) < 1:
            raise ValueError(f"n_train and n_val must be >= 1 (got {n_train}, {n_val})")
        if float(dt) <= 0:
            raise ValueError(f"dt must be > 0, got {dt}")
        self.n_train, self.n_val = int(n_train), int(n_val)
        self.batch_size = int(batch_size or 0)
        self.seed = int(seed)
        self.shuffle_seed = self.seed if shuffle_seed is None else int(shuffle_seed)
        self.dt = float(dt)
        self._data: Dict[str, Dict[str, torch.Tensor]] = {}

    # -------------------------------------------------------------- subclass
    def generate(self, split: str) -> Dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def config(self) -> Dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    # ----------------------------------------------------------------- setup
    def setup(self, stage: Optional[str] = None) -> None:
        if not self._data:
            self._data = {"train": self.generate("train"), "val": self.generate("val")}

    def tensors(self, split: str = "train") -> Dict[str, torch.Tensor]:
        self.setup()
        return self._data[split]

    def model_kwargs(self) -> Dict[str, Any]:
        """Data-derived model arguments (used where the model config leaves them null)."""
        return {"n_inputs": self.n_inputs, "n_outputs": self.n_outputs, "dt": self.dt, "input_dt": self.dt}

    def module_kwargs(self) -> Dict[str, Any]:
        """The task parameters travel with the LightningModule into its checkpoints (for the analyses)."""
        return {"task_config": {"target": f"{type(self).__module__}.{type(self).__qualname__}", "kwargs": self.config()}}

    def summary(self) -> Dict[str, Any]:
        self.setup()
        tr = self._data["train"]
        return {"task": type(self).__name__, "n_train": self.n_train, "n_val": self.n_val,
                "n_time": int(tr["inputs"].shape[1]), "dt": self.dt, "batch_size": self.batch_size,
                "n_train_batches": len(self.train_dataloader())}

    def describe(self) -> str:
        s = self.summary()
        return (f"{s['task']}: {s['n_train']} train / {s['n_val']} val trials, {s['n_time']} bins of {s['dt']:g}, "
                f"batch {s['batch_size'] or 'full'} -> {s['n_train_batches']} batches/epoch (seed {self.seed})")

    # ------------------------------------------------------------ dataloaders
    def _epoch(self) -> Optional[int]:
        trainer = getattr(self, "trainer", None)
        return None if trainer is None else int(trainer.current_epoch)

    def train_dataloader(self) -> TrialBatchLoader:
        return TrialBatchLoader(self.tensors("train"), self.batch_size, shuffle=True, seed=self.shuffle_seed,
                                epoch_source=self._epoch)

    def val_dataloader(self) -> TrialBatchLoader:
        return TrialBatchLoader(self.tensors("val"), max(self.batch_size, 256), shuffle=False)
