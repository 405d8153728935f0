"""k-fold partition, the data module's CV option, aggregation and a tiny 2-fold CV end to end."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import compose_config, train_run
from eirnn.cv import aggregate, format_markdown, run_cv
from eirnn.data import SessionDataModule
from eirnn.data.datamodule import stratified_kfold
from eirnn.data.splits import proportional_split

SYN = dict(seed=1, n_trials=128, n_time=40, n_exc=5, n_inh=3, n_hidden_exc=4, n_hidden_inh=2)


def test_stratified_kfold_partition():
    rng = np.random.default_rng(0)
    cids = rng.integers(0, 7, 203)
    fold = stratified_kfold(cids, 5, seed=3)
    assert fold.shape == (203,) and set(np.unique(fold)) == set(range(5))
    sizes = np.bincount(fold)
    assert sizes.max() - sizes.min() <= 1
    for c in np.unique(cids):
        n = int((cids == c).sum())
        per = np.bincount(fold[cids == c], minlength=5)
        assert per.max() - per.min() <= 1 and per.sum() == n  # each condition spread evenly
    assert np.array_equal(stratified_kfold(cids, 5, seed=3), fold)
    assert not np.array_equal(stratified_kfold(cids, 5, seed=4), fold)
    with pytest.raises(ValueError):
        stratified_kfold(cids, 1, 0)


def test_datamodule_folds_are_built_before_filtering():
    dur_cut = 560.0
    plain = SessionDataModule(synthetic=SYN, cv_folds=4, cv_fold=2, split_seed=5)
    plain.setup()
    filt = SessionDataModule(synthetic=SYN, cv_folds=4, cv_fold=2, split_seed=5,
                             filters={"min_duration_ms": dur_cut})
    filt.setup()
    assert np.array_equal(plain.cv_partition, filt.cv_partition)
    assert filt.session.n_trials < plain.session.n_trials  # the filter removed something
    # validation = the kept trials of fold 2, in terms of trials as loaded
    kept = filt.kept_trials
    assert np.array_equal(kept[filt.val_idx], np.intersect1d(np.flatnonzero(plain.cv_partition == 2), kept))
    assert np.array_equal(plain.val_idx, np.flatnonzero(plain.cv_partition == 2))
    assert np.intersect1d(filt.train_idx, filt.val_idx).size == 0
    assert filt.train_idx.size + filt.val_idx.size == filt.session.n_trials
    # the folds tile the kept trials
    seen = []
    for f in range(4):
        d = SessionDataModule(synthetic=SYN, cv_folds=4, cv_fold=f, split_seed=5, filters={"min_duration_ms": dur_cut})
        d.setup()
        seen.append(d.kept_trials[d.val_idx])
    assert np.array_equal(np.sort(np.concatenate(seen)), kept)
    assert "fold 2 of 4" in filt.describe()
    with pytest.raises(ValueError):
        SessionDataModule(synthetic=SYN, cv_folds=3, cv_fold=3)


def test_aggregate_mean_std_and_beats():
    def ev(model, base, n):
        return {"sets": {"val": {"n_trials": n, "scores": {"model": {"psth_corr": model, "bits_per_spike": 0.1},
                                                           "train_mean": {"psth_corr": base, "bits_per_spike": None}},
                                 "ceiling": {"psth_corr": 0.5}}},
                "data": {"cv_folds": 3}, "train_fit": {"model": {"psth_corr": 0.8}}}

    agg = aggregate({0: ev(0.4, 0.3, 10), 1: ev(0.5, 0.45, 11), 2: ev(0.45, 0.46, 10)})
    s = agg["sets"]["val"]
    pc = s["scores"]["model"]["psth_corr"]
    assert pc["per_fold"] == [0.4, 0.5, 0.45]
    assert pc["mean"] == pytest.approx(0.45) and pc["std"] == pytest.approx(np.std([0.4, 0.5, 0.45], ddof=1))
    assert s["beats"]["train_mean"]["psth_corr"] is False  # fold 2: 0.45 < 0.46
    assert "bits_per_spike" not in s["beats"]["train_mean"]  # no comparable fold
    assert s["ceiling"]["psth_corr"]["mean"] == pytest.approx(0.5)
    assert s["n_trials"] == [10, 11, 10]
    md = format_markdown(agg)
    assert "| model |" in md and "noise ceiling" in md and "NO" in md
    agg2 = aggregate({0: ev(0.4, 0.3, 10), 1: ev(0.5, 0.45, 11)})
    assert agg2["sets"]["val"]["beats"]["train_mean"]["psth_corr"] is True


def _compose_cv(overrides, out: Path):
    return compose_config(overrides, out, "cv")


@pytest.mark.slow
def test_two_fold_cv_end_to_end(tmp_path):
    overrides = ["debug=fast", "data.synthetic.n_trials=128", "+data.synthetic.n_time=40", "+data.synthetic.n_exc=5",
                 "+data.synthetic.n_inh=3", "model.n_hidden=6", "trainer.max_epochs=2", "callbacks.figures=null",
                 "logger=none", "+data.filters.min_duration_ms=560", "cv.folds=2", "cv.ceiling_splits=3",
                 "cv.baselines=[train_mean,condition_mean,unconstrained_rnn]"]
    cfg = _compose_cv(overrides, tmp_path)
    assert cfg.task_name == "cv" and cfg.cv.folds == 2
    agg = run_cv(cfg)
    saved = json.loads((tmp_path / "cv_metrics.json").read_text())
    assert saved["folds"] == [0, 1]
    for f in (0, 1):
        fold = tmp_path / f"fold_{f}"
        assert (fold / "checkpoints" / "last.ckpt").exists() and (fold / "evaluation.json").exists()
        assert (fold / "unconstrained" / "checkpoints" / "last.ckpt").exists()
        fcfg = (fold / ".hydra" / "config.yaml").read_text()
        assert "cv_folds: 2" in fcfg and f"cv_fold: {f}" in fcfg
        assert "dale: false" in (fold / "unconstrained" / ".hydra" / "config.yaml").read_text()
    val = saved["sets"]["val"]
    assert set(val["scores"]) == {"model", "unconstrained_rnn", "model_best_ckpt", "train_mean", "condition_mean"}
    pc = val["scores"]["model"]["psth_corr"]
    assert len(pc["per_fold"]) == 2 and pc["mean"] == pytest.approx(np.mean(pc["per_fold"]))
    assert len(val["ceiling"]["psth_corr"]["per_fold"]) == 2
    # the filter removed trials of each fold: those are also scored, for every predictor
    assert "val_all" in saved["sets"]
    n_val = val["n_trials"]
    n_all = saved["sets"]["val_all"]["n_trials"]
    assert all(a > b for a, b in zip(n_all, n_val)) and sum(n_all) == 128
    assert saved["removed_by_filter_per_fold"][0]["min_duration_ms"] > 0
    md = (tmp_path / "cv_metrics.md").read_text()
    assert "| unconstrained_rnn |" in md and "noise ceiling" in md
    # resuming re-uses the folds (no retraining): same numbers
    again = run_cv(cfg)
    assert again["sets"]["val"]["scores"]["model"]["psth_corr"]["per_fold"] == pc["per_fold"]
    assert not math.isnan(agg["sets"]["val"]["scores"]["train_mean"]["psth_corr"]["mean"])


def test_proportional_split_counts_and_strata():
    rng = np.random.default_rng(1)
    cids = rng.integers(0, 9, 157)
    for f in (0.0, 0.15, 0.5):
        kept, taken = proportional_split(cids, f, seed=2)
        assert np.array_equal(np.sort(np.concatenate([kept, taken])), np.arange(157))
        assert taken.size in (math.floor(157 * f), math.ceil(157 * f))
        for c in np.unique(cids):  # each condition gives floor or ceil of its share
            n = int((cids == c).sum())
            assert int(np.isin(taken, np.flatnonzero(cids == c)).sum()) in (math.floor(n * f), math.ceil(n * f))
    assert np.array_equal(proportional_split(cids, 0.15, 2)[1], proportional_split(cids, 0.15, 2)[1])
    assert not np.array_equal(proportional_split(cids, 0.15, 2)[1], proportional_split(cids, 0.15, 3)[1])
    with pytest.raises(ValueError):
        proportional_split(cids, 1.0, 0)


def test_early_stopping_split_keeps_the_scored_fold_apart():
    """data.es_fraction: the trainer fits fit_idx and validates on es_idx (both inside the
    training folds); train_idx / val_idx (what eirnn.evaluate scores) are as without it."""
    plain = SessionDataModule(synthetic=SYN, cv_folds=4, cv_fold=1, split_seed=5, batch_size=16)
    es = SessionDataModule(synthetic=SYN, cv_folds=4, cv_fold=1, split_seed=5, batch_size=16, es_fraction=0.25)
    plain.setup()
    es.setup()
    assert np.array_equal(plain.train_idx, es.train_idx) and np.array_equal(plain.val_idx, es.val_idx)
    assert np.array_equal(np.sort(np.concatenate([es.fit_idx, es.es_idx])), es.train_idx)
    assert es.es_idx.size == round(0.25 * es.train_idx.size) and not np.isin(es.es_idx, es.val_idx).any()
    served = lambda loader: sum(int(b["inputs"].shape[0]) for b in loader)  # noqa: E731
    assert served(es.train_dataloader()) == es.fit_idx.size and served(es.val_dataloader()) == es.es_idx.size
    assert served(es.test_dataloader()) == es.val_idx.size
    pos = np.flatnonzero(np.isin(es.train_idx, es.es_idx))  # the es trials among the training tensors
    assert torch.equal(next(iter(es.val_dataloader()))["trial"], es.tensors("train")["trial"][pos[:16]])
    assert torch.equal(es.tensors("val")["trial"], plain.tensors("val")["trial"])
    assert plain.tensors("fit") is plain.tensors("train") and plain.tensors("es") is plain.tensors("val")
    assert "early stopping: 24 of the 96 training trials" in es.describe()
    with pytest.raises(ValueError, match="es_fraction"):
        SessionDataModule(synthetic=SYN, es_fraction=1.0)


@pytest.mark.slow
def test_cv_with_early_stopping_split_scores_the_fold(tmp_path):
    """With data.es_fraction the training's validation metrics come from the early-stopping
    trials, and the CV still scores every trial of the held-out fold."""
    cfg = _compose_cv(["debug=fast", "data.synthetic.n_trials=96", "+data.synthetic.n_time=30",
                       "+data.synthetic.n_exc=4", "+data.synthetic.n_inh=2", "model.n_hidden=4",
                       "trainer.max_epochs=2", "callbacks.figures=null", "logger=none", "cv.folds=2",
                       "cv.ceiling_splits=2", "cv.baselines=[train_mean]", "data.es_fraction=0.25"], tmp_path)
    agg = run_cv(cfg)
    assert agg["sets"]["val"]["n_trials"] == [48, 48]
    for f in (0, 1):
        ev = json.loads((tmp_path / f"fold_{f}" / "evaluation.json").read_text())
        assert ev["data"]["n_val"] == 48 and ev["data"]["n_train"] == 48
        assert "es_fraction: 0.25" in (tmp_path / f"fold_{f}" / ".hydra" / "config.yaml").read_text()
    assert set(agg["sets"]["val"]["scores"]) == {"model", "model_best_ckpt", "train_mean"}


@pytest.mark.slow
def test_baselines_only_cv(tmp_path):
    cfg = _compose_cv(["data.synthetic.n_trials=96", "+data.synthetic.n_time=30", "+data.synthetic.n_exc=4",
                       "+data.synthetic.n_inh=2", "cv.folds=2", "cv.train_model=false", "cv.ceiling_splits=2",
                       "cv.baselines=[train_mean,train_mean_smoothed]"], tmp_path)
    agg = run_cv(cfg)
    s = agg["sets"]["val"]["scores"]
    assert set(s) == {"train_mean", "train_mean_smoothed"}
    assert not (tmp_path / "fold_0" / "checkpoints").exists()
    assert (tmp_path / "fold_0" / "evaluation.json").exists()


@pytest.mark.slow
def test_last_checkpoint_is_the_last_epoch_not_the_best(tmp_path):
    """cv.checkpoint=last must score the final weights, chosen without the scored fold.
    (Lightning 2.6's save_last writes last.ckpt only when a best checkpoint is saved, which
    made last == best; conf/callbacks/default.yaml keeps a separate last_checkpoint.) With
    optimized_mode=min on a rising metric, the best checkpoint stays at epoch 0."""
    import torch

    train_run(["debug=fast", "data.synthetic.n_trials=80", "+data.synthetic.n_time=30",
               "+data.synthetic.n_exc=4", "+data.synthetic.n_inh=2", "model.n_hidden=4",
               "trainer.max_epochs=4", "callbacks.figures=null", "logger=none", "optimized_mode=min",
               "callbacks.early_stopping=null"], tmp_path)
    load = lambda n: torch.load(tmp_path / "checkpoints" / f"{n}.ckpt", map_location="cpu", weights_only=False)  # noqa: E731
    last, best = load("last"), load("best")
    assert last["epoch"] == 3 and len(last["eirnn"]["history"]) == 4
    scores = [h["val/psth_corr"] for h in last["eirnn"]["history"]]
    assert best["epoch"] == int(np.argmin(scores))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
