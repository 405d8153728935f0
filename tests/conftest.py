"""Shared fixtures: Hydra config composition, the real session's path, small runs."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = str(REPO / "conf")
REAL_SESSION = REPO.parent / "shared" / "data" / "rnn_export_Newton_08_14_2025_SC.mat"


def compose_config(overrides: list[str], output_dir: Path):
    """Compose ``conf/train.yaml`` like ``python -m eirnn.train`` would, writing into ``output_dir``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


@pytest.fixture
def compose():
    return compose_config


@pytest.fixture
def real_session() -> Path:
    if not REAL_SESSION.exists():
        pytest.skip(f"real SC session not found at {REAL_SESSION} (../shared/data is absent on this machine)")
    return REAL_SESSION
