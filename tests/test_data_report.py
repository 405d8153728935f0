"""python -m eirnn.data.quality on a generated export with planted anomalies."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from eirnn.data import INPUT_CHANNELS, make_synthetic_session, save_mat
from eirnn.data.quality import format_report, main, session_report

CH = {n: i for i, n in enumerate(INPUT_CHANNELS)}


def _planted():
    s = make_synthetic_session(seed=3, n_trials=64, n_time=60, n_exc=4, n_inh=3, n_hidden_exc=4, n_hidden_inh=2,
                               nan_pad=False)
    assert np.all(s.trial_duration_ms > 300) and np.all(s.rates.mean(axis=(0, 1)) > 0.5)  # clean to start with
    u, r, dur = s.inputs.copy(), s.rates.copy(), s.trial_duration_ms.copy()
    task = [CH[c] for c in INPUT_CHANNELS if c not in ("eye_x", "eye_y")]
    for k in (0, 1, 2):  # aborted: ~10 ms, no fixation, target + go on from bin 8
        u[k][:, task] = 0.0
        u[k, 8:, CH[f"target_loc_{s.trial_location[k]}"]] = 1.0
        u[k, 8:, CH["go_signal"]] = 1.0
        dur[k] = 10.0
    for k in (3, 4):  # long trials without fixation input, go on from the start
        u[k, :, CH["fixation_on"]] = 0.0
        u[k, :, CH["go_signal"]] = 1.0
    r[:, :, 2] = 0.0  # a silent neuron
    r[5, 10:13, 0] = np.nan  # 3 missing bins
    loc = s.trial_location[6]  # trial 6: target shown at the wrong location
    other = loc % 4 + 1
    u[6, :, CH[f"target_loc_{other}"]] = u[6, :, CH[f"target_loc_{loc}"]]
    u[6, :, CH[f"target_loc_{loc}"]] = 0.0
    on = np.flatnonzero(u[9, :, CH[f"target_loc_{s.trial_location[9]}"]] > 0.5)[0]
    u[9, on, CH[f"target_loc_{s.trial_location[9] % 4 + 1}"]] = 1.0  # two targets in one bin
    r[7, 5, 1] = 13.3  # not an integer spike count (x 25 ms)
    return dataclasses.replace(s, inputs=u, rates=r, trial_duration_ms=dur)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    path = tmp_path_factory.mktemp("report") / "planted.mat"
    save_mat(_planted(), path)
    return path


def test_report_finds_planted_anomalies(exported, tmp_path, capsys):
    out = tmp_path / "rep.json"
    assert main([str(exported), "--json", str(out), "--markdown", str(tmp_path / "rep.md")]) == 0
    text = capsys.readouterr().out
    rep = json.loads(out.read_text())
    a = rep["anomalies"]
    assert a["aborted"]["count"] == 3 and a["aborted"]["first"] == [0, 1, 2]
    assert a["no_fixation"]["count"] == 5 and a["no_fixation"]["of_which_aborted"] == 3
    assert a["cue_without_fixation"]["first"] == [0, 1, 2, 3, 4]
    assert a["silent_neurons"]["first"] == [2]
    assert a["missing_bins"]["count"] == 3 and a["missing_bins"]["trials_affected"] == 1
    assert a["non_integer_counts"]["count"] == 1
    assert a["label_mismatch"]["first"] == [6]
    assert a["multi_target"]["first"] == [9]
    assert a["eye_data"]["status"] == "present"
    f = rep["filters"]
    assert f["min_duration_ms"]["removed"] == 3 and f["require_fixation"]["removed"] == 5 and f["both"]["kept"] == 59
    assert rep["trials"]["n_trials"] == 64 and rep["trials"]["duration_ms_quantiles"]["min"] == 10.0
    assert rep["conditions"]["n_conditions"] == 32 and sum(c["n_trials"] for c in rep["conditions"]["table"]) == 64
    n2 = rep["neurons"][2]
    assert n2["flags"] == ["silent"] and n2["spikes"] == 0 and n2["fraction_zero_bins"] == 1.0
    assert "non_integer_counts" in rep["neurons"][1]["flags"]
    assert "| aborted | 3 trials |" in text and "## Trial filters" in text
    assert (tmp_path / "rep.md").read_text() == text


def test_report_other_shapes_and_no_eye_data(tmp_path):
    s = make_synthetic_session(seed=4, n_trials=40, n_time=33, n_exc=2, n_inh=2, n_hidden_exc=3, n_hidden_inh=1,
                               bin_size_ms=20.0)
    s = dataclasses.replace(s, eye_raw=np.zeros_like(s.eye_raw), eye_norm=None)
    path = tmp_path / "noeye.mat"
    save_mat(s, path, version="5")
    from eirnn.data import load_mat

    rep = session_report(load_mat(path))
    assert rep["anomalies"]["eye_data"]["status"] == "all zero (no eye data)"
    assert rep["trials"]["n_time_bins"] == 33 and rep["trials"]["bin_size_ms"] == 20.0
    assert rep["anomalies"]["aborted"]["count"] == 0
    assert rep["trials"]["bins_past_end_nan_padded"] == rep["trials"]["bins_past_end"] > 0  # NaN-padded export
    assert "# Data report" in format_report(rep)


def test_report_bad_file_exit_2(tmp_path, capsys):
    bad = tmp_path / "x.mat"
    bad.write_text("not a mat file")
    assert main([str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.strip().count("\n") == 0 and "x.mat" in err
