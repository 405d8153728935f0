"""The one run-folder opener (eirnn/runs/run_dir.py): config with a usable data.path, one
checkpoint order for every command, a module rebuilt from a checkpoint alone."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml

from conftest import compose_config, tiny_overrides, train_run

# the tiny config without debug=fast and synthetic-data keys (any data file), 2 epochs, one thread
SMALL = tiny_overrides("model.n_hidden=4", "trainer.max_epochs=2", "threads=1", drop=("debug", "data.synthetic"))
TINY = ["data.synthetic.n_trials=40", *SMALL]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def moved_run(tmp_path_factory):
    """A run trained on an arrays file that was then moved: ``(run, new path of the file)``."""
    from eirnn.data import make_synthetic_session, save_arrays

    root = tmp_path_factory.mktemp("moved")
    (root / "a").mkdir()
    first = save_arrays(make_synthetic_session(seed=3, n_trials=40, n_exc=6, n_inh=3, n_time=40), root / "a" / "s.npz")
    run = root / "run"
    train_run(["data=arrays", f"data.path={first}", *SMALL], run, save_config=True)
    (root / "b").mkdir()
    moved = root / "b" / "s.npz"
    shutil.move(str(first), moved)
    return run, moved


@pytest.mark.slow
def test_a_run_whose_data_file_moved_exports_and_evaluates(moved_run, tmp_path, capsys):
    from eirnn import evaluate, export, fit_readout

    run, moved = moved_run
    for main, argv in ((evaluate.main, [str(run), "--baselines", "train_mean", "--ceiling-splits", "2",
                                        "--noise-draws", "1"]),
                       (export.main, [str(run), "--no-figures", "--n-pcs", "2", "--out", str(tmp_path / "x")]),
                       (fit_readout.main, [str(run), "--noise-draws", "1"])):
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "data.path" in err[0] and "--data-path" in err[0], err
    assert evaluate.main([str(run), "--baselines", "train_mean", "--ceiling-splits", "2", "--noise-draws", "1",
                          "--data-path", str(moved)]) == 0
    ev = json.loads((run / "evaluation.json").read_text())
    assert np.isfinite(ev["sets"]["val"]["scores"]["model"]["psth_corr"])
    assert export.main([str(run), "--no-figures", "--n-pcs", "2", "--data-path", str(moved)]) == 0
    assert json.loads((run / "config.json").read_text())["data"]["path"] == str(moved.resolve())
    # the export recorded where the file is now: every command finds it from there without --data-path
    assert evaluate.main([str(run), "--baselines", "", "--ceiling-splits", "2", "--noise-draws", "1"]) == 0
    assert fit_readout.main([str(run), "--checkpoint", "last", "--noise-draws", "1"]) == 0
    assert export.main([str(run), "--no-figures", "--n-pcs", "2", "--out", str(tmp_path / "y")]) == 0


def test_every_command_opens_checkpoints_in_one_order(tmp_path):
    from eirnn.analysis.common import AnalysisError, find_checkpoint as analysis_find
    from eirnn.evaluate import EvaluationError, _resolve_checkpoint
    from eirnn.export import ExportError, find_checkpoint as export_find
    from eirnn.runs.run_dir import find_checkpoint

    ck = tmp_path / "checkpoints"
    ck.mkdir()
    finders = ((find_checkpoint, Exception), (export_find, ExportError), (_resolve_checkpoint, EvaluationError),
               (analysis_find, AnalysisError))
    for find, err in finders:
        with pytest.raises(err, match="best.ckpt: not found .nor last.ckpt, interrupted.ckpt"):
            find(tmp_path, "best")
    (ck / "interrupted.ckpt").write_bytes(b"x")
    assert {find(tmp_path, "best").name for find, _ in finders} == {"interrupted.ckpt"}
    (ck / "last.ckpt").write_bytes(b"x")
    assert {find(tmp_path, "best").name for find, _ in finders} == {"last.ckpt"}
    (ck / "best.ckpt").write_bytes(b"x")
    assert {find(tmp_path, "best").name for find, _ in finders} == {"best.ckpt"}
    for find, err in finders:
        with pytest.raises(err, match="run folder not found"):
            find(tmp_path / "nope", "last")


def test_config_json_of_an_export_gives_the_data_path(tmp_path, monkeypatch):
    """evaluate and export read data.path the same way: as recorded, else relative to where the
    training started, else the absolute path an export wrote into config.json."""
    from eirnn.evaluate import EvaluationError, load_config
    from eirnn.export import load_run_config

    run, data = tmp_path / "run", tmp_path / "data" / "s.npz"
    (run / ".hydra").mkdir(parents=True)
    data.parent.mkdir()
    data.write_bytes(b"x")
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"data": {"path": "gone/s.npz"}, "paths": {}}))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(EvaluationError, match="data.path gone/s.npz not found .pass --data-path FILE."):
        load_config(run)
    (run / "config.json").write_text(json.dumps({"data": {"path": str(data)}}))
    assert load_config(run).data.path == load_run_config(run).data.path == str(data)
    assert load_config(run, data_path="elsewhere.npz").data.path == "elsewhere.npz"


@pytest.mark.slow
def test_a_checkpoint_rebuilds_its_module_without_the_run_folder(tmp_path):
    from eirnn.errors import UserError
    from eirnn.evaluation.predict import predict_rates
    from eirnn.runs.build import build_datamodule
    from eirnn.runs.run_dir import load_checkpoint_module, load_module, open_run
    from eirnn.train import train
    from eirnn.training.rebuild import SPEC_KEY

    run = tmp_path / "run"
    cfg = compose_config(TINY, run)
    train(cfg)
    ckpt_path = run / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)  # plain containers only
    assert ckpt[SPEC_KEY]["model"]["_target_"] == "eirnn.models.EIRNN"
    alone, _ = load_checkpoint_module(ckpt_path)  # no config, no data
    dm = build_datamodule(cfg)
    val = dm.tensors("val")
    opened = open_run(run, "last", cfg=cfg, datamodule=dm)
    assert opened.module.history == alone.history and opened.epoch == ckpt["epoch"]
    np.testing.assert_array_equal(predict_rates(alone, val), predict_rates(opened.module, val))
    # a checkpoint written before the spec: the run's config rebuilds it; alone it cannot be
    del ckpt[SPEC_KEY]
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    with pytest.raises(UserError, match="holds no rebuild spec"):
        load_checkpoint_module(old)
    from_cfg, _ = load_module(cfg, dm, old)
    np.testing.assert_array_equal(predict_rates(from_cfg, val), predict_rates(alone, val))


def test_member_states_of_both_member_formats(tmp_path):
    from eirnn.errors import RunFolderError
    from eirnn.runs.run_dir import member_dirs, member_states
    from eirnn.training.ensemble.members import member_checkpoint

    w = {"w": torch.ones(2, 2)}
    (tmp_path / "members" / "m10" / "checkpoints").mkdir(parents=True)
    (tmp_path / "members" / "m2").mkdir(parents=True)
    (tmp_path / "members" / "notes").mkdir(parents=True)
    torch.save(member_checkpoint(w, 10, 11, {"epoch": 3}, 3, 9), tmp_path / "members" / "m10" / "checkpoints" / "last.ckpt")
    torch.save(w, tmp_path / "members" / "m2" / "best.pt")  # the older fit member file
    assert [d.name for d in member_dirs(tmp_path)] == ["m2", "m10"]
    (old, _), (new, info) = member_states(tmp_path)  # best -> last for the new format
    assert torch.equal(old["w"], w["w"]) and torch.equal(new["w"], w["w"]) and info["member"] == 10
    with pytest.raises(RunFolderError, match="interrupted.ckpt: not found"):
        member_states(tmp_path, "interrupted")
    assert member_states(tmp_path / "members" / "m2") == []
