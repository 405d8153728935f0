"""Every kind of bad input raises DataFormatError(path, field, message), v5 and v7.3."""
from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io

from eirnn.data import DataFormatError, Session, load_mat, load_session, make_synthetic_session, save_mat
from eirnn.data.mat_io import REQUIRED_FIELDS

VERSIONS = ("5", "7.3")


@pytest.fixture(scope="module")
def session() -> Session:
    return make_synthetic_session(seed=5, n_trials=24, n_time=30, n_exc=4, n_inh=2,
                                  n_hidden_exc=6, n_hidden_inh=4)


@pytest.fixture(scope="module")
def good_files(session, tmp_path_factory):
    d = tmp_path_factory.mktemp("good")
    return {v: save_mat(session, d / f"good_v{v}.mat", version=v) for v in VERSIONS}


def corrupt(src: Path, dst: Path, version: str, name: str, value=None, delete: bool = False) -> Path:
    """Copy a valid export and replace/delete one field; ``value`` in MATLAB dim order."""
    shutil.copy(src, dst)
    if version == "7.3":
        with h5py.File(dst, "r+") as f:
            del f[name]
            if delete:
                return dst
            if isinstance(value, str):
                ds = f.create_dataset(name, data=np.frombuffer(value.encode("utf-16-le"), "<u2")[:, None])
                ds.attrs["MATLAB_class"] = np.bytes_(b"char")
            elif isinstance(value, dict):  # a MATLAB struct is an HDF5 group
                f.create_group(name)
            else:
                ds = f.create_dataset(name, data=np.asarray(value, dtype=np.float64).T)
                ds.attrs["MATLAB_class"] = np.bytes_(b"double")
    else:
        fields = {k: v for k, v in scipy.io.loadmat(dst).items() if not k.startswith("__")}
        if delete:
            del fields[name]
        else:
            fields[name] = value
        scipy.io.savemat(dst, fields)
    return dst


def expect_error(path: Path, field, *words) -> DataFormatError:
    with pytest.raises(DataFormatError) as info:
        load_mat(path)
    err = info.value
    assert err.field == field, str(err)
    assert err.path == str(path)
    text = str(err)
    assert "\n" not in text and text.startswith(f"{path}: ")
    if field is not None:
        assert f"field '{field}'" in text
    for w in words:
        assert w in text, text
    return err


# ------------------------------------------------------------------- whole file
def test_missing_path(tmp_path):
    p = tmp_path / "nope.mat"
    err = expect_error(p, None, "file not found")
    assert str(err) == f"{p}: file not found"
    with pytest.raises(DataFormatError):
        load_session(str(p))
    with pytest.raises(DataFormatError):
        load_session("")


def test_directory_is_not_a_file(tmp_path):
    expect_error(tmp_path, None, "not a regular file")


def test_text_file_named_mat(tmp_path):
    p = tmp_path / "notes.mat"
    p.write_text("firing_rates = [1 2 3]\nthis is not a MAT file\n")
    expect_error(p, None, "not a MATLAB file")
    empty = tmp_path / "empty.mat"
    empty.write_bytes(b"")
    expect_error(empty, None, "not a MATLAB file")


@pytest.mark.parametrize("version", VERSIONS)
def test_truncated_file(good_files, tmp_path, version):
    data = good_files[version].read_bytes()
    p = tmp_path / f"trunc{version}.mat"
    p.write_bytes(data[: max(1200, len(data) // 3)])
    expect_error(p, None, "unreadable")


# --------------------------------------------------------------- missing fields
@pytest.mark.parametrize("name", REQUIRED_FIELDS)
def test_missing_required_field_v73(good_files, tmp_path, name):
    p = corrupt(good_files["7.3"], tmp_path / "m.mat", "7.3", name, delete=True)
    expect_error(p, name, "required field is missing")


@pytest.mark.parametrize("name", ["firing_rates", "neuron_type", "input_target_loc", "trial_location"])
def test_missing_required_field_v5(good_files, tmp_path, name):
    p = corrupt(good_files["5"], tmp_path / "m.mat", "5", name, delete=True)
    expect_error(p, name, "required field is missing")


# ------------------------------------------------------------- misshapen fields
@pytest.mark.parametrize("version", VERSIONS)
def test_firing_rates_wrong_ndim(good_files, tmp_path, version):
    p = corrupt(good_files[version], tmp_path / "r.mat", version, "firing_rates", np.ones((3, 4)))
    expect_error(p, "firing_rates", "expected 3 dimensions [neurons x bins x trials], got shape (3, 4)")


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name,shape,words", [
    ("neuron_type", (1, 5), ("expected a vector of 6 entries",)),
    ("input_fixation_on", (30, 23), ("expected shape (30, 24)",)),
    ("input_go_signal", (24, 30), ("[bins x trials]",)),
    ("input_target_loc", (3, 30, 24), ("expected 4 target locations",)),
    ("input_target_loc", (4, 29, 24), ("expected shape (4, 30, 24)",)),
    ("trial_location", (1, 25), ("one per trial",)),
    ("bin_size_ms", (1, 2), ("expected a scalar",)),
    ("time_axis", (1, 31), ("one per time bin",)),
])
def test_misshapen_fields(good_files, tmp_path, version, name, shape, words):
    value = np.ones(shape)
    p = corrupt(good_files[version], tmp_path / "s.mat", version, name, value)
    expect_error(p, name, *words)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name,value", [("n_trials", 25.0), ("n_neurons", 7.0), ("n_time_bins", 31.0)])
def test_count_scalars_must_agree(good_files, tmp_path, version, name, value):
    p = corrupt(good_files[version], tmp_path / "n.mat", version, name, np.full((1, 1), value))
    expect_error(p, name, f"says {value:g}")


# ------------------------------------------------------------------ bad values
@pytest.mark.parametrize("version", VERSIONS)
def test_negative_rates(good_files, session, tmp_path, version):
    fr = np.nan_to_num(session.rates.transpose(2, 1, 0).copy(), nan=0.0)
    fr[1, 2, 3] = -40.0
    fr[0, 0, 0] = np.nan  # NaN stays allowed
    p = corrupt(good_files[version], tmp_path / "neg.mat", version, "firing_rates", fr)
    expect_error(p, "firing_rates", "negative rates in 1 bins")


@pytest.mark.parametrize("version", VERSIONS)
def test_infinite_rates(good_files, session, tmp_path, version):
    fr = np.nan_to_num(session.rates.transpose(2, 1, 0).copy(), nan=0.0)
    fr[0, 1, 2] = np.inf
    p = corrupt(good_files[version], tmp_path / "inf.mat", version, "firing_rates", fr)
    expect_error(p, "firing_rates", "infinite")


@pytest.mark.parametrize("version", VERSIONS)
def test_unknown_neuron_type(good_files, tmp_path, version):
    p = corrupt(good_files[version], tmp_path / "t.mat", version, "neuron_type",
                np.array([[1, 1, 3, 1, 2, 2]], dtype=float))
    expect_error(p, "neuron_type", "unknown code(s) [3]", "1 (E", "2 (I")


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name,bad", [("trial_location", 5.0), ("trial_identity", 0.0),
                                      ("trial_reward", 2.0), ("trial_salience", 1.5)])
def test_bad_trial_codes(good_files, session, tmp_path, version, name, bad):
    v = getattr(session, name).astype(float).reshape(1, -1)
    v[0, 3] = bad
    p = corrupt(good_files[version], tmp_path / "c.mat", version, name, v)
    expect_error(p, name)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", ["firing_rates", "bin_size_ms", "input_is_face"])
def test_non_numeric_field(good_files, tmp_path, version, name):
    p = corrupt(good_files[version], tmp_path / "x.mat", version, name, "not numbers")
    expect_error(p, name, "expected a numeric array, got char")


def test_struct_and_cell_fields(good_files, tmp_path):
    p = corrupt(good_files["7.3"], tmp_path / "g.mat", "7.3", "neuron_type", {"a": 1})
    expect_error(p, "neuron_type", "expected a numeric array, got struct")
    cell = np.empty((1, 2), dtype=object)
    cell[0, 0], cell[0, 1] = np.ones(3), "x"
    p = corrupt(good_files["5"], tmp_path / "c.mat", "5", "trial_reward", cell)
    expect_error(p, "trial_reward", "expected a numeric array, got cell")


# -------------------------------------------------------------- error object
def test_error_object_contract(tmp_path):
    err = DataFormatError(tmp_path / "a.mat", "firing_rates", "bad\nthing")
    assert err.path == str(tmp_path / "a.mat") and err.field == "firing_rates"
    assert str(err) == f"{tmp_path / 'a.mat'}: field 'firing_rates': bad thing"
    assert isinstance(err, ValueError)
    back = pickle.loads(pickle.dumps(err))
    assert (back.path, back.field, str(back)) == (err.path, err.field, str(err))


def test_session_constructor_validates(session):
    import dataclasses
    with pytest.raises(DataFormatError) as info:
        dataclasses.replace(session, inputs=session.inputs[:, :, :13])
    assert info.value.field == "inputs"
    with pytest.raises(DataFormatError) as info:
        dataclasses.replace(session, is_excitatory=np.ones(5, bool))
    assert info.value.field == "is_excitatory"
    with pytest.raises(DataFormatError) as info:
        dataclasses.replace(session, trial_location=session.trial_location[:-1])
    assert info.value.field == "trial_location"
    with pytest.raises(DataFormatError):
        dataclasses.replace(session, rates=session.rates[0])
