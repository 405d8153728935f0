"""Loading / saving the lab's MATLAB export (v5 and v7.3) and the Session API."""
from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io

from eirnn.data import (INPUT_CHANNELS, DataFormatError, Session, load_mat, load_session,
                        make_synthetic_session, save_mat)
from eirnn.data import mat_io

ARRAY_FIELDS = ("rates", "inputs", "is_excitatory", "trial_location", "trial_identity",
                "trial_reward", "trial_salience", "trial_probability", "time_axis_ms",
                "trial_duration_ms", "neuron_ids", "brain_area", "eye_raw")
EYE = [INPUT_CHANNELS.index("eye_x"), INPUT_CHANNELS.index("eye_y")]


def assert_same_session(a: Session, b: Session) -> None:
    for name in ARRAY_FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        if x is None or y is None:
            assert x is None and y is None, name
            continue
        assert x.dtype == y.dtype, name
        assert x.shape == y.shape, name
        assert np.array_equal(x, y, equal_nan=True), name
    assert a.bin_size_ms == b.bin_size_ms
    assert a.session_name == b.session_name


@pytest.fixture(scope="module")
def small() -> Session:
    return make_synthetic_session(seed=3, n_trials=48, n_time=70, n_exc=6, n_inh=3,
                                  n_hidden_exc=6, n_hidden_inh=4)


@pytest.fixture(scope="module")
def real(real_session) -> Session:
    return load_mat(real_session)


# ----------------------------------------------------------------- real file
def test_real_file_contents(real):
    s = real
    assert (s.n_trials, s.n_time, s.n_neurons, s.n_inputs) == (536, 219, 41, 14)
    assert s.rates.dtype == np.float64 and s.rates.flags.c_contiguous
    assert int(s.is_excitatory.sum()) == 25 and int((~s.is_excitatory).sum()) == 16
    assert s.condition_table().shape == (32, 4)
    assert s.condition_ids().max() == 31
    assert np.bincount(s.condition_ids()).min() == 4 and np.bincount(s.condition_ids()).max() == 56
    assert np.nanmean(s.rates) == pytest.approx(12.44, abs=0.01)
    counts = s.rates * s.bin_size_ms / 1000.0
    assert np.array_equal(counts, np.round(counts))
    assert s.bin_size_ms == 25.0
    assert s.time_axis_ms[0] == pytest.approx(-187.5) and s.time_axis_ms[-1] == pytest.approx(5262.5)
    assert s.session_name == "Newton_08_14_2025_SC"
    assert s.metadata["pipeline_version"] == "1.0.0"
    assert np.all(s.missing_mask())
    assert set(np.unique(s.trial_salience[s.trial_identity != 3])) == {0}
    # eye channels z-scored over the session, raw degrees kept
    for j, c in enumerate(EYE):
        assert abs(s.inputs[:, :, c].mean()) < 1e-9 and abs(s.inputs[:, :, c].std() - 1) < 1e-9
        assert np.abs(s.eye_raw[:, :, j]).max() > 5  # degrees
    summ = s.summary()
    assert summ["n_conditions"] == 32 and summ["n_E"] == 25 and summ["missing_bins"] == 0
    assert "536 trials" in s.describe()


@pytest.mark.slow
def test_real_file_roundtrip_v5_and_v73(real, tmp_path):
    for version in ("5", "7.3"):
        p = save_mat(real, tmp_path / f"real_v{version}.mat", version=version)
        assert mat_io.mat_version(p) == version
        back = load_mat(p)
        assert_same_session(real, back)
        assert back.metadata["export_date"] == real.metadata["export_date"]


# ------------------------------------------------------------ synthetic files
def test_v5_and_v73_agree_with_nan_padding(small, tmp_path):
    assert np.isnan(small.rates).any()
    p5 = save_mat(small, tmp_path / "s5.mat", version="5")
    p73 = save_mat(small, tmp_path / "s73.mat", version="7.3")
    a, b = load_mat(p5), load_mat(p73)
    assert_same_session(a, b)
    assert_same_session(small, a)
    assert np.array_equal(np.isnan(a.rates), np.isnan(small.rates))


def test_v73_is_genuine_matlab_file(small, tmp_path):
    p = save_mat(small, tmp_path / "g.mat")
    head = p.read_bytes()[:128]
    assert head.startswith(b"MATLAB 7.3 MAT-file")
    assert head[124:128] == b"\x00\x02IM"
    with h5py.File(p, "r") as f:
        assert f.id.get_create_plist().get_userblock() == 512
        assert f["firing_rates"].shape == (48, 70, 9)  # HDF5 = MATLAB dims reversed
        assert f["firing_rates"].attrs["MATLAB_class"] == b"double"
        assert f["input_target_loc"].shape == (48, 70, 4)
        assert f["neuron_type"].shape == (9, 1)  # MATLAB 1 x N
        sn = f["session_name"]
        assert sn.dtype == np.uint16 and sn.attrs["MATLAB_class"] == b"char"
        assert "".join(map(chr, sn[()].ravel())) == small.session_name
        assert f["n_trials"].shape == (1, 1) and f["n_trials"][0, 0] == 48


def test_v5_dims_are_matlab_order(small, tmp_path):
    p = save_mat(small, tmp_path / "d.mat", version="5")
    raw = scipy.io.loadmat(p)
    assert raw["firing_rates"].shape == (9, 70, 48)
    assert raw["input_target_loc"].shape == (4, 70, 48)
    assert raw["input_go_signal"].shape == (70, 48)
    assert str(raw["session_name"][0]) == small.session_name


def _zero_eye(path, version):
    if version == "7.3":
        with h5py.File(path, "r+") as f:
            for n in ("input_eye_x", "input_eye_y"):
                f[n][...] = 0.0
    else:
        d = {k: v for k, v in scipy.io.loadmat(path).items() if not k.startswith("__")}
        d["input_eye_x"] = np.zeros_like(d["input_eye_x"])
        d["input_eye_y"] = np.zeros_like(d["input_eye_y"])
        scipy.io.savemat(path, d)


def _drop_eye(path, version):
    if version == "7.3":
        with h5py.File(path, "r+") as f:
            del f["input_eye_x"], f["input_eye_y"]
    else:
        d = {k: v for k, v in scipy.io.loadmat(path).items()
             if not k.startswith("__") and not k.startswith("input_eye")}
        scipy.io.savemat(path, d)


@pytest.mark.parametrize("mutate", [_zero_eye, _drop_eye], ids=["all_zero_eye", "absent_eye"])
def test_eye_channels_zero_not_nan(small, tmp_path, mutate):
    loaded = {}
    for version in ("5", "7.3"):
        p = save_mat(small, tmp_path / f"e{version}.mat", version=version)
        mutate(p, version)
        loaded[version] = load_mat(p)
        eye = loaded[version].inputs[:, :, EYE]
        assert np.all(eye == 0.0) and not np.isnan(eye).any()
        # the other channels keep their NaN padding
        assert np.isnan(loaded[version].inputs[:, :, 0]).any()
    assert_same_session(loaded["5"], loaded["7.3"])
    assert np.all(loaded["5"].eye_raw == 0.0)
    # and it saves/loads again identically
    again = load_mat(save_mat(loaded["7.3"], tmp_path / "again.mat"))
    assert_same_session(loaded["7.3"], again)


def test_roundtrip_without_raw_eye_is_exact(small, tmp_path):
    """Session built without eye_raw: the z-scored channels are written and reload unchanged."""
    import dataclasses
    s = dataclasses.replace(small, eye_raw=None)
    for version in ("5", "7.3"):
        back = load_mat(save_mat(s, tmp_path / f"z{version}.mat", version=version))
        assert np.array_equal(back.inputs, s.inputs, equal_nan=True)


def test_subset_keeps_eye_scaling_and_roundtrips(small, tmp_path):
    one = small.subset([3])
    assert np.array_equal(one.inputs, small.inputs[[3]], equal_nan=True)  # not re-normalised
    assert np.array_equal(one.eye_norm, small.eye_norm)
    for version in ("5", "7.3"):
        p = save_mat(one, tmp_path / f"one{version}.mat", version=version)
        back = load_mat(p)
        assert back.rates.shape == (1, 70, 9)
        assert_same_session(one, back)
        assert np.array_equal(back.eye_norm, small.eye_norm)
    assert "eye_zscore" in scipy.io.loadmat(p if version == "5" else
                                            save_mat(one, tmp_path / "o.mat", version="5"))
    # a whole session needs no extension field
    assert "eye_zscore" not in scipy.io.loadmat(save_mat(small, tmp_path / "w.mat", version="5"))


def test_optional_fields_defaults(small, tmp_path):
    optional = ["time_axis", "trial_duration_ms", "trial_probability", "neuron_ids", "brain_area",
                "session_name", "n_trials", "n_neurons", "n_time_bins", "export_date",
                "pipeline_version"]  # eye_zscore is only written for subsets
    p73 = save_mat(small, tmp_path / "opt73.mat")
    with h5py.File(p73, "r+") as f:
        for n in optional:
            del f[n]
    p5 = save_mat(small, tmp_path / "opt5.mat", version="5")
    d = {k: v for k, v in scipy.io.loadmat(p5).items() if not k.startswith("__") and k not in optional}
    scipy.io.savemat(p5, d)
    a, b = load_mat(p73), load_mat(p5)
    for s, stem in ((a, "opt73"), (b, "opt5")):
        assert s.session_name == stem
        assert np.array_equal(s.time_axis_ms, 25.0 * (np.arange(70) - 0.5))
        assert np.all(s.trial_duration_ms == 70 * 25.0)
        assert np.array_equal(s.trial_probability, s.trial_reward)
        assert np.array_equal(s.neuron_ids, np.arange(1, 10))
        assert s.brain_area is None
        assert np.array_equal(s.rates, small.rates, equal_nan=True)


def test_load_session_alias_and_source(small, tmp_path):
    p = save_mat(small, tmp_path / "alias.mat", version="5")
    s = load_session(str(p))
    assert s.source == str(p)
    assert_same_session(s, load_mat(p))


def test_save_is_atomic(small, tmp_path, monkeypatch):
    target = tmp_path / "atomic.mat"
    save_mat(small, target)
    before = target.read_bytes()

    def boom(fields, path, compress):
        Path(path).write_bytes(b"half written")
        raise RuntimeError("disk full")

    monkeypatch.setattr(mat_io, "_write_h5", boom)
    with pytest.raises(RuntimeError):
        save_mat(small, target)
    assert target.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["atomic.mat"]
    with pytest.raises(RuntimeError):
        save_mat(small, tmp_path / "new.mat")
    assert sorted(os.listdir(tmp_path)) == ["atomic.mat"]
    with pytest.raises(ValueError):
        save_mat(small, tmp_path / "x.mat", version="4")


# ------------------------------------------------------------------ Session API
def test_session_conditions_mask_subset(small):
    s = small
    cids = s.condition_ids()
    table = s.condition_table()
    assert cids.shape == (s.n_trials,) and cids.dtype == np.int64
    assert np.array_equal(np.unique(cids), np.arange(len(table)))
    tuples = np.stack([s.trial_location, s.trial_identity, s.trial_reward, s.trial_salience], 1)
    assert np.array_equal(table[cids], tuples)
    mask = s.missing_mask()
    assert mask.shape == s.rates.shape and mask.dtype == bool
    expect = np.isfinite(s.rates) & np.isfinite(s.inputs).all(2)[:, :, None]
    assert np.array_equal(mask, expect) and not mask.all()
    idx = np.array([5, 1, 7])
    sub = s.subset(idx)
    assert sub.n_trials == 3
    assert np.array_equal(sub.rates, s.rates[idx], equal_nan=True)
    assert np.array_equal(sub.truth["rates"], s.truth["rates"][idx], equal_nan=True)
    assert np.array_equal(sub.truth["t_go_ms"], s.truth["t_go_ms"][idx])
    assert sub.truth["W_rec"] is s.truth["W_rec"]
    assert np.array_equal(sub.eye_raw, s.eye_raw[idx], equal_nan=True)
    bool_sub = s.subset(np.isin(np.arange(s.n_trials), idx))
    assert np.array_equal(bool_sub.trial_location, s.trial_location[np.sort(idx)])
    summ = s.summary()
    assert summ["n_trials"] == 48 and summ["n_E"] == 6 and summ["n_I"] == 3
    assert summ["missing_bins"] == int((~mask).sum())
    assert 0 < summ["missing_fraction"] < 1
    assert len(s.describe().splitlines()) >= 3


def test_session_to_tensors(small):
    import torch
    t = small.to_tensors()
    assert t["inputs"].dtype == torch.float32 and t["inputs"].shape == (48, 70, 14)
    assert not torch.isnan(t["rates"]).any() and not torch.isnan(t["inputs"]).any()
    assert torch.equal(t["mask"], torch.from_numpy(small.missing_mask()))
    assert torch.equal(t["trial"], torch.arange(48))
    assert "true_rates" in t


def test_subsample_script_keeps_neuron_and_trial_fields_in_step(small, tmp_path):
    """experiments/subsample_session.py (the sub-sampled sessions of experiments/evaluation.md)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "subsample_session", Path(__file__).resolve().parents[1] / "experiments" / "subsample_session.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    n_neurons, n_trials = small.rates.shape[2] - 2, small.rates.shape[0] - 3
    sub, neu = mod.subsample(small, 7, n_neurons, n_trials)
    assert sub.rates.shape == (n_trials, small.rates.shape[1], n_neurons) and len(set(neu.tolist())) == n_neurons
    assert np.array_equal(sub.is_excitatory, small.is_excitatory[neu])
    assert sub.inputs.shape[2] == small.inputs.shape[2]  # inputs keep every channel
    again, _ = mod.subsample(small, 7, n_neurons, n_trials)  # seeded
    assert np.array_equal(np.nan_to_num(again.rates), np.nan_to_num(sub.rates))
    path = save_mat(sub, tmp_path / "sub.mat")
    back = load_mat(path)
    assert back.rates.shape == sub.rates.shape and np.array_equal(back.is_excitatory, sub.is_excitatory)
