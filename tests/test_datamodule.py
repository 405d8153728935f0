"""SessionDataModule: split, filters, batches, Lightning integration."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from eirnn.data import INPUT_CHANNELS, SessionDataModule, make_synthetic_session, save_mat
from eirnn.data.datamodule import TrialBatchLoader, stratified_split

SYN = dict(seed=1, n_trials=320, n_time=60, n_exc=8, n_inh=4, n_hidden_exc=9, n_hidden_inh=4)


@pytest.fixture(scope="module")
def dm() -> SessionDataModule:
    d = SessionDataModule(synthetic=SYN, val_fraction=0.2, batch_size=0, split_seed=3)
    d.setup("fit")
    return d


def test_split_is_stratified_and_complete(dm):
    s = dm.session
    tr, va = dm.train_idx, dm.val_idx
    assert tr.dtype == np.int64 and np.all(np.diff(tr) > 0) and np.all(np.diff(va) > 0)
    assert np.intersect1d(tr, va).size == 0
    assert np.array_equal(np.union1d(tr, va), np.arange(s.n_trials))
    cids = s.condition_ids()
    for c in np.unique(cids):
        n = int((cids == c).sum())
        n_val = int(np.isin(np.flatnonzero(cids == c), va).sum())
        assert n_val >= 1
        assert abs(n_val / n - 0.2) <= 1.0 / n  # share within one trial of val_fraction
    assert abs(va.size / s.n_trials - 0.2) < 0.03


def test_split_deterministic_and_seeded(dm):
    again = SessionDataModule(synthetic=SYN, val_fraction=0.2, split_seed=3)
    again.setup()
    assert np.array_equal(again.train_idx, dm.train_idx) and np.array_equal(again.val_idx, dm.val_idx)
    other = SessionDataModule(synthetic=SYN, val_fraction=0.2, split_seed=4)
    other.setup()
    assert not np.array_equal(other.val_idx, dm.val_idx)
    dm.setup("validate")  # idempotent
    assert np.array_equal(again.val_idx, dm.val_idx)


def test_stratified_split_small_conditions():
    cids = np.array([0, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2])
    tr, va = stratified_split(cids, 0.2, seed=0)
    assert 0 in tr  # singleton condition stays in training
    assert np.isin(np.array([1, 2]), va).sum() == 1  # 2-trial condition gives one each way
    assert np.isin(np.arange(3, 13), va).sum() == 2
    tr0, va0 = stratified_split(cids, 0.0, seed=0)
    assert va0.size == 0 and tr0.size == cids.size
    with pytest.raises(ValueError):
        stratified_split(cids, 1.0, seed=0)


def test_full_batch_mode(dm):
    loader = dm.train_dataloader()
    assert len(loader) == 1
    batches = list(loader)
    assert len(batches) == 1
    b = batches[0]
    assert torch.equal(b["trial"], torch.from_numpy(dm.train_idx))
    n, T, N = dm.train_idx.size, dm.n_time, dm.n_neurons
    assert b["inputs"].shape == (n, T, 14) and b["inputs"].dtype == torch.float32
    assert b["rates"].shape == (n, T, N) and b["rates"].dtype == torch.float32
    assert b["mask"].dtype == torch.bool and b["mask"].shape == (n, T, N)
    assert b["condition"].dtype == torch.int64 and b["true_rates"].shape == (n, T, N)
    assert len(dm.val_dataloader()) == 1 and len(dm.predict_dataloader()) == 1
    assert len(dm.test_dataloader()) == 1


def test_batch_contents_match_session(dm):
    s = dm.session
    b = next(iter(dm.val_dataloader()))
    idx = b["trial"].numpy()
    assert np.array_equal(idx, dm.val_idx)
    mask = s.missing_mask()[idx]
    assert np.array_equal(b["mask"].numpy(), mask) and not mask.all()
    assert np.array_equal(b["condition"].numpy(), s.condition_ids()[idx])
    for key, arr in (("rates", s.rates), ("inputs", s.inputs), ("true_rates", s.truth["rates"])):
        t = b[key].numpy()
        assert not np.isnan(t).any()
        src = arr[idx]
        assert np.array_equal(t[np.isnan(src)], np.zeros(np.isnan(src).sum(), np.float32))
        ok = np.isfinite(src)
        assert np.allclose(t[ok], src[ok].astype(np.float32))
    assert dm.n_inputs == len(INPUT_CHANNELS) and dm.bin_size_ms == 25.0
    assert dm.is_excitatory.dtype == bool and dm.is_excitatory.sum() == 8


def test_minibatches_shuffle_per_epoch_reproducibly(dm):
    d = SessionDataModule(synthetic=SYN, batch_size=50, split_seed=3, shuffle_seed=11)
    d.setup()
    n = d.train_idx.size
    loader = d.train_dataloader()
    assert len(loader) == math.ceil(n / 50)
    epoch0 = torch.cat([b["trial"] for b in loader])
    epoch1 = torch.cat([b["trial"] for b in loader])
    assert sorted(epoch0.tolist()) == d.train_idx.tolist()  # every trial exactly once
    assert sorted(epoch1.tolist()) == d.train_idx.tolist()
    assert not torch.equal(epoch0, epoch1)
    fresh = d.train_dataloader()
    assert torch.equal(torch.cat([b["trial"] for b in fresh]), epoch0)
    fresh.set_epoch(1)
    assert torch.equal(torch.cat([b["trial"] for b in fresh]), epoch1)
    sizes = [b["inputs"].shape[0] for b in d.train_dataloader()]
    assert sum(sizes) == n and max(sizes) == 50
    val = [torch.cat([b["trial"] for b in d.val_dataloader()]) for _ in range(2)]
    assert torch.equal(val[0], val[1]) and torch.equal(val[0], torch.from_numpy(d.val_idx))
    # shuffle_seed defaults to split_seed
    assert SessionDataModule(synthetic=SYN, split_seed=5).shuffle_seed == 5


def test_batch_size_larger_than_set_gives_one_batch(dm):
    d = SessionDataModule(synthetic=SYN, batch_size=10_000, split_seed=3)
    d.setup()
    assert len(d.train_dataloader()) == 1 and len(d.val_dataloader()) == 1
    empty = TrialBatchLoader({"x": torch.zeros(0, 3)}, batch_size=4)
    assert len(empty) == 0 and list(empty) == []


def test_filters(tmp_path):
    s = make_synthetic_session(seed=2, n_trials=96, n_time=60, n_exc=4, n_inh=2,
                               n_hidden_exc=6, n_hidden_inh=4)
    dur = s.trial_duration_ms.copy()
    inputs = s.inputs.copy()
    dur[:5] = 10.0                      # 5 aborted trials (also without fixation)
    inputs[:5, :, 0] = 0.0
    inputs[5:12, :, 0] = 0.0            # 7 more trials never fixate
    p = save_mat(dataclasses.replace(s, trial_duration_ms=dur, inputs=inputs), tmp_path / "f.mat")
    d = SessionDataModule(path=str(p), filters={"min_duration_ms": 100, "require_fixation": True})
    d.setup()
    assert d.filter_report == {"n_before": 96, "min_duration_ms": 5, "require_fixation": 7,
                               "n_after": 84}
    assert d.session.n_trials == 84
    assert np.array_equal(d.kept_trials, np.arange(12, 96))
    assert d.train_idx.size + d.val_idx.size == 84
    assert "true_rates" not in next(iter(d.train_dataloader()))  # files carry no truth
    d2 = SessionDataModule(path=str(p), filters={"require_fixation": True})
    d2.setup()
    assert d2.filter_report["require_fixation"] == 12
    d3 = SessionDataModule(path=str(p))
    d3.setup()
    assert d3.filter_report == {"n_before": 96, "n_after": 96}
    with pytest.raises(ValueError):
        SessionDataModule(path=str(p), filters={"bogus": 1})
    summ = d.summary()
    assert summ["n_train"] + summ["n_val"] == 84 and summ["filter_report"]["n_after"] == 84
    assert summ["train_missing_bins"] + summ["val_missing_bins"] == summ["missing_bins"]
    assert summ["n_train_batches"] == 1
    text = d.describe()
    assert "96 -> 84 trials" in text and "require_fixation -7" in text


def test_filter_line_leaves_out_empty_filters_and_counts_nan_once():
    from eirnn.data.datamodule import removed_by_filters

    assert removed_by_filters({"n_before": 100, "min_duration_ms": 0, "n_after": 100}) == ""  # not "-0"
    assert removed_by_filters({"n_before": 100, "min_duration_ms": 6, "min_duration_ms_nan": 3,
                               "require_fixation": 2, "n_after": 92}) == \
        "min_duration_ms -6 (3 of them NaN durations), require_fixation -2"


def test_real_session_filters(real_session):
    d = SessionDataModule(path=str(real_session), filters={"require_fixation": True})
    d.setup()
    assert d.filter_report["require_fixation"] == 127  # README: 127 trials never fixate
    assert d.n_neurons == 41 and d.session.n_trials == 409
    b = next(iter(d.train_dataloader()))
    assert b["mask"].all() and "true_rates" not in b


def test_requires_setup_and_device_transfer_flag():
    d = SessionDataModule(synthetic=SYN, device_transfer=False)
    with pytest.raises(RuntimeError):
        _ = d.n_neurons
    d.setup()
    batch = next(iter(d.val_dataloader()))
    assert d.transfer_batch_to_device(batch, torch.device("cpu"), 0) is batch
    with pytest.raises(ValueError):
        SessionDataModule(synthetic=SYN, val_fraction=1.5)


def test_lightning_fit_uses_loaders():
    import lightning as L

    seen = []

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(14, 12)

        def training_step(self, batch, i):
            seen.append((self.current_epoch, batch["trial"].clone()))
            err = (self.lin(batch["inputs"]) - batch["rates"]) ** 2
            return err[batch["mask"]].mean()

        def validation_step(self, batch, i):
            self.log("val", (self.lin(batch["inputs"]) - batch["rates"]).abs().mean(),
                     batch_size=batch["inputs"].shape[0])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=1e-4)

    d = SessionDataModule(synthetic=SYN, batch_size=128, split_seed=3)
    trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0)
    trainer.fit(Tiny(), d)
    d.setup()
    per_epoch = {}
    for e, t in seen:
        per_epoch.setdefault(e, []).append(t)
    assert sorted(per_epoch) == [0, 1]
    orders = {e: torch.cat(v) for e, v in per_epoch.items()}
    for e in (0, 1):
        assert sorted(orders[e].tolist()) == d.train_idx.tolist()
        loader = d.train_dataloader()
        loader.epoch_source = None  # detach from the trainer: same order from the seed alone
        loader.set_epoch(e)
        assert torch.equal(torch.cat([b["trial"] for b in loader]), orders[e])
