"""The spike readout (eirnn.models.readout) and its fit after training (eirnn.fit_readout)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO, SMALL, tiny_overrides, train_run
from eirnn.models.readout import SpikeReadout

TINY = tiny_overrides("trainer.max_epochs=3", base=SMALL)


def test_readout_is_the_identity_until_fitted_then_affine_with_floor():
    ro = SpikeReadout(3)
    r = torch.tensor([[[1.0, 2.0, 3.0]], [[0.0, 5.0, 9.0]]])
    assert ro(r) is r and not ro.is_fitted
    ro.set_affine([2.0, 0.0, 0.5], [1.0, 4.0, -2.0])
    want = torch.clamp_min(r * torch.tensor([2.0, 0.0, 0.5]) + torch.tensor([1.0, 4.0, -2.0]), 1e-3)
    torch.testing.assert_close(ro(r), want)
    assert float(ro(r)[1, 0, 2]) == pytest.approx(2.5) and float(ro(r)[0, 0, 2]) == pytest.approx(1e-3)
    np.testing.assert_allclose(ro.apply_numpy(r.numpy()), want.numpy().astype(np.float64), rtol=1e-6)
    with pytest.raises(ValueError, match="gain"):
        ro.set_affine([-1.0, 1.0, 1.0], [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="3 neurons"):
        ro.set_affine([1.0, 1.0], [0.0, 0.0])


def test_checkpoint_without_readout_loads_as_identity():
    """Checkpoints written before the readout existed load unchanged (identity readout)."""
    from eirnn.models import EIRNN

    m = EIRNN(n_inputs=3, recorded_is_excitatory=[True, True, False], n_hidden=2, dt=25.0)
    state = {k: v for k, v in m.state_dict().items() if "spike_readout" not in k}
    m2 = EIRNN(n_inputs=3, recorded_is_excitatory=[True, True, False], n_hidden=2, dt=25.0)
    m2.spike_readout.set_affine([2.0, 2.0, 2.0], [1.0, 1.0, 1.0])
    m2.load_state_dict(state)
    assert not m2.spike_readout.is_fitted
    torch.testing.assert_close(m2.spike_readout.gain, torch.ones(3))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("readout_run")
    train_run(TINY, out, save_config=True)
    return out


@pytest.mark.slow
def test_training_fits_the_readout_of_both_checkpoints_on_the_training_trials(run_dir):
    """After train(): best.ckpt and last.ckpt carry a fitted readout equal to the Poisson-ML
    affine calibration of the network's expected training-trial rates; the network's own rates
    (what every loss sees) are unchanged by it; the model's predicted spike rates are the
    readout of them, so the evaluation's own calibration has nothing left to do."""
    from eirnn.baselines import TrialSet
    from eirnn.calibration import fit_affine_calibration
    from eirnn.evaluate import evaluate_run, load_config, load_module, model_predictions, predict_expected_rates
    from eirnn.metrics import bits_per_spike
    from eirnn.train import build_datamodule

    summary = json.loads((run_dir / "metrics.json").read_text())
    assert set(summary["spike_readout"]) == {"best", "last"}
    cfg = load_config(run_dir)
    dm = build_datamodule(cfg)
    module, _ = load_module(cfg, dm, run_dir / "checkpoints" / "last.ckpt")
    ro = module.model.spike_readout
    assert ro.is_fitted and not np.allclose(ro.gain.numpy(), 1.0)
    np.testing.assert_allclose(summary["spike_readout"]["last"]["gain"], ro.gain.numpy(), rtol=1e-6)
    tr = TrialSet.from_tensors(dm.tensors("train"), dm.session, dm.bin_size_ms)
    p_train, _ = predict_expected_rates(module, dm.tensors("train"), dm.batch_size, 10)
    cal = fit_affine_calibration(p_train, tr.rates, tr.mask, dm.bin_size_ms)
    np.testing.assert_allclose(ro.gain.numpy(), cal.gain, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ro.offset.numpy(), cal.offset, rtol=1e-5, atol=1e-4)
    val = dm.tensors("val")
    net_pred, net_sample, pred = model_predictions(module, val, dm.batch_size, 10)
    again, again_sample = predict_expected_rates(module, val, dm.batch_size, 10)
    np.testing.assert_array_equal(net_pred, again)  # the network's rates: the readout is not in them
    np.testing.assert_array_equal(net_sample, again_sample)
    np.testing.assert_allclose(pred, np.maximum(net_pred * cal.gain + cal.offset, 1e-3), rtol=1e-5, atol=1e-5)
    vt = TrialSet.from_tensors(val, dm.session, dm.bin_size_ms)
    # the readout fitted on training trials: better single-trial score than the raw network here
    assert bits_per_spike(pred, vt.rates, vt.mask, dm.bin_size_ms) > bits_per_spike(net_pred, vt.rates, vt.mask,
                                                                                      dm.bin_size_ms)
    res = evaluate_run(run_dir, checkpoint="last", baselines=(), ceiling_splits=2, write=False)
    s = res["sets"]["val"]["scores"]["model"]
    assert s["bits_per_spike_uncal"] == pytest.approx(s["bits_per_spike"], abs=2e-3)
    assert s["bits_per_spike_uncal"] > s["bits_per_spike_network"]
    assert res["spike_readout"]["model"]["fitted"]
    # the PSTH metrics score the network's rates, not the readout
    from eirnn.metrics import psth_corr

    assert s["psth_corr"] == pytest.approx(psth_corr(net_pred, vt.rates, vt.mask), abs=1e-9)
    logged = summary["best"]
    best = evaluate_run(run_dir, baselines=(), ceiling_splits=2, write=False)["sets"]["val"]["scores"]["model"]
    assert best["psth_corr_sample"] == pytest.approx(logged["val/psth_corr"], abs=1e-5)  # still the network's


@pytest.mark.slow
def test_fit_readout_cli_refits_and_reports(run_dir, tmp_path):
    r = subprocess.run([sys.executable, "-m", "eirnn.fit_readout", str(run_dir), "--checkpoint", "last"],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "last: epoch" in r.stdout and "readout gain median" in r.stdout
    bad = subprocess.run([sys.executable, "-m", "eirnn.fit_readout", str(tmp_path / "nope")],
                         cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and "nope" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_fit_spike_readout_false_leaves_identity(compose, tmp_path):
    from eirnn.evaluate import load_module
    from eirnn.train import build_datamodule, train

    cfg = compose(TINY + ["trainer.max_epochs=1", "fit_spike_readout=false", "logger=none"], tmp_path)
    summary = train(cfg)
    assert "spike_readout" not in summary
    module, _ = load_module(cfg, build_datamodule(cfg), tmp_path / "checkpoints" / "last.ckpt")
    assert not module.model.spike_readout.is_fitted
