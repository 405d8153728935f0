"""Lightning data module serving whole trials of one session from memory.

Batches are dicts of tensors (B = trials in the batch, T bins, N neurons):

- ``inputs`` [B, T, C] float32, NaN -> 0.0 (C = 14 for the SC export; one more with
  ``inputs.reward_context``: the trial's blocked reward level, 1 high / 0 low, in every bin)
- ``rates`` [B, T, N] float32 (sp/s), NaN -> 0.0
- ``mask`` [B, T, N] bool, True = valid bin (``Session.missing_mask``)
- ``condition`` [B] int64 (``Session.condition_ids`` of the filtered session)
- ``trial`` [B] int64, trial index into ``dm.session`` (the filtered session;
  ``dm.kept_trials[trial]`` gives the index in the file as loaded)
- ``true_rates`` [B, T, N] float32, NaN -> 0.0 (synthetic sessions only)

All tensors are built once in :meth:`SessionDataModule.setup`; batches are served by
indexing (no torch DataLoader, no workers). Lightning moves the dict to the device.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import numpy as np
import torch

try:
    import lightning as L
except ImportError:  # pragma: no cover
    import pytorch_lightning as L  # type: ignore

from .errors import DataFormatError
from .sources import load_session
from .session import INPUT_CHANNELS, Session, session_to_tensors
from .splits import proportional_split, stratified_kfold, stratified_split
from .synthetic import make_synthetic_session

__all__ = ["SessionDataModule", "TrialBatchLoader", "stratified_split", "stratified_kfold", "apply_filters",
           "condition_grouped_order", "add_input_channels", "resolve_inputs", "BATCH_MODES"]

_FILTER_KEYS = ("min_duration_ms", "require_fixation")
_INPUT_KEYS = ("reward_context",)
BATCH_MODES = ("random", "condition")


def apply_filters(session: Session, filters: Optional[Dict[str, Any]]
                  ) -> Tuple[np.ndarray, Dict[str, int]]:
    """Trial filters, applied in order ``min_duration_ms`` then ``require_fixation``.

    Returns (kept trial indices into ``session``, report) where report maps each
    applied filter to the number of trials it removed, plus ``n_before``/``n_after``.
    ``min_duration_ms``: drop trials with trial_duration_ms < value, and those whose duration
    is NaN (unknown; counted apart as ``min_duration_ms_nan``, included in ``min_duration_ms``).
    ``require_fixation``: (truthy) drop trials whose fixation_on channel is never > 0.5.
    """
    filters = dict(filters or {})
    unknown = sorted(set(filters) - set(_FILTER_KEYS))
    if unknown:
        raise ValueError(f"unknown filter(s) {unknown}; known: {list(_FILTER_KEYS)}")
    keep = np.ones(session.n_trials, bool)
    report: Dict[str, int] = {"n_before": session.n_trials}
    if filters.get("min_duration_ms") is not None:
        dur = session.trial_duration_ms
        new = keep & (dur >= float(filters["min_duration_ms"]))  # NaN compares False: dropped
        report["min_duration_ms"] = int(keep.sum() - new.sum())
        if np.isnan(dur).any():
            report["min_duration_ms_nan"] = int((keep & np.isnan(dur)).sum())
        keep = new
    if filters.get("require_fixation"):
        if "fixation_on" not in session.input_names:
            raise ValueError(f"filter require_fixation needs an input channel named fixation_on; "
                             f"channels: {list(session.input_names)}")
        fix = session.inputs[:, :, session.input_names.index("fixation_on")]
        new = keep & np.any(np.nan_to_num(fix, nan=0.0) > 0.5, axis=1)
        report["require_fixation"] = int(keep.sum() - new.sum())
        keep = new
    report["n_after"] = int(keep.sum())
    return np.flatnonzero(keep).astype(np.int64), report


def removed_by_filters(report: Dict[str, int]) -> str:
    """What each filter of an :func:`apply_filters` report removed, e.g.
    ``"min_duration_ms -41 (3 of them NaN durations)"``; filters that removed nothing are left out."""
    parts = []
    for k, v in report.items():
        if k in ("n_before", "n_after", "min_duration_ms_nan") or not v:
            continue
        nan = report.get("min_duration_ms_nan") if k == "min_duration_ms" else 0
        parts.append(f"{k} -{v}" + (f" ({nan} of them NaN durations)" if nan else ""))
    return ", ".join(parts)


def condition_grouped_order(conditions: np.ndarray, seed: int) -> np.ndarray:
    """Trial order of a condition-grouped epoch (``data.batch_mode=condition``).

    The conditions are put in a random order and the trials of each condition, shuffled,
    follow one another, so consecutive batches of B trials hold whole runs of 1-3
    conditions instead of ~B random ones; batch count and size are as in random mode.
    A batch PSTH (``L_neuron``) is then close to a condition PSTH. Seeded by ``seed``.
    """
    cond = np.asarray(conditions).reshape(-1)
    rng = np.random.default_rng(int(seed))
    labels = np.unique(cond)
    return np.concatenate([rng.permutation(np.flatnonzero(cond == c)) for c in rng.permutation(labels)]) \
        if cond.size else np.zeros(0, np.int64)


def add_input_channels(tensors: Dict[str, torch.Tensor], session: Session, inputs: Optional[Dict[str, Any]]
                       ) -> Dict[str, torch.Tensor]:
    """Extra model inputs of ``data.inputs`` appended after the 14 channels (in place).

    ``reward_context``: channel 14 = ``trial_reward`` (1 high, 0 low) in every bin: the
    reward level is blocked, so the animal knows it from the trial's start (the 14 channels
    only carry a reward-onset pulse of the same size for both levels). Off: the tensors are
    returned unchanged (the 14 channels exactly). ``"auto"``: on when the session has a
    0/1 ``trial_reward`` (:func:`resolve_inputs`).
    """
    inputs = resolve_inputs(inputs, session)
    if inputs.get("reward_context"):
        if getattr(session, "trial_reward", None) is None:
            raise ValueError("data.inputs.reward_context=true needs a session with a reward factor (trial_reward)")
        x = tensors["inputs"]
        rew = torch.as_tensor(np.asarray(session.trial_reward, dtype=np.float64), dtype=x.dtype)
        tensors["inputs"] = torch.cat([x, rew[:, None, None].expand(x.shape[0], x.shape[1], 1)], dim=2)
    return tensors


def resolve_inputs(inputs: Optional[Dict[str, Any]], session: Session) -> Dict[str, Any]:
    """``data.inputs`` with ``"auto"`` replaced by a bool for this session:
    ``reward_context: auto`` is on when ``trial_reward`` exists with every value 0 or 1
    (the SC schema's low / high), off otherwise (e.g. an NWB file without that factor)."""
    out = dict(inputs or {})
    if str(out.get("reward_context")).lower() == "auto":
        rew = getattr(session, "trial_reward", None)
        out["reward_context"] = bool(rew is not None and np.size(rew) > 0
                                     and np.isin(np.asarray(rew, dtype=np.float64), (0.0, 1.0)).all())
    return out


class TrialBatchLoader:
    """Iterable of batch dicts cut from pre-built tensors (all with trials first).

    ``len()`` = number of batches (last one may be smaller; nothing dropped).
    ``batch_size`` 0/None or >= n -> a single batch holding every trial in stored
    order (the stored tensors themselves, no copy: do not modify them in place).
    With ``shuffle`` (mini-batch mode only) epoch e uses the permutation from
    ``numpy.random.default_rng(seed + e)``; e comes from ``epoch_source()`` when it
    returns an int (the Lightning trainer's current epoch), else from an internal
    counter that starts at 0 and advances with each ``iter()``; ``set_epoch`` sets it.
    """

    def __init__(self, tensors: Dict[str, torch.Tensor], batch_size: Optional[int] = 0,
                 shuffle: bool = False, seed: int = 0,
                 epoch_source: Optional[Callable[[], Optional[int]]] = None, mode: str = "random"):
        self.tensors = tensors
        self.n = int(next(iter(tensors.values())).shape[0]) if tensors else 0
        bs = int(batch_size or 0)
        self.batch_size = self.n if bs <= 0 or bs >= self.n else bs
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.epoch_source = epoch_source
        self._epoch = 0
        if mode not in BATCH_MODES:
            raise ValueError(f"batch_mode must be one of {BATCH_MODES}, got {mode!r}")
        if mode == "condition" and "condition" not in tensors:
            raise ValueError("batch_mode=condition needs a 'condition' tensor")
        self.mode = mode

    def __len__(self) -> int:
        return 0 if self.n == 0 else math.ceil(self.n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self._epoch = int(epoch)

    def _take_epoch(self) -> int:
        e = self.epoch_source() if self.epoch_source is not None else None
        if e is None:
            e = self._epoch
            self._epoch += 1
        return int(e)

    def __iter__(self) -> Iterator[Dict[str, torch.Tensor]]:
        if self.n == 0:
            return
        if self.batch_size >= self.n:
            yield dict(self.tensors)
            return
        epoch = self._take_epoch()
        if self.shuffle and self.mode == "condition":
            order = condition_grouped_order(self.tensors["condition"].cpu().numpy(), self.seed + epoch)
        else:
            order = (np.random.default_rng(self.seed + epoch).permutation(self.n) if self.shuffle
                     else np.arange(self.n))
        order_t = torch.from_numpy(order.astype(np.int64))
        for start in range(0, self.n, self.batch_size):
            idx = order_t[start:start + self.batch_size]
            yield {k: v.index_select(0, idx) for k, v in self.tensors.items()}


class SessionDataModule(L.LightningDataModule):
    """One session (a MAT / NWB / arrays file via ``path``, read per ``format`` and the
    reader ``options``, or synthetic via ``synthetic`` kwargs for
    :func:`make_synthetic_session`), optionally filtered, split train/val stratified
    by condition. See the module docstring for the batch layout.

    After ``setup()``: ``session`` (filtered), ``kept_trials`` (indices of its trials
    in the session as loaded), ``train_idx`` / ``val_idx`` (sorted indices into
    ``session``), ``filter_report``, ``n_inputs``, ``n_neurons``, ``n_time``,
    ``is_excitatory`` (np bool [N]), ``bin_size_ms``, ``summary()``, ``describe()``,
    ``tensors(split)``.
    ``device_transfer=False`` keeps batches where they are (CPU) instead of letting
    Lightning move them to the model's device.

    Cross-validation (``cv_folds`` = k >= 2, ``cv_fold`` = i in 0..k-1; default None =
    the random ``val_fraction`` split above): the k-fold partition
    (:func:`stratified_kfold`, seed ``cv_seed``, default ``split_seed``) is built on the
    session **as loaded, before filtering**, so a fold holds the same recorded trials
    whatever the filters; validation = the kept trials of fold i, training = the kept
    trials of the other folds (``val_fraction`` is then unused). ``cv_partition`` ([K
    loaded trials] fold index) is kept after ``setup()``.

    Early-stopping split (``es_fraction`` = f in (0, 1); default 0 = off): a further
    split (:func:`proportional_split`, seed ``split_seed``) of the training trials sends
    about f of them, and of each condition's, to an
    early-stopping set, and the trainer sees only the rest: ``train_dataloader`` serves
    ``fit_idx``, ``val_dataloader`` (early stopping, LR plateau, best checkpoint, logged
    ``val/`` metrics) serves ``es_idx``. ``train_idx`` / ``val_idx`` and ``tensors("train")``
    / ``tensors("val")`` keep their meaning (all training trials / the held-out set), so
    :mod:`eirnn.evaluate` and :mod:`eirnn.cv` score trials that no training decision saw.
    """

    def __init__(self, path: Optional[str] = None, synthetic: Optional[Dict[str, Any]] = None,
                 format: Optional[str] = None, options: Optional[Dict[str, Any]] = None,
                 val_fraction: float = 0.2, batch_size: Optional[int] = 0, split_seed: int = 42,
                 shuffle_seed: Optional[int] = None, filters: Optional[Dict[str, Any]] = None,
                 device_transfer: bool = True, cv_folds: Optional[int] = None, cv_fold: Optional[int] = 0,
                 cv_seed: Optional[int] = None, batch_mode: str = "random", inputs: Optional[Dict[str, Any]] = None,
                 es_fraction: float = 0.0):
        super().__init__()
        self.save_hyperparameters(logger=False)
        if not 0.0 <= float(val_fraction) < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if not 0.0 <= float(es_fraction) < 1.0:
            raise ValueError(f"data.es_fraction must be in [0, 1), got {es_fraction}")
        self.es_fraction = float(es_fraction)
        unknown = sorted(set(filters or {}) - set(_FILTER_KEYS))
        if unknown:
            raise ValueError(f"unknown filter(s) {unknown}; known: {list(_FILTER_KEYS)}")
        self.path = None if path is None else str(path)
        self.format = None if format is None else str(format)
        self.options = options
        self.synthetic = dict(synthetic or {})
        self.val_fraction = float(val_fraction)
        self.batch_size = int(batch_size or 0)
        self.split_seed = int(split_seed)
        self.shuffle_seed = self.split_seed if shuffle_seed is None else int(shuffle_seed)
        self.filters = dict(filters) if filters else None
        self.device_transfer = bool(device_transfer)
        self.cv_folds = None if cv_folds is None else int(cv_folds)
        self.cv_fold = int(cv_fold or 0)
        self.cv_seed = self.split_seed if cv_seed is None else int(cv_seed)
        if self.cv_folds is not None and (self.cv_folds < 2 or not 0 <= self.cv_fold < self.cv_folds):
            raise ValueError(f"need cv_folds >= 2 and 0 <= cv_fold < cv_folds, got cv_folds={cv_folds}, "
                             f"cv_fold={cv_fold}")
        if batch_mode not in BATCH_MODES:
            raise ValueError(f"data.batch_mode must be one of {list(BATCH_MODES)}, got {batch_mode!r}")
        self.batch_mode = str(batch_mode)
        unknown = sorted(set(inputs or {}) - set(_INPUT_KEYS))
        if unknown:
            raise ValueError(f"data.inputs: unknown key(s) {unknown}; known: {list(_INPUT_KEYS)}")
        self.inputs = dict(inputs or {})
        rc = self.inputs.get("reward_context")
        if not (rc is None or isinstance(rc, bool) or str(rc).lower() == "auto"):
            raise ValueError(f"data.inputs.reward_context must be true, false or auto, got {rc!r}")
        self.cv_partition: Optional[np.ndarray] = None
        self.session: Optional[Session] = None
        self.kept_trials: Optional[np.ndarray] = None
        self.train_idx: Optional[np.ndarray] = None
        self.val_idx: Optional[np.ndarray] = None
        self.fit_idx: Optional[np.ndarray] = None  # = train_idx unless es_fraction > 0
        self.es_idx: Optional[np.ndarray] = None   # = val_idx unless es_fraction > 0
        self.filter_report: Dict[str, int] = {}
        self._train: Dict[str, torch.Tensor] = {}
        self._val: Dict[str, torch.Tensor] = {}
        self._fit: Dict[str, torch.Tensor] = {}
        self._es: Dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------ setup
    def prepare_data(self) -> None:  # nothing to download
        pass

    def setup(self, stage: Optional[str] = None) -> None:
        if self.session is not None:
            return
        raw = self.load_raw()
        if raw.n_trials == 0:
            raise DataFormatError(raw.source or self.path, "firing_rates", "the session has no trials")
        kept, self.filter_report = apply_filters(raw, self.filters)
        if kept.size == 0:
            removed = ", ".join(f"{k} removed {v}" for k, v in self.filter_report.items()
                                if k not in ("n_before", "n_after"))
            raise DataFormatError(raw.source or self.path, None,
                                  f"data.filters removed all {raw.n_trials} trials ({removed}); "
                                  f"loosen data.filters (e.g. a lower min_duration_ms)")
        if self.cv_folds is not None:  # folds of the unfiltered trials (see class docstring)
            self.cv_partition = stratified_kfold(raw.condition_ids(), self.cv_folds, self.cv_seed)
        session = raw if kept.size == raw.n_trials else raw.subset(kept)
        del raw
        if self.cv_partition is not None:
            in_val = self.cv_partition[kept] == self.cv_fold
            self.val_idx, self.train_idx = np.flatnonzero(in_val), np.flatnonzero(~in_val)
        else:
            self.train_idx, self.val_idx = stratified_split(session.condition_ids(), self.val_fraction,
                                                            self.split_seed)
        for name, idx in (("validation", self.val_idx), ("training", self.train_idx)):
            if idx.size == 0:
                raise DataFormatError(session.source or self.path, None,
                                      f"no {name} trials: {session.n_trials} trials in "
                                      f"{np.unique(session.condition_ids()).size} conditions after the filters "
                                      + (f"(fold {self.cv_fold} of {self.cv_folds} is empty)" if self.cv_folds
                                         else f"with data.val_fraction={self.val_fraction:g}"))
        self.fit_idx, self.es_idx = self.train_idx, self.val_idx
        if self.es_fraction > 0:
            fit, es = proportional_split(session.condition_ids()[self.train_idx], self.es_fraction, self.split_seed)
            if es.size == 0 or fit.size == 0:
                raise DataFormatError(session.source or self.path, None,
                                      f"data.es_fraction={self.es_fraction:g} leaves no "
                                      f"{'early-stopping' if es.size == 0 else 'fitting'} trials among the "
                                      f"{self.train_idx.size} training trials")
            self.fit_idx, self.es_idx = self.train_idx[fit], self.train_idx[es]
        self.inputs = resolve_inputs(self.inputs, session)  # "auto" -> this session's bool
        full = self.make_tensors(session)

        def take(idx: np.ndarray) -> Dict[str, torch.Tensor]:
            t = torch.from_numpy(idx)
            return {k: v.index_select(0, t) for k, v in full.items()}

        self._train, self._val = take(self.train_idx), take(self.val_idx)
        self._fit, self._es = ((take(self.fit_idx), take(self.es_idx)) if self.es_fraction > 0
                               else (self._train, self._val))
        self.kept_trials = kept
        self.session = session

    def load_raw(self) -> Session:
        """The session as loaded (before filters): the file at ``path`` (``format``,
        ``options``: see :func:`eirnn.data.load_session`) or the synthetic one."""
        if self.path is None:
            return make_synthetic_session(**self.synthetic)
        return load_session(self.path, self.format, self.options)

    def make_tensors(self, session: Session) -> Dict[str, torch.Tensor]:
        """:func:`session_to_tensors` plus the extra input channels of ``data.inputs``."""
        return add_input_channels(session_to_tensors(session), session, self.inputs)

    def _need(self) -> Session:
        if self.session is None:
            raise RuntimeError("SessionDataModule: call setup() first")
        return self.session

    # ------------------------------------------------------------- attributes
    @property
    def n_inputs(self) -> int:
        return self._need().n_inputs + (1 if self.inputs.get("reward_context") else 0)

    @property
    def n_neurons(self) -> int:
        return self._need().n_neurons

    @property
    def n_time(self) -> int:
        return self._need().n_time

    @property
    def is_excitatory(self) -> np.ndarray:
        return self._need().is_excitatory

    @property
    def bin_size_ms(self) -> float:
        return self._need().bin_size_ms

    def model_kwargs(self) -> Dict[str, Any]:
        """Data-derived arguments of the model (``eirnn.models.EIRNN``)."""
        return {"n_inputs": self.n_inputs, "recorded_is_excitatory": self.is_excitatory, "dt": self.bin_size_ms}

    def module_kwargs(self) -> Dict[str, Any]:
        """Data-derived arguments of the LightningModule (``eirnn.training.module.FitModule``)."""
        return {"bin_size_ms": self.bin_size_ms}

    def tensors(self, split: str = "train") -> Dict[str, torch.Tensor]:
        """The stored tensors of ``split``, trials in index order: ``train`` (every training
        trial), ``val`` (held out), ``fit`` / ``es`` (what the trainer fits / validates on;
        ``train`` / ``val`` unless ``es_fraction > 0``)."""
        self._need()
        return {"train": self._train, "val": self._val, "fit": self._fit, "es": self._es}[split]

    def summary(self) -> Dict[str, Any]:
        """Session summary + split sizes + filter report + missing bins per split."""
        out = self._need().summary()
        out.update({"n_train": int(self.train_idx.size), "n_val": int(self.val_idx.size),
                    "cv_folds": self.cv_folds, "cv_fold": self.cv_fold if self.cv_folds else None,
                    "val_fraction": self.val_fraction, "batch_size": self.batch_size,
                    "es_fraction": self.es_fraction, "n_fit": int(self.fit_idx.size), "n_es": int(self.es_idx.size),
                    "n_train_batches": len(self.train_dataloader()),
                    "filter_report": dict(self.filter_report)})
        for name, t in (("train", self._train), ("val", self._val)):
            m = t["mask"]
            out[f"{name}_missing_bins"] = int(m.numel() - int(m.sum()))
            out[f"{name}_missing_fraction"] = float(1.0 - m.float().mean()) if m.numel() else 0.0
        return out

    def describe(self) -> str:
        """Short multi-line human summary: session, split and filters."""
        s = self.summary()
        rep = self.filter_report
        removed = removed_by_filters(rep)
        from .validate import caveat_line

        caveats = caveat_line(self._need().metadata.get("caveats") or {})
        return "\n".join([
            self._need().describe(),
            f"  split: {s['n_train']} train / {s['n_val']} val trials (stratified by condition, "
            + (f"fold {self.cv_fold} of {self.cv_folds}, seed {self.cv_seed}" if self.cv_folds else f"seed {self.split_seed}")
            + f"); batch size {self.batch_size or 'full'} "
            f"-> {s['n_train_batches']} train batch(es)",
        ] + ([f"  early stopping: {s['n_es']} of the {s['n_train']} training trials (data.es_fraction="
              f"{self.es_fraction:g}) validate the training; it fits the other {s['n_fit']}"]
             if self.es_fraction > 0 else []) + [
            f"  filters: {rep.get('n_before')} -> {rep.get('n_after')} trials"
            + (f" ({removed})" if removed else ""),
        ] + ([f"  accepted with caveats: {caveats}"] if caveats else []))

    # ------------------------------------------------------------ dataloaders
    def _epoch(self) -> Optional[int]:
        trainer = getattr(self, "trainer", None)
        return None if trainer is None else int(trainer.current_epoch)

    def train_dataloader(self) -> TrialBatchLoader:
        self._need()
        return TrialBatchLoader(self._fit, self.batch_size, shuffle=True, seed=self.shuffle_seed,
                                epoch_source=self._epoch, mode=self.batch_mode)

    def val_dataloader(self) -> TrialBatchLoader:
        """The trainer's validation batches: the early-stopping trials when ``es_fraction > 0``."""
        self._need()
        return TrialBatchLoader(self._es, self.batch_size, shuffle=False)

    def test_dataloader(self) -> TrialBatchLoader:
        """The held-out validation trials (``val_idx``), whatever ``es_fraction``."""
        self._need()
        return TrialBatchLoader(self._val, self.batch_size, shuffle=False)

    def predict_dataloader(self) -> TrialBatchLoader:
        return self.test_dataloader()

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        if not self.device_transfer:
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)
