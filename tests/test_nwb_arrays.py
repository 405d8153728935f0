"""Issue 17: general sessions, NWB and arrays files in, converters, bad files."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_overrides

pynwb = pytest.importorskip("pynwb")

from eirnn.data import (DataFormatError, Session, load_arrays, load_mat, load_nwb, load_session,  # noqa: E402
                        make_synthetic_session, save_arrays, save_mat, save_nwb)

SAME = ("rates", "inputs", "counts", "time_axis_ms", "trial_duration_ms", "is_excitatory", "neuron_ids",
        "brain_area", "eye_raw", "eye_norm", "trial_location", "trial_identity", "trial_reward",
        "trial_salience", "trial_probability")
BIN_MS = 20.0


def assert_same_session(a: Session, b: Session):
    for k in SAME:
        x, y = getattr(a, k), getattr(b, k)
        if x is None:
            assert y is None, k
        else:
            assert np.array_equal(x, y, equal_nan=True), k
    assert a.input_names == b.input_names
    assert list(a.factors) == list(b.factors)
    assert np.array_equal(a.condition_ids(), b.condition_ids())
    assert a.alignment_event == b.alignment_event


# ----------------------------------------------------------------------------- a foreign NWB task
from eirnn.data.nwb_example import DEMO_OPTIONS as FOREIGN  # noqa: E402
from eirnn.data.nwb_example import make_demo_nwb as make_foreign_nwb  # noqa: E402


def test_foreign_nwb_is_binned_around_the_event(tmp_path, monkeypatch):
    p = tmp_path / "foreign.nwb"
    truth = make_foreign_nwb(p)
    s = load_nwb(p, FOREIGN)
    keep = np.flatnonzero(~truth["bad"])
    assert s.n_trials == keep.size == 38
    assert s.input_names == ("stim", "go", "reward") and list(s.factors) == ["side", "contrast"]
    assert s.factor_labels["side"] == ("left", "right")
    assert list(s.is_excitatory) == [True] * 4 + [False] * 2
    # window: 200 ms before the cue to the end of the longest trial (2.0 s), 20 ms bins
    assert s.n_time == 100 and s.time_axis_ms[0] == pytest.approx(-190.0)
    # counts: spikes of unit 1 in [cue + edge_i, cue + edge_{i+1}) of the first kept trial
    k0 = keep[0]
    edges = truth["cue"][k0] + (-200.0 + BIN_MS * np.arange(s.n_time + 1)) / 1000.0
    expect = np.histogram(truth["spikes"][1], edges)[0]
    n_valid = int(round(truth["durs"][k0] * 1000 / BIN_MS))
    assert np.array_equal(s.counts[0, :n_valid, 1], expect[:n_valid])
    assert np.array_equal(s.rates[0, :n_valid, 1], expect[:n_valid] * (1000.0 / BIN_MS))
    # variable-length trials: bins past a trial's stop are missing in rates and inputs
    assert np.isnan(s.rates[0, n_valid:]).all() and np.isnan(s.inputs[0, n_valid:]).all()
    assert np.isfinite(s.rates[0, :n_valid]).all()
    lengths = s.missing_mask()[:, :, 0].sum(axis=1)
    assert sorted(set(lengths.tolist())) == [50, 75, 100]
    # inputs: stimulus = contrast * side during 500 ms after the cue; go step 600 ms on; reward pulse 100 ms
    t = s.time_axis_ms
    sign = 1.0 if truth["side"][k0] == "right" else -1.0
    on = (t > 0) & (t < 500)
    assert np.allclose(s.inputs[0, on, 0], truth["contrast"][k0] * sign)
    assert np.all(s.inputs[0, (t > 520) & (t < n_valid * BIN_MS - 200), 0] == 0)
    go = s.inputs[0, :n_valid, 1]
    assert np.array_equal(go, (t[:n_valid] >= 600).astype(float))
    rew_trial = np.flatnonzero(np.isfinite(truth["reward"][keep]))[0]
    rew = s.inputs[rew_trial, :, 2]
    assert np.nansum(rew) == 5 and np.all(rew[(t >= 700) & (t < 800)] == 1)
    no_rew = np.flatnonzero(~np.isfinite(truth["reward"][keep]))[0]
    assert np.nansum(s.inputs[no_rew, :, 2]) == 0
    assert np.allclose(s.events["go_time"], 600.0)
    # a large TimeSeries is read trial by trial: same inputs
    import eirnn.data.nwb_io as nwb_io

    monkeypatch.setattr(nwb_io, "_READ_WHOLE_MAX", 0)
    assert np.array_equal(load_nwb(p, FOREIGN).inputs, s.inputs, equal_nan=True)
    # the same file written back by eirnn and read with no options gives the same arrays
    q = tmp_path / "again.nwb"
    save_nwb(s, q)
    again = load_nwb(q)
    assert_same_session(s, again)
    assert again.factor_labels["side"] == ("left", "right")
    # the data report handles another task: its own factors, no SC-only checks
    from eirnn.data.quality import format_report, session_report

    rep = session_report(again)
    assert rep["conditions"]["factors"] == ["side", "contrast"] and "label_mismatch" not in rep["anomalies"]
    assert list(rep["filters"]) == ["min_duration_ms"]
    assert "| side | contrast | trials |" in format_report(rep)
    from eirnn.data.quality import main as report_main

    assert report_main([str(p), "--options", json.dumps(FOREIGN)]) == 0  # another lab's file, with its options


@pytest.mark.parametrize("name", ["s.npz", "s.h5"])
def test_arrays_round_trip_keeps_a_general_session(tmp_path, name):
    p = tmp_path / "foreign.nwb"
    make_foreign_nwb(p, n_trials=12)
    s = load_nwb(p, FOREIGN)
    out = save_arrays(s, tmp_path / name)
    back = load_arrays(out)
    assert_same_session(s, back)
    assert np.array_equal(back.events["reward_time"], s.events["reward_time"], equal_nan=True)


def test_synthetic_teacher_round_trips_through_nwb_and_arrays(tmp_path):
    s = make_synthetic_session(seed=3, n_trials=24, n_time=40, n_exc=5, n_inh=3, n_hidden_exc=6, n_hidden_inh=2)
    assert np.isnan(s.rates).any()  # NaN past each trial's end: obs_intervals in NWB, mask in arrays
    for name in ("t.nwb", "t.npz"):
        back = load_session(save_nwb(s, tmp_path / name) if name.endswith(".nwb") else save_arrays(s, tmp_path / name))
        assert_same_session(s, back)
    assert np.array_equal(load_arrays(tmp_path / "t.npz").truth["rates"], s.truth["rates"], equal_nan=True)
    from pynwb import validate

    assert list(validate(path=str(tmp_path / "t.nwb"))) == []  # a valid NWB file (pynwb's schema validator)


def test_plain_arrays_with_condition_ids_and_lfads_keys(tmp_path):
    rng = np.random.default_rng(0)
    counts = rng.poisson(1.0, (10, 7, 4))
    inputs = rng.normal(size=(10, 7, 2))
    np.savez(tmp_path / "a.npz", counts=counts, inputs=inputs, condition_ids=np.arange(10) % 3,
             is_excitatory=np.array([1, 1, 0, 1], bool))
    with pytest.raises(DataFormatError, match="bin_size_ms"):
        load_arrays(tmp_path / "a.npz")
    s = load_arrays(tmp_path / "a.npz", {"bin_size_ms": 10})
    assert s.rates[2, 3, 1] == counts[2, 3, 1] * 100.0 and s.input_names == ("input_0", "input_1")
    assert np.array_equal(s.condition_ids(), np.arange(10) % 3)
    import h5py

    with h5py.File(tmp_path / "l.h5", "w") as f:
        f["train_encod_data"], f["valid_encod_data"] = counts[:7], counts[7:]
        f["train_ext_input"], f["valid_ext_input"] = inputs[:7], inputs[7:]
        f["train_inds"], f["valid_inds"] = np.r_[0, 2, 3, 5, 6, 8, 9], np.r_[1, 4, 7]
    ls = load_arrays(tmp_path / "l.h5", {"bin_size_ms": 10, "ei": {"default": "E"}})
    order = np.argsort(np.r_[0, 2, 3, 5, 6, 8, 9, 1, 4, 7])
    assert np.array_equal(ls.counts, counts[order]) and ls.is_excitatory.all()
    assert list(ls.factors["split"]) == [0, 1, 0, 0, 1, 0, 0, 1, 0, 0]


def test_session_without_sc_factors_is_general():
    K, T, N = 6, 5, 3
    s = Session(rates=np.full((K, T, N), 100.0), inputs=np.zeros((K, T, 2)), is_excitatory=np.array([True, False, True]),
                bin_size_ms=10.0, input_names=["a", "b"], factors={"f": [0, 1, 0, 1, 2, 2]},
                events={"go": np.arange(K, dtype=float)}, counts=np.ones((K, T, N), np.int64))
    assert s.trial_location is None and not s.is_sc
    assert s.condition_table().tolist() == [[0], [1], [2]]
    sub = s.subset([4, 1])
    assert sub.condition_ids().tolist() == [1, 0] and sub.events["go"].tolist() == [4.0, 1.0]
    with pytest.raises(DataFormatError, match="input_names"):
        save_mat(s, "/tmp/never.mat")
    with pytest.raises(DataFormatError, match="inputs"):
        Session(rates=np.ones((K, T, N)), inputs=np.zeros((K, T, 2)), is_excitatory=np.ones(N, bool),
                bin_size_ms=10.0, input_names=["a"])


# ----------------------------------------------------------------------------- bad files: one line, exit 2
def _convert_one_line_exit_2(capsys, args, *needles):
    from eirnn.data.convert import main

    assert main([str(a) for a in args]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def test_bad_nwb_files_give_one_line_and_exit_2(tmp_path, capsys):
    opts = json.dumps(FOREIGN)
    out = tmp_path / "o.npz"
    no_units = tmp_path / "no_units.nwb"
    make_foreign_nwb(no_units, n_trials=5, units=False)
    _convert_one_line_exit_2(capsys, [no_units, out, "--options", opts], str(no_units), "field 'units'")
    shifted = tmp_path / "shifted.nwb"  # spike times on another clock (all after the last trial)
    make_foreign_nwb(shifted, n_trials=5, spike_shift_s=1000.0)
    _convert_one_line_exit_2(capsys, [shifted, out, "--options", opts], str(shifted),
                             "field 'units.spike_times'", "none of the")
    ok = tmp_path / "ok.nwb"
    make_foreign_nwb(ok, n_trials=5)
    bad = dict(FOREIGN, factors=["side", "contrastt"])
    _convert_one_line_exit_2(capsys, [ok, out, "--options", json.dumps(bad)], str(ok),
                             "field 'trials.contrastt'", "no such trials column")
    _convert_one_line_exit_2(capsys, [ok, out, "--options", json.dumps(dict(FOREIGN, inputs=["nope"]))], str(ok),
                             "field 'inputs.nope'", "no TimeSeries named 'nope'")
    assert not out.exists()


def test_bad_nwb_config_is_a_user_error_in_training(compose, tmp_path):
    """Through the training entry point a data problem is a UserError (python -m eirnn.train
    prints it as one line and exits 2; tests/test_train.py checks that path on the CLI)."""
    from eirnn.train import UserError, build_datamodule

    ok = tmp_path / "ok.nwb"
    make_foreign_nwb(ok, n_trials=5)
    cfg = compose(["data=nwb", f"data.path={ok}", "logger=none", "data.options.bin_size_ms=20",
                   "data.options.align_event=cue_time", "data.options.factors=[sidee]", "data.options.inputs=[stim]",
                   "data.options.ei.default=E"], tmp_path / "run")
    with pytest.raises(UserError) as info:
        build_datamodule(cfg)
    msg = str(info.value)
    assert "\n" not in msg and str(ok) in msg and "field 'trials.sidee'" in msg


def test_missing_ei_labels_name_the_fix(tmp_path):
    p = tmp_path / "ok.nwb"
    make_foreign_nwb(p, n_trials=4)
    with pytest.raises(DataFormatError) as info:
        load_nwb(p, dict(FOREIGN, ei=None))
    msg = str(info.value)
    assert "Dale's law" in msg and "ei.column" in msg and "\n" not in msg
    with pytest.raises(DataFormatError, match="units.cell_type.*unknown E/I label"):
        load_nwb(p, dict(FOREIGN, ei={"column": "cell_type", "excitatory": ["pyr"], "inhibitory": ["sst"]}))
    s = load_nwb(p, dict(FOREIGN, ei={"default": "E"}))
    assert s.is_excitatory.all()


@pytest.mark.slow
def test_mat_export_loads_to_identical_arrays_after_conversion(tmp_path, real_session):
    """The lab's session (a subset, to stay fast) -> NWB / npz / h5 / MAT -> identical arrays."""
    full = load_mat(real_session)
    assert full.counts is not None and np.array_equal(full.counts * 40.0, full.rates)
    s = full.subset(np.arange(0, full.n_trials, 9))  # keeps the parent's eye normalisation
    from eirnn.data.convert import save_session

    for name in ("s.nwb", "s.npz", "s.h5", "s.mat"):
        save_session(s, tmp_path / name)
        assert_same_session(s, load_session(tmp_path / name))
    # the converter CLI, from the MAT file itself
    from eirnn.data.convert import main

    out = tmp_path / "full.nwb"
    assert main([str(real_session), str(out)]) == 0
    back = load_nwb(out)
    assert_same_session(full, back)
    assert back.metadata["pipeline_version"] == full.metadata["pipeline_version"]


# ----------------------------------------------------------------------------- training
# the tiny config for a recorded session: no synthetic-data keys, no debug=fast (its own batch size and epochs)
TINY_FIT = tiny_overrides("threads=1", "fit_spike_readout=false", "trainer.max_epochs=2", "model.n_hidden=6",
                          "data.batch_size=0", "data.filters=null", "callbacks.figures=null",
                          drop=("debug", "data.synthetic"))


@pytest.mark.slow
def test_foreign_nwb_task_trains_and_evaluates(compose, tmp_path):
    from omegaconf import OmegaConf

    from eirnn.evaluate import evaluate_run
    from eirnn.train import train

    p = tmp_path / "foreign.nwb"
    make_foreign_nwb(p)
    run = tmp_path / "run"
    overrides = ["data=nwb_example", f"data.path={p}"] + TINY_FIT  # the README's worked config
    cfg = compose(overrides, run)
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    summary = train(cfg)
    assert summary["epochs_trained"] == 2
    assert np.isfinite(summary["final"]["val/psth_corr"])
    res = evaluate_run(run, baselines=("train_mean", "condition_mean"), ceiling_splits=2, write=False,
                       calibrate=False)
    scores = res["sets"]["val"]["scores"]
    assert {"model", "train_mean", "condition_mean"} <= set(scores)
    assert np.isfinite(scores["model"]["psth_corr"])
    # the labelled export: one NetCDF file with dimension names, units and the task's own labels
    xr = pytest.importorskip("xarray")
    from eirnn.export import main as export_main

    c = OmegaConf.to_container(cfg, resolve=False)
    c.pop("hydra", None)
    c["paths"]["output_dir"] = "${hydra:runtime.output_dir}"
    OmegaConf.save(OmegaConf.create(c), run / ".hydra" / "config.yaml")
    assert export_main([str(run), "--no-figures"]) == 0
    with xr.open_dataset(run / "results.nc") as ds:
        assert ds["model_rates"].dims == ("trial", "time", "neuron")
        assert ds["model_rates"].attrs["units"] == "spikes/s" and ds["time"].attrs["units"] == "ms"
        assert list(ds["input"].values) == ["stim", "go", "reward"]
        assert ds["inputs"].dims == ("trial", "time", "input") and ds["W_in"].dims == ("unit", "input")
        assert set(ds["side_label"].values.tolist()) <= {"left", "right"} and "contrast" in ds.coords
        assert list(ds["ei"].values) == ["E"] * 4 + ["I"] * 2
        assert ds["W_rec"].dims == ("unit", "unit_from") and ds["latent_rates"].sizes["unit"] == 6 + 6
        assert np.allclose(ds["model_rates"].values, np.load(run / "outputs" / "val_model_rates.npy"))
        assert np.allclose(ds["correlation"].values, np.load(run / "metrics" / "per_neuron_correlation.npy"),
                           equal_nan=True)
        assert ds.attrs["alignment_event"] == "cue_time" and ds.attrs["factors"] == "side, contrast"


@pytest.mark.slow
def test_converted_real_session_trains_to_the_same_metrics(compose, tmp_path, real_session):
    """Done-when of issue 17: MAT, NWB and arrays copies of the shared session give the same
    metrics.json values (same seed, threads=1, 2 epochs)."""
    from eirnn.train import train

    nwb, npz = tmp_path / "s.nwb", tmp_path / "s.npz"
    from eirnn.data.convert import main

    for out in (nwb, npz):
        assert main([str(real_session), str(out)]) == 0
    common = ["logger=none", "threads=1", "fit_spike_readout=false", "trainer.max_epochs=2", "seed=0"]
    results = {}
    for name, data in (("mat", ["data=sc_mat", f"data.path={real_session}"]),
                       ("nwb", ["data=nwb", f"data.path={nwb}"]), ("arrays", ["data=arrays", f"data.path={npz}"])):
        run = tmp_path / name
        train(compose(data + common, run))
        m = json.loads((run / "metrics.json").read_text())
        results[name] = {k: m[k] for k in ("best", "final")}
        for part in results[name].values():
            part.pop("epoch_time_s", None)
    assert results["mat"]["best"]["val/psth_corr"] is not None
    assert results["nwb"] == results["mat"]
    assert results["arrays"] == results["mat"]


def test_reader_option_errors_say_how_to_pass_them_to_convert_and_report(tmp_path, capsys):
    """convert / data.report take reader options as --options JSON, not as data.options.KEY=VALUE."""
    from eirnn.data.convert import options_hint
    from eirnn.data.quality import main as report_main

    p = tmp_path / "foreign.nwb"
    make_foreign_nwb(p, n_trials=5)
    _convert_one_line_exit_2(capsys, [p, tmp_path / "o.npz"], "data.options.bin_size_ms=MS",
                             """--options '{"bin_size_ms": MS}'""")
    assert report_main([str(p)]) == 2
    assert """--options '{"bin_size_ms": MS}'""" in capsys.readouterr().err
    assert options_hint("label them (data.options.ei.default=E|I)").endswith("""--options '{"ei": {"default": "E"}}')""")
    assert options_hint("a plain message") == "a plain message"


def test_wrong_data_group_for_the_file_says_which_reads_it(tmp_path):
    """data=nwb given an .npz (or data=arrays an .nwb): the reader's complaint plus which group reads it."""
    from eirnn.data import DataFormatError, load_session

    p = tmp_path / "mine.npz"
    counts = np.random.default_rng(0).poisson(2.0, (4, 5, 2))
    np.savez(p, counts=counts, inputs=np.zeros((4, 5, 1)), bin_size_ms=10.0, is_excitatory=np.array([True, False]))
    with pytest.raises(DataFormatError, match=r"not a readable NWB file.*the file's name says arrays: data=arrays reads it"):
        load_session(p, "nwb")
    assert load_session(p, "arrays").n_trials == 4
    with pytest.raises(DataFormatError, match="file not found$"):
        load_session(tmp_path / "nope.npz", "nwb")
