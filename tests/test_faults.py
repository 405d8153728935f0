"""Issue 19: runs under faults and mistakes -- nothing lost, nothing mixed, nothing misreported.

Run folders belong to one run, every write is atomic (also on a full disk), metrics.json
says how the run ended, config values and data fields are checked before any work, and
every command turns the one user-error type into one line and exit 2.
"""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, tiny_overrides
from eirnn.errors import ConfigError, DiskFullError, RunFolderError, UserError

# the tiny config without debug=fast: 40 trials of the default length, one thread, default figures
TINY = tiny_overrides("data.synthetic.n_trials=40", "model.n_hidden=4", "threads=1",
                      drop=("debug", "data.synthetic.n_time", "callbacks.figures"))


def _cli(module: str, args, cwd, timeout=300):
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _one_line_error(res, *needles):
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    err_lines = [ln for ln in res.stderr.splitlines() if "error:" in ln]
    assert len(err_lines) == 1, res.stderr[-2000:]
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout
    for n in needles:
        assert n in err_lines[0], err_lines[0]
    return err_lines[0]


# ------------------------------------------------------------------ one error type
def test_every_commands_error_is_the_one_user_error_type():
    from eirnn.analysis.common import AnalysisError
    from eirnn.data import DataFormatError
    from eirnn.evaluate import EvaluationError
    from eirnn.export import ExportError
    from eirnn.sweep_report import SweepReportError
    from eirnn.train import UserError as TrainUserError

    assert TrainUserError is UserError
    for cls in (AnalysisError, DataFormatError, EvaluationError, ExportError, SweepReportError,
                ConfigError, DiskFullError, RunFolderError):
        assert issubclass(cls, UserError), cls
    assert issubclass(DataFormatError, ValueError) and issubclass(DiskFullError, OSError)
    assert str(UserError("two\nlines")) == "two lines"


# ------------------------------------------------------------------ atomic writes
def _enospc_after(n_bytes: int):
    def write(f):
        f.write(b"x" * n_bytes)
        raise OSError(errno.ENOSPC, "No space left on device")
    return write


def test_full_disk_keeps_the_previous_file_and_names_path_and_free_space(tmp_path):
    from eirnn.utils import atomic_write, write_json_atomic

    target = tmp_path / "metrics.json"
    write_json_atomic(target, {"ok": 1})
    with pytest.raises(DiskFullError) as info:
        atomic_write(target, _enospc_after(100))
    msg = str(info.value)
    assert str(target) in msg and "free" in msg and "\n" not in msg
    assert json.loads(target.read_text()) == {"ok": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]  # no temporary file left


def test_full_disk_on_a_real_small_tmpfs(tmp_path):
    """A 64 KiB tmpfs (root only, where mounting is allowed): the real ENOSPC path."""
    from eirnn.utils import atomic_write

    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode().strip()}")
    try:
        target = mnt / "best.ckpt"
        atomic_write(target, b"good" * 1000)
        with pytest.raises(DiskFullError, match="disk full"):
            atomic_write(target, b"y" * 200_000)
        assert target.read_bytes() == b"good" * 1000
        assert [p.name for p in mnt.iterdir()] == ["best.ckpt"]
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def _small_tmpfs(mnt: Path, size: str) -> None:
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode().strip()}")


@pytest.mark.slow
def test_cli_training_on_a_full_tmpfs_keeps_good_checkpoints(tmp_path):
    """A real full disk: a 220 KiB tmpfs holds two checkpoints of the tiny model but not a third
    file beside them; the run stops in one line naming the file and the free space."""
    mnt = tmp_path / "disk"
    _small_tmpfs(mnt, "220k")
    try:
        run = mnt / "run"
        res = _cli("eirnn.train", [*TINY, "trainer.max_epochs=30", f"hydra.run.dir={run}"], tmp_path)
        line = _one_line_error(res, "disk full", "free", ".ckpt", "the previous file is unchanged")
        assert "[Errno" not in line
        for name in ("best.ckpt", "last.ckpt"):
            assert torch.load(run / "checkpoints" / name, weights_only=False)["state_dict"]
        assert not [p for p in run.rglob("*.tmp")]
        assert json.loads((run / "metrics.json").read_text())["outcome"] == "failed"
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_checkpoint_save_is_atomic_beside_the_target(tmp_path, monkeypatch):
    import eirnn.utils as U

    io = U.atomic_checkpoint_io()
    path = tmp_path / "checkpoints" / "best.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "epoch": 1}, str(path))
    seen = []
    real_mkstemp = __import__("tempfile").mkstemp

    def spy(*a, **k):
        fd, name = real_mkstemp(*a, **k)
        seen.append(Path(name).parent)
        return fd, name

    monkeypatch.setattr("tempfile.mkstemp", spy)
    monkeypatch.setattr(torch, "save", lambda obj, f: (f.write(b"half"), (_ for _ in ()).throw(
        OSError(errno.ENOSPC, "No space left on device"))))
    with pytest.raises(DiskFullError, match="best.ckpt"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "epoch": 2}, str(path))
    assert seen == [path.parent]  # the temporary file was beside best.ckpt (same file system)
    monkeypatch.undo()
    ck = torch.load(path, weights_only=True)
    assert ck["epoch"] == 1 and torch.equal(ck["state_dict"]["w"], torch.ones(3))
    assert [p.name for p in path.parent.iterdir()] == ["best.ckpt"]


def test_ctrl_c_mid_epoch_is_recorded_as_interrupted_not_failed(tmp_path):
    """Lightning answers Ctrl+C with sys.exit(1) inside its KeyboardInterrupt handler: metrics.json
    says interrupted (SIGINT, exit 130, resume from last.ckpt), not failed with 'SystemExit: 1'."""
    from types import SimpleNamespace

    from eirnn.train import _lightning_ctrl_c, _record_failure

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"x")
    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            sys.exit(1)
    except SystemExit as exc:
        err = exc
    assert _lightning_ctrl_c(err) and not _lightning_ctrl_c(SystemExit(1))
    writer = SimpleNamespace(path=tmp_path / "metrics.json", log_path=tmp_path / "training_log.json",
                             summary=lambda trainer, module: {"epochs_trained": 5})
    _record_failure(writer, None, SimpleNamespace(history=[{"epoch": 4}]), tmp_path, err)
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["outcome"] == "interrupted" and m["interrupted"] == "SIGINT" and m["exit_code"] == 130
    assert m["reason"].startswith("Ctrl+C") and m["interrupted_checkpoint"].endswith("last.ckpt")


def test_ctrl_c_inside_torch_save_stays_a_keyboard_interrupt(tmp_path):
    """torch.save interrupted by Ctrl+C raises a RuntimeError from its zip writer's cleanup; the
    atomic writer passes the KeyboardInterrupt on (an interrupted run, not a failed one) and
    leaves the previous checkpoint and no partial file."""
    import eirnn.utils as U

    path = tmp_path / "last.ckpt"
    U.torch_save_atomic({"epoch": 1}, path)

    def interrupted_save(f):
        f.write(b"half")
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 82624 vs 82516")

    with pytest.raises(KeyboardInterrupt):
        U.atomic_write(path, interrupted_save)
    assert torch.load(path, weights_only=True) == {"epoch": 1} and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


@pytest.mark.slow
def test_full_disk_during_training_keeps_the_best_checkpoint(compose, tmp_path, monkeypatch):
    """The third checkpoint write fails with ENOSPC: best.ckpt/last.ckpt of epoch 1 stay
    loadable, the error names the file and the free space, metrics.json says failed."""
    import eirnn.utils as U
    from eirnn.train import train

    real, calls = U.torch_save_atomic, []

    def flaky(obj, path):
        calls.append(str(path))
        if len(calls) == 3:
            return U.atomic_write(path, _enospc_after(1000))
        return real(obj, path)

    monkeypatch.setattr(U, "torch_save_atomic", flaky)
    out = tmp_path / "run"
    cfg = compose([*TINY, "trainer.max_epochs=3", "callbacks.early_stopping.patience=100"], out)
    with pytest.raises(DiskFullError) as info:
        train(cfg)
    assert "disk full" in str(info.value) and "free" in str(info.value) and ".ckpt" in str(info.value)
    for name in ("best.ckpt", "last.ckpt"):
        ck = torch.load(out / "checkpoints" / name, weights_only=False)
        assert ck["epoch"] == 0
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    m = json.loads((out / "metrics.json").read_text())
    assert m["outcome"] == "failed" and "disk full" in m["reason"]


# ------------------------------------------------------------------ run folders
def test_run_folder_holding_another_run_is_refused_resume_allowed(tmp_path):
    from omegaconf import OmegaConf

    from eirnn.runs.lock import LOCK_NAME, claim, release

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.json").write_text("{}")
    with pytest.raises(RunFolderError, match="already holds another run"):
        claim(run, OmegaConf.create({"ckpt_path": None, "task_name": "train"}))
    ok = claim(run, OmegaConf.create({"ckpt_path": str(run / "checkpoints" / "last.ckpt"), "task_name": "train"}))
    assert json.loads((ok / LOCK_NAME).read_text())["pid"] == os.getpid()
    release(ok)
    assert not (run / LOCK_NAME).exists()
    fresh = claim(tmp_path / "new", OmegaConf.create({"ckpt_path": None}))  # a new (or empty) folder is fine
    release(fresh)


def test_live_lock_refuses_stale_lock_does_not(tmp_path):
    from eirnn.runs.lock import LOCK_NAME, claim, lock_holder, refuse_if_running, release

    run = tmp_path / "run"
    run.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import socket

        (run / LOCK_NAME).write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname(), "started": 0}))
        assert lock_holder(run)["pid"] == sleeper.pid
        with pytest.raises(RunFolderError, match="still being written"):
            refuse_if_running(run, "export")
        with pytest.raises(RunFolderError, match="in use by another run"):
            claim(run)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert lock_holder(run) is None  # its process is gone: stale
    refuse_if_running(run)
    claim(run)
    release(run)


@pytest.mark.slow
def test_default_run_folder_names_differ_between_processes(tmp_path):
    code = ("from hydra import compose, initialize_config_dir; import eirnn.train\n"
            "from hydra.core.hydra_config import HydraConfig\n"
            f"with initialize_config_dir(config_dir={str(REPO / 'conf')!r}, version_base='1.3'):\n"
            "    c = compose('train', return_hydra_config=True)\n"
            "print(c.hydra.run.dir)")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    names = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert all(n.startswith("outputs/train/runs/") for n in names), names
    assert names[0] != names[1]


@pytest.mark.slow
def test_cli_refuses_a_finished_run_folder_and_touches_nothing(tmp_path):
    run = tmp_path / "done"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("the old run's config\n")
    (run / "metrics.json").write_text('{"outcome": "completed"}')
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    res = _cli("eirnn.train", [*TINY, f"hydra.run.dir={run}"], tmp_path)
    _one_line_error(res, str(run), "already holds another run")
    assert (run / ".hydra" / "config.yaml").read_text() == "the old run's config\n"
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before
    # a sweep folder that already holds jobs
    sweep = tmp_path / "sweep"
    (sweep / "0").mkdir(parents=True)
    (sweep / "0" / "metrics.json").write_text("{}")
    res = _cli("eirnn.train", ["--multirun", *TINY, "seed=1,2", f"hydra.sweep.dir={sweep}"], tmp_path)
    _one_line_error(res, "already holds another sweep")
    assert sorted(p.name for p in sweep.iterdir()) == ["0"]


@pytest.mark.slow
def test_cli_bad_config_values_one_line_exit_2_nothing_written(tmp_path):
    run = tmp_path / "run"
    res = _cli("eirnn.train", [*TINY, f"hydra.run.dir={run}", "model=lowrank", "model.rank=0", "data.batch_size=-1",
                               "data.val_fraction=0", "optim.lr=-1", "seed=abc", "trainer.max_epochs=-2"], tmp_path)
    line = _one_line_error(res, "model.rank=0", "data.batch_size=-1", "data.val_fraction=0", "optim.lr=-1",
                           "seed='abc'", "trainer.max_epochs=-2")
    assert line.startswith("error: bad configuration")
    assert not run.exists()


@pytest.mark.parametrize("overrides,needle", [
    (["model.rank=0"], "model.rank=0"),
    (["model.rank=2.5"], "model.rank=2.5"),
    (["data.batch_size=-1"], "data.batch_size=-1"),
    (["data.val_fraction=1.0"], "data.val_fraction=1.0"),
    (["data.es_fraction=1.5"], "data.es_fraction=1.5: must be a number in [0, 1)"),
    (["optim.lr=-0.5"], "optim.lr=-0.5: must be >= 0"),  # as the README says (0 is allowed)
    (["optim.lr=inf"], "optim.lr=inf"),
    (["trainer.max_epochs=-1"], "trainer.max_epochs=-1"),
    (["ensemble.size=0"], "ensemble.size=0"),
    (["model.noise_scale=-1"], "model.noise_scale=-1"),
    (["data.synthetic.n_trials=0"], "data.synthetic.n_trials=0"),
    (["data.cv_folds=5", "data.cv_fold=7"], "data.cv_fold=7"),
    (["ckpt_path=/nonexistent/last.ckpt"], "ckpt_path=/nonexistent/last.ckpt: no such file"),
    (["data=sc_mat"], "data.path: missing"),  # before the run folder is made, like the other values
])
def test_config_check_names_each_bad_value(compose, tmp_path, overrides, needle):
    from eirnn.config_check import check_config

    cfg = compose(overrides, tmp_path)
    with pytest.raises(ConfigError, match="bad configuration") as info:
        check_config(cfg)
    assert needle in str(info.value)


def test_config_check_accepts_the_defaults_and_val_fraction_unused_under_cv(compose, tmp_path):
    from eirnn.config_check import config_problems

    assert config_problems(compose([], tmp_path)) == []
    assert config_problems(compose(["data.batch_size=0", "trainer.max_epochs=0"], tmp_path)) == []
    assert config_problems(compose(["data.cv_folds=5", "data.val_fraction=0"], tmp_path)) == []


def test_rank_above_the_unit_count_is_refused():
    from eirnn.models.connectivity import LowRankWeights, build_recurrent_weights

    exc = torch.tensor([True] * 6 + [False] * 2)
    with pytest.raises(ValueError, match=r"model.rank=9 exceeds the network's 8 units"):
        LowRankWeights(exc, rank=9)
    with pytest.raises(ValueError, match="positive integer"):
        build_recurrent_weights(exc, rank=0)  # no longer a silent full-rank model
    assert build_recurrent_weights(exc, rank=8).rank == 8


# ------------------------------------------------------------------ checkpoints
def test_truncated_or_foreign_checkpoint_named_in_one_line(tmp_path):
    from eirnn.train import read_checkpoint

    good = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"w": torch.ones(3, 3)}, "epoch": 0}, good)
    trunc = tmp_path / "trunc.ckpt"
    trunc.write_bytes(good.read_bytes()[:200])
    with pytest.raises(UserError, match="truncated or corrupt") as info:
        read_checkpoint(trunc, label="ckpt_path=")
    assert str(trunc) in str(info.value) and "\n" not in str(info.value)
    other = torch.nn.Module()
    other.w = torch.nn.Parameter(torch.ones(4, 4))
    with pytest.raises(UserError, match=r"belongs to another configuration \(w \[3, 3\] in the file, \[4, 4\]"):
        read_checkpoint(good, other)
    assert read_checkpoint(good)["epoch"] == 0


# ------------------------------------------------------------------ outcomes
def _summary(best, final, epochs=3, **kw):
    return {"best": best, "final": final, "epochs_trained": epochs, "early_stopped": False, **kw}


def test_outcome_and_reason_for_each_way_a_run_ends():
    from eirnn.training.callbacks import settle_outcome

    nan = float("nan")
    s = settle_outcome(_summary({}, {"val/psth_corr": nan, "epoch": 0}, epochs=1, early_stopped=True))
    assert s["outcome"] == "diverged" and "never finite" in s["reason"] and s["early_stopped"] is False
    assert s["diverged"] == s["reason"]
    s = settle_outcome(_summary({"val/psth_corr": 0.3}, {"val/psth_corr": nan, "epoch": 4}))
    assert s["outcome"] == "diverged" and "became non-finite (epoch 5)" in s["reason"]
    s = settle_outcome(_summary({"val/psth_corr": 0.3}, {"val/psth_corr": 0.2}, diverged="20 steps NaN"))
    assert s["outcome"] == "diverged" and s["reason"] == "20 steps NaN"
    s = settle_outcome(_summary({"val/psth_corr": 0.3}, {"val/psth_corr": 0.2}, early_stopped=True))
    assert s["outcome"] == "early_stopped"
    s = settle_outcome(_summary({"val/psth_corr": 0.3}, {"val/psth_corr": 0.2}))
    assert s["outcome"] == "completed"
    s = settle_outcome(_summary({}, {}, epochs=0))
    assert s["outcome"] == "completed" and "no epoch" in s["reason"]
    s = settle_outcome(_summary({}, {}, epochs=2, interrupted="SIGTERM", interrupted_checkpoint="x.ckpt"))
    assert s["outcome"] == "interrupted" and "SIGTERM" in s["reason"]


@pytest.mark.slow
def test_zero_epochs_reports_sanely(compose, tmp_path):
    from eirnn.train import train

    out = tmp_path / "run"
    summary = train(compose([*TINY, "trainer.max_epochs=0"], out))
    m = json.loads((out / "metrics.json").read_text())
    assert m["outcome"] == "completed" and "max_epochs=0" in m["reason"]
    assert m["train_time_s"] == 0.0 and "diverged" not in m and "spike_readout" not in m
    assert summary["epochs_trained"] == 0


@pytest.mark.slow
def test_diverged_run_exits_3_and_fits_nothing(tmp_path):
    run = tmp_path / "run"
    res = _cli("eirnn.train", [*TINY, "trainer.max_epochs=3", "optim.lr=1e3", "optim.warmup_steps=0",
                               f"hydra.run.dir={run}"], tmp_path)
    assert res.returncode == 3, res.stderr[-2000:]
    assert "TRAINING DIVERGED" in res.stdout and "TRAINING COMPLETE" not in res.stdout
    assert "RuntimeWarning" not in res.stderr, res.stderr[-2000:]  # NaN metrics say so without numpy's warnings
    m = json.loads((run / "metrics.json").read_text())
    assert m["outcome"] == "diverged" and m["reason"] and m["early_stopped"] is False
    assert "spike_readout" not in m
    ck = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert torch.equal(ck["state_dict"]["model.spike_readout.gain"], torch.ones_like(ck["state_dict"]["model.spike_readout.gain"]))
    assert not (run / "run.lock").exists()
    from eirnn.fit_readout import main as fit_readout_main

    before = (run / "checkpoints" / "last.ckpt").stat().st_mtime_ns
    assert fit_readout_main([str(run)]) == 2  # refused: nothing fitted to a diverged model afterwards either
    assert (run / "checkpoints" / "last.ckpt").stat().st_mtime_ns == before


@pytest.mark.slow
def test_resume_into_its_own_folder_allowed_and_export_refuses_a_running_run(tmp_path, capsys):
    run = tmp_path / "run"
    res = _cli("eirnn.train", [*TINY, f"hydra.run.dir={run}"], tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads((run / "metrics.json").read_text())["outcome"] == "completed"
    res = _cli("eirnn.train", [*TINY, "trainer.max_epochs=2", f"hydra.run.dir={run}",
                               f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"], tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads((run / "metrics.json").read_text())["epochs_trained"] == 2
    # a live process holds the folder: export / evaluate refuse it in one line
    import socket

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / "run.lock").write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname(), "started": 0}))
        from eirnn import evaluate, export

        for main, argv in ((export.main, [str(run), "--no-figures"]), (evaluate.main, [str(run), "--baselines", ""])):
            capsys.readouterr()
            assert main(argv) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and "still being written" in err[0] and str(sleeper.pid) in err[0], err
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not (run / "training_report.md").exists() and not (run / "evaluation.json").exists()


# ------------------------------------------------------------------ data validation
@pytest.fixture(scope="module")
def small_session():
    from eirnn.data import make_synthetic_session

    return make_synthetic_session(seed=3, n_trials=24, n_time=30, n_exc=4, n_inh=2, n_hidden_exc=6, n_hidden_inh=4)


def _copy(session, **changes):
    import dataclasses

    return dataclasses.replace(session, metadata={}, **changes)


@pytest.mark.parametrize("field,make,needle", [
    ("firing_rates", lambda s: dict(rates=np.concatenate([s.rates[:-1], s.rates[3:4]]),
                                    inputs=np.concatenate([s.inputs[:-1], s.inputs[3:4]]),
                                    eye_raw=None), "trials 3 and 23 are exact copies"),
    ("firing_rates", lambda s: dict(rates=np.concatenate([s.rates[..., :-1], s.rates[..., 1:2]], axis=2)),
     "neurons 1 and 5"),
    ("time_axis", lambda s: dict(time_axis_ms=s.time_axis_ms[::-1].copy()), "not increasing"),
    ("time_axis", lambda s: dict(time_axis_ms=np.r_[s.time_axis_ms[:10], s.time_axis_ms[10:] + 3.0]), "irregular"),
    ("neuron_ids", lambda s: dict(neuron_ids=np.array([1, 2, 3, 3, 5, 6])), "repeated id(s) [3]"),
    ("trial_duration_ms", lambda s: dict(trial_duration_ms=np.r_[-5.0, s.trial_duration_ms[1:]]), "negative"),
])
def test_data_refusals_name_the_field(small_session, field, make, needle):
    from eirnn.data import DataFormatError
    from eirnn.data.validate import validate_session

    s = _copy(small_session, source="x.mat", **make(small_session))
    with pytest.raises(DataFormatError) as info:
        validate_session(s)
    assert info.value.field == field and needle in str(info.value) and str(info.value).startswith("x.mat: ")
    validate_session(_copy(small_session))  # the intact session passes


def test_int8_rates_saturated_are_refused_on_load(small_session, tmp_path):
    import scipy.io

    from eirnn.data import DataFormatError, load_mat, save_mat

    path = save_mat(small_session, tmp_path / "s.mat", version="5")
    fields = {k: v for k, v in scipy.io.loadmat(path).items() if not k.startswith("__")}
    fields["firing_rates"] = np.clip(np.nan_to_num(fields["firing_rates"]), 0, 127).astype(np.int8)
    scipy.io.savemat(path, fields)
    with pytest.raises(DataFormatError, match="int8 with .* at its maximum 127") as info:
        load_mat(path)
    assert info.value.field == "firing_rates" and str(path) in str(info.value)


def test_nan_duration_and_nan_input_are_counted_consistently(small_session):
    from eirnn.data.datamodule import apply_filters
    from eirnn.data.quality import session_report
    from eirnn.data.validate import validate_session

    dur = small_session.trial_duration_ms.copy()
    dur[[2, 5, 7]] = np.nan
    inputs = small_session.inputs.copy()
    inputs[4, 10:12, 0] = np.nan  # a NaN fixation input in two bins of trial 4
    s = _copy(small_session, trial_duration_ms=dur, inputs=inputs, eye_raw=None, eye_norm=None)
    base = validate_session(_copy(small_session))["input_nan_bins"]  # NaN padding past the trials' ends
    cav = validate_session(s)
    assert cav["trial_duration_nan"] == 3 and cav["input_nan_bins"] == base + 2
    kept, rep = apply_filters(s, {"min_duration_ms": 100.0})
    assert rep["min_duration_ms_nan"] == 3 and 2 not in kept and 5 not in kept
    report = session_report(s, min_duration_ms=100.0)
    assert report["anomalies"]["aborted"]["count"] == report["filters"]["min_duration_ms"]["removed"]
    assert report["anomalies"]["aborted"]["of_which_nan_duration"] == 3
    assert report["trials"]["duration_nan"] == 3
    missing = report["anomalies"]["missing_bins"]
    assert missing["nan_input_bins"] == base + 2 and missing["count"] == int((~s.missing_mask()).sum()) >= 2 * s.n_neurons
    assert np.isfinite(list(report["trials"]["duration_ms_quantiles"].values())).all()


def test_a_file_with_zero_trials_says_so(small_session, tmp_path):
    from eirnn.data import DataFormatError, load_mat, save_mat

    path = save_mat(small_session.subset(np.array([], dtype=int)), tmp_path / "zero.mat", version="5")
    with pytest.raises(DataFormatError, match="holds no trials") as info:
        load_mat(path)
    assert info.value.field == "firing_rates"


def test_filters_removing_every_trial_is_one_line(small_session, tmp_path):
    from eirnn.data import DataFormatError, SessionDataModule, save_mat

    path = save_mat(small_session, tmp_path / "s.mat", version="5")
    dm = SessionDataModule(path=str(path), filters={"min_duration_ms": 1e9})
    with pytest.raises(DataFormatError, match=r"data.filters removed all 24 trials \(min_duration_ms removed 24\)"):
        dm.setup("fit")


@pytest.mark.slow
def test_sigterm_without_graceful_callback_is_reported_as_interrupted(tmp_path):
    """Default callbacks: Lightning stops mid-epoch on SIGTERM with exit status 0 of its own;
    eirnn.train says interrupted (metrics.json, stderr) and exits 143."""
    import signal
    import time

    run = tmp_path / "run"
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    args = [a for a in TINY if not a.startswith("trainer.max_epochs")]
    proc = subprocess.Popen([sys.executable, "-m", "eirnn.train", *args, "trainer.max_epochs=5000",
                             "callbacks.early_stopping.patience=5000", f"hydra.run.dir={run}"],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not (run / "checkpoints" / "last.ckpt").exists() and time.time() - t0 < 240 and proc.poll() is None:
        time.sleep(0.5)
    assert (run / "run.lock").exists()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 143, err[-2000:]
    assert "interrupted by SIGTERM" in err and "Traceback" not in err
    m = json.loads((run / "metrics.json").read_text())
    assert m["outcome"] == "interrupted" and m["interrupted"] == "SIGTERM"
    assert m["interrupted_checkpoint"] == str(run / "checkpoints" / "last.ckpt")  # what exists to resume from
    history = json.loads((run / "training_log.json").read_text())  # the validated epochs are not lost
    assert len(history) >= 1 and history[-1]["epoch"] == len(history) - 1
    assert not (run / "run.lock").exists()
