"""`python -m eirnn.train --help` prints exactly Hydra's help text, faster."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from eirnn.fasthelp import app_config_groups, fast_help

REPO = Path(__file__).resolve().parents[1]


def _run(args, hydra_help: bool):
    env = dict(os.environ, EIRNN_HYDRA_HELP="1" if hydra_help else "0")
    return subprocess.run([sys.executable, "-m", "eirnn.train", *args], cwd=str(REPO), env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
@pytest.mark.parametrize("args", [["--help"], ["model=lowrank", "seed=3", "--help"], ["--help", "--resolve"]])
def test_fast_help_equals_hydra_help(args):
    ours, hydra = _run(args, hydra_help=False), _run(args, hydra_help=True)
    assert ours.returncode == hydra.returncode == 0
    assert ours.stdout == hydra.stdout
    assert "== Configuration groups ==" in ours.stdout and "variant:" in ours.stdout


def test_fast_help_leaves_other_flags_to_hydra(tmp_path):
    assert fast_help(["train", "--help", "--multirun"], str(REPO / "conf"), "train") is None
    assert fast_help(["train", "--help", "--resolve"], str(REPO / "conf"), "train") is None
    assert fast_help(["train", "seed=1"], str(REPO / "conf"), "train") is None
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "b.yaml").write_text("x: 1\n")
    (tmp_path / "g" / "a.yaml").write_text("x: 2\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "hydra").mkdir()
    (tmp_path / "hydra" / "h.yaml").write_text("y: 1\n")
    assert app_config_groups(str(tmp_path)) == "g: a, b\n"
