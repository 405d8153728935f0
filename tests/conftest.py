"""Shared fixtures: Hydra config composition, a tiny config, a train helper, one thread, the real session.

Tests that run a training, a command line in a subprocess or a full evaluation are marked
``slow`` (``make test-fast`` = ``pytest -m "not slow"`` leaves them out).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = str(REPO / "conf")
REAL_SESSION = REPO.parent / "shared" / "data" / "rnn_export_Newton_08_14_2025_SC.mat"

# The tiny config of the end-to-end tests: a 1-epoch run on a small synthetic session (seconds).
TINY = ["debug=fast", "data.synthetic.n_trials=80", "++data.synthetic.n_time=40", "model.n_hidden=8",
        "trainer.max_epochs=1", "logger=none", "callbacks.figures.every_n_epochs=0"]


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def tiny_overrides(*extra: str | Iterable[str], base: Iterable[str] = TINY, drop: Iterable[str] = ()) -> list[str]:
    """``base`` (default :data:`TINY`) with ``extra`` (overrides, or lists of them) on top, one
    override per key, as Hydra would apply them (the later value wins): an extra replaces the
    base override of the same key, and ``KEY=null`` also drops those of its sub-keys
    (``callbacks.figures=null`` drops ``callbacks.figures.every_n_epochs=0``; a group choice such as
    ``model=lowrank`` keeps ``model.n_hidden=8``); ``drop`` removes base keys and their sub-keys."""
    extra = [o for e in extra for o in ([e] if isinstance(e, str) else e)]
    same = {_key(o) for o in extra}
    tree = {_key(o) for o in extra if o.split("=", 1)[-1] == "null"} | set(drop)
    kept = [o for o in base
            if _key(o) not in same and not any(_key(o) == k or _key(o).startswith(k + ".") for k in tree)]
    return kept + extra


# A 2-epoch run of a 160-trial, 9-neuron synthetic session with the default loggers and no
# figures (evaluation and readout tests: enough validation trials for their scores).
SMALL = tiny_overrides("data.synthetic.n_trials=160", "+data.synthetic.n_exc=6", "+data.synthetic.n_inh=3",
                       "model.n_hidden=6", "trainer.max_epochs=2", "callbacks.figures=null", drop=("logger",))


def compose_config(overrides: list[str], output_dir: Path, config_name: str = "train"):
    """Compose ``conf/<config_name>.yaml`` like ``python -m eirnn.train`` (``eirnn.cv``) would, writing into ``output_dir``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


def train_run(overrides: list[str], output_dir: Path, save_config: bool = False) -> dict:
    """Compose ``overrides`` into ``output_dir`` and train in this process; returns the run's summary.
    ``save_config``: first save the composed config as ``.hydra/config.yaml``, as a CLI run has it."""
    from omegaconf import OmegaConf

    from eirnn.train import train

    cfg = compose_config(list(overrides), Path(output_dir))
    if save_config:
        (Path(output_dir) / ".hydra").mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, Path(output_dir) / ".hydra" / "config.yaml")
    return train(cfg)


@pytest.fixture
def compose():
    return compose_config


@pytest.fixture
def tiny_cfg(tmp_path):
    """``tiny_cfg(*extra, out=tmp_path, base=TINY, drop=())``: the composed tiny config (:func:`tiny_overrides`)."""
    def make(*extra, out: Path | None = None, **kw):
        return compose_config(tiny_overrides(*extra, **kw), out or tmp_path)

    return make


@pytest.fixture
def train_tiny(tmp_path):
    """``train_tiny(*extra, out=tmp_path, base=TINY, drop=())``: train the tiny config; returns the summary."""
    def run(*extra, out: Path | None = None, **kw) -> dict:
        return train_run(tiny_overrides(*extra, **kw), out or tmp_path)

    return run


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors on a shared 2-core machine run fastest single-threaded (restored afterwards).
    Use as ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def real_session() -> Path:
    """The real SC session file; the test is skipped (with the reason) when ../shared/data is absent."""
    if not REAL_SESSION.exists():
        pytest.skip(f"real SC session not found at {REAL_SESSION} (../shared/data is absent on this machine)")
    return REAL_SESSION
