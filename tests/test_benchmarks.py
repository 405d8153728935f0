"""The speed benchmark runs end to end (tiny sizes) and prints every row; no timing is asserted."""
from __future__ import annotations

import re

import pytest

from benchmarks import run as bench


@pytest.mark.slow
def test_smoke_benchmark_prints_every_row(tmp_path):
    out = tmp_path / "bench.md"
    md = bench.run(["--smoke", "--threads", "1", "--out", str(out)])
    assert out.read_text().strip() == md.strip()
    rows = {m.group(1) for m in re.finditer(r"^\| (\w+) \| ", md, flags=re.M)}
    expected = set(bench.ROW_IDS) - {"f2"}  # the 1-epoch subprocess runs in full mode only
    assert expected <= rows
    for header in ("machine:", "torch threads 1", "versions: python", "lightning", "data: synthetic smoke-test"):
        assert header in md
    # every timed row has a number for ours, and a reference except the start-up rows
    for line in md.splitlines():
        m = re.match(r"^\| (\w+) \| [^|]+ \| ([\d.]+) \| ([\d.]+) \| ([\w./]+) \| ([\w./]+) \|", line)
        if m and m.group(1) in expected:
            assert float(m.group(2)) > 0
            if not m.group(1).startswith("f"):
                assert m.group(4) != "n/a" and m.group(5).endswith("x")
    assert "param / fixed" in md and "output / off" in md


def test_missing_real_file_falls_back_to_synthetic_of_the_real_shape(tmp_path):
    ov, note = bench.data_overrides(str(tmp_path / "absent.mat"))
    assert "SYNTHETIC" in note and "absent.mat" in note
    assert "data.synthetic.n_trials=538" in ov and "+data.synthetic.n_time=219" in ov
    present = tmp_path / "session.mat"
    present.write_bytes(b"")
    ov, note = bench.data_overrides(str(present))
    assert ov == ["data=sc_mat", f"data.path={present}"] and "real session" in note


def test_unknown_row_is_rejected():
    with pytest.raises(SystemExit):
        bench.run(["--smoke", "--rows", "a,zz"])
