"""The lab's ablation sweeps as one-line multiruns, launchers, Optuna, failure handling,
and the ranked sweep report (eirnn.sweep_report).

Fast tests compose configs and build fake sweep folders; the @slow ones run real (tiny)
multiruns through the command line: the two lab sweeps, joblib and submitit-local
launchers, a 2-trial Optuna study and a sweep with a failing job.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import CONFIG_DIR, REPO, TINY

# seed 001's table: name -> (balance mode, Sinkhorn epsilon, L_trial scale, fixed lambda, warmup epochs)
LAB_LTRIAL_21 = {
    "gradbal_scale_0.5": ("param", 0.1, 0.5, None, 0),
    "gradbal_eps_0.05": ("param", 0.05, 1.0, None, 0),
    "gradbal_scale_0.25": ("param", 0.1, 0.25, None, 0),
    "gradbal_eps_0.2_scale_0.5": ("param", 0.2, 0.5, None, 0),
    "gradbal_eps_0.1": ("param", 0.1, 1.0, None, 0),
    "gradbal_eps_0.05_scale_0.5": ("param", 0.05, 0.5, None, 0),
    "gradbal_eps_0.2": ("param", 0.2, 1.0, None, 0),
    "baseline_no_ltrial": ("off", None, None, None, None),
    "gradbal_eps_1.0": ("param", 1.0, 1.0, None, 0),
    "lambda_0.1_eps_0.1": ("fixed", 0.1, None, 0.1, 0),
    "gradbal_warmup_100": ("param", 0.1, 1.0, None, 100),
    "gradbal_eps_0.5": ("param", 0.5, 1.0, None, 0),
    "gradbal_warmup_50": ("param", 0.1, 1.0, None, 50),
    "gradbal_scale_2.0": ("param", 0.1, 2.0, None, 0),
    "lambda_0.3_eps_1.0": ("fixed", 1.0, None, 0.3, 0),
    "lambda_0.3_eps_0.1": ("fixed", 0.1, None, 0.3, 0),
    "lambda_0.3_eps_0.5": ("fixed", 0.5, None, 0.3, 0),
    "lambda_0.5_eps_0.1": ("fixed", 0.1, None, 0.5, 0),
    "lambda_1.0_eps_0.1": ("fixed", 0.1, None, 1.0, 0),
    "lambda_1.0_eps_0.5": ("fixed", 0.5, None, 1.0, 0),
    "lambda_1.0_eps_1.0": ("fixed", 1.0, None, 1.0, 0),
}
LAB_PHASE2 = [
    "baseline", "poisson_ltrial", "learnable_alpha_scalar", "learnable_alpha_population", "learnable_tau_frozen",
    "learnable_tau_population_lab", "learnable_tau_population", "low_rank_20", "low_rank_30", "cosine_warmup_50",
    "activity_reg",
]


def _sweep_list(experiment: str) -> list[str]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cfg = yaml.safe_load(Path(CONFIG_DIR, "experiment", f"{experiment}.yaml").read_text())
    value = cfg["hydra"]["sweeper"]["params"]["+variant"]
    override = OverridesParser.create().parse_overrides([f"+variant={value}"])[0]
    return list(override.sweep_string_iterator())


# --------------------------------------------------------------------------- experiment configs
@pytest.mark.slow
def test_lab_ltrial_21_lists_the_21_configurations_of_seed_001(compose, tmp_path):
    names = _sweep_list("lab_ltrial_21")
    assert sorted(names) == sorted(LAB_LTRIAL_21) and len(names) == 21
    for name, (mode, eps, scale, lam, warmup) in LAB_LTRIAL_21.items():
        cfg = compose(["experiment=lab_ltrial_21", f"+variant={name}"], tmp_path)
        assert cfg.task_name == "lab_ltrial_21"
        assert cfg.loss.balance.mode == mode, name  # a string, "off" included (not YAML's false)
        assert cfg.loss.trial.enabled is (mode != "off"), name
        if eps is not None:
            assert cfg.loss.trial.epsilon == eps and cfg.loss.trial.warmup_epochs == warmup, name
        if scale is not None:
            assert cfg.loss.balance.ltrial_scale == scale, name
        if lam is not None:
            assert cfg.loss.balance.lambda_trial == lam, name


@pytest.mark.slow
def test_lab_phase2_variants_set_their_defining_options(compose, tmp_path):
    names = _sweep_list("lab_phase2")
    assert names == LAB_PHASE2
    cfgs = {n: compose(["experiment=lab_phase2", f"+variant={n}"], tmp_path) for n in names}
    base = cfgs["baseline"]
    assert base.loss.balance.mode == "param" and base.loss.trial.distance == "euclidean" and base.model.rank is None
    assert cfgs["poisson_ltrial"].loss.trial.distance == "poisson"
    assert cfgs["learnable_alpha_scalar"].model.learnable_alpha == "scalar"
    assert cfgs["learnable_alpha_population"].model.learnable_alpha == "population"
    frozen = cfgs["learnable_tau_frozen"].model
    assert (frozen.learnable_tau, frozen.tau_inh, frozen.tau_bound, frozen.tau_min, frozen.tau_max,
            frozen.freeze_time_constants) == ("population", 20.0, "clamp", 10.0, 200.0, True)
    lab = cfgs["learnable_tau_population_lab"].model
    assert lab.tau_bound == "clamp" and lab.tau_inh == 20.0 and not lab.freeze_time_constants
    fixed = cfgs["learnable_tau_population"].model
    assert fixed.tau_bound == "smooth" and fixed.tau_inh > 25.0 and fixed.tau_min is None
    assert cfgs["low_rank_20"].model.rank == 20 and cfgs["low_rank_30"].model.rank == 30
    cos = cfgs["cosine_warmup_50"].scheduler
    assert cos.name == "cosine" and cos.warmup_epochs == 50
    assert cfgs["activity_reg"].loss.activity.enabled and cfgs["activity_reg"].loss.activity.lambda_mean == 0.01
    for n, cfg in cfgs.items():  # each variant changes only what it names
        if n != "cosine_warmup_50":
            assert cfg.scheduler.name == "plateau", n


@pytest.mark.slow
def test_variants_compose_with_other_choices(compose, tmp_path):
    cfg = compose(["+variant=lambda_0.3_eps_0.5", "loss=poisson_ltrial", "model=lowrank"], tmp_path)
    assert cfg.loss.trial.distance == "poisson" and cfg.loss.balance.lambda_trial == 0.3 and cfg.model.rank == 20
    cfg = compose(["+variant=gradbal_eps_0.1", "loss.trial.epsilon=0.3"], tmp_path)
    assert cfg.loss.trial.epsilon == 0.3  # the command line wins over the variant


def test_slurm_launcher_config(compose, tmp_path):
    cfg = compose(["hydra/launcher=slurm", "hydra.launcher.partition=cpu"], tmp_path)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.partition == "cpu" and launcher.timeout_min >= 60 and launcher.cpus_per_task >= 1
    assert launcher.mem_gb >= 2 and launcher.max_num_timeout == 0 and launcher.gpus_per_node is None
    assert any("OMP_NUM_THREADS" in line for line in launcher.setup)


def test_optuna_search_config(compose, tmp_path):
    cfg = compose(["hparams_search=optuna"], tmp_path)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert cfg.optimized_metric == "val/psth_corr" and cfg.optimized_mode == "max"
    assert set(sweeper.params) == {"optim.lr", "loss.balance.ltrial_scale", "loss.trial.epsilon"}
    assert 0 < sweeper.max_failure_rate < 1


# The lab's base configuration (seeds 000 / 001), except lr 5e-3 and 32 trials per step (ours).
LAB_BASE = {
    "model.tau": 50.0, "model.tau_inh": None, "model.learnable_alpha": "none", "model.learnable_tau": "none",
    "model.freeze_time_constants": False, "model.dale": True, "model.input_embedding": "linear",
    "model.learnable_h0": False, "model.noise_scale": 0.1, "model.rank": None,
    "loss.neuron.kind": "correlation", "loss.neuron.lambda_scale": 0.1, "loss.neuron.lambda_var": 0.05,
    "loss.neuron.target_smooth_sigma_bins": 0.0,
    "loss.trial.enabled": True, "loss.trial.distance": "euclidean", "loss.trial.epsilon": 0.1,
    "loss.trial.n_iters": 20, "loss.trial.smooth_sigma_bins": 1.0, "loss.trial.warmup_epochs": 0,
    "loss.reg.lambda_l2": 1e-4, "loss.activity.enabled": False,
    "loss.balance.mode": "param", "loss.balance.ltrial_scale": 0.5, "loss.balance.lambda_trial": 0.1,
    "optim.name": "adam", "optim.lr": 5e-3, "optim.weight_decay": 0.0, "optim.grad_clip": 1.0,
    "data.batch_size": 32, "scheduler.name": "plateau",
    "trainer.max_epochs": 500, "callbacks.early_stopping.patience": 100, "callbacks.early_stopping.min_delta": 0.001,
}


def _variant_keys(name: str) -> set[str]:
    """Dotted keys a variant file sets (``defaults: override /scheduler`` counts as ``scheduler.*``)."""
    cfg = yaml.safe_load(Path(CONFIG_DIR, "variant", f"{name}.yaml").read_text()) or {}
    keys: set[str] = set()

    def walk(node, prefix):
        for k, v in node.items():
            if k == "defaults":
                keys.update(f"{next(iter(d)).split('/')[-1]}.*" for d in v if isinstance(d, dict))
            elif isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                keys.add(f"{prefix}{k}")
    walk(cfg, "")
    return keys


def _drifted_config_dir(tmp_path: Path) -> str:
    """A copy of ``conf/`` whose package defaults have drifted away from the lab's (another
    L_neuron, Sinkhorn, balance, lr, batch size, tau, early stopping)."""
    import shutil

    conf = tmp_path / "conf"
    shutil.copytree(CONFIG_DIR, conf)
    edits = {
        "loss/default.yaml": {"neuron": {"kind": "hybrid", "lambda_scale": 0.3, "target_smooth_sigma_bins": 2.0},
                              "trial": {"epsilon": 0.3, "n_iters": 5, "smooth_sigma_bins": 2.0, "distance": "poisson"},
                              "reg": {"lambda_l2": 1e-3}, "activity": {"enabled": True},
                              "balance": {"mode": "output", "ltrial_scale": 0.9}},
        "optim/adam.yaml": {"lr": 1e-2, "grad_clip": 5.0},
        "data/sc_mat.yaml": {"batch_size": 64},
        "model/eirnn.yaml": {"tau": 30.0, "noise_scale": 0.2, "input_embedding": "attention", "learnable_h0": True},
        "callbacks/default.yaml": {"early_stopping": {"patience": 7, "min_delta": 0.0}},
    }
    for rel, change in edits.items():
        path = conf / rel
        cfg = yaml.safe_load(path.read_text())

        def merge(node, upd):
            for k, v in upd.items():
                if isinstance(v, dict):
                    merge(node[k], v)
                else:
                    assert k in node, (rel, k)
                    node[k] = v
        merge(cfg, change)
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return str(conf)


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["lab_ltrial_21", "lab_phase2"])
def test_lab_sweeps_pin_the_lab_base_configuration(tmp_path, experiment):
    """Every job of both sweeps keeps the lab's settings (except what its variant names) even
    when the package defaults drift; a variant wins over the pinned base, the command line
    over both."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    conf = _drifted_config_dir(tmp_path)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        drifted = compose("train", overrides=["data=sc_mat"])
        assert drifted.loss.neuron.kind == "hybrid" and drifted.data.batch_size == 64  # the drift is real
        for name in _sweep_list(experiment):
            own = _variant_keys(name)
            cfg = compose("train", overrides=[f"experiment={experiment}", "data=sc_mat", f"+variant={name}"])
            for key, want in LAB_BASE.items():
                if key in own or f"{key.split('.')[0]}.*" in own:
                    continue
                got = OmegaConf.select(cfg, key)
                assert got == want, (experiment, name, key, got)
        variant = "baseline_no_ltrial" if experiment == "lab_ltrial_21" else "poisson_ltrial"
        cfg = compose("train", overrides=[f"experiment={experiment}", f"+variant={variant}", "optim.lr=1e-3"])
    GlobalHydra.instance().clear()
    assert cfg.optim.lr == 1e-3 and cfg.loss.neuron.kind == "correlation"
    if experiment == "lab_ltrial_21":
        assert cfg.loss.trial.enabled is False and cfg.loss.balance.mode == "off"
    else:
        assert cfg.loss.trial.distance == "poisson" and cfg.loss.trial.epsilon == 0.1


# --------------------------------------------------------------------------- sweep report (fake sweeps)
def _fake_job(root: Path, num: int, overrides: list[str], best: dict | None, log: str = "", cfg: dict | None = None):
    job = root / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg or {"optimized_metric": "val/psth_corr", "optimized_mode": "max"}))
    (job / "train.log").write_text(log)
    if best is not None:
        final = dict(best, epoch=6) if best.get("val/psth_corr") is not None else dict(best, epoch=1)
        (job / "metrics.json").write_text(json.dumps({"best": best, "final": final, "epochs_trained": 7,
                                                      "early_stopped": num == 0, "train_time_s": 75.0 + num}))
    return job


def _best(corr, e=None, i=None, bps=None, epoch=3):
    return {"epoch": epoch, "val/psth_corr": corr, "val/psth_corr_E": e, "val/psth_corr_I": i, "val/bits_per_spike": bps}


def test_sweep_report_ranks_variants_and_lists_failures(tmp_path):
    from eirnn.sweep_report import report

    common = ["data=sc_mat", "data.path=/x.mat", "trainer.max_epochs=60"]
    _fake_job(tmp_path, 0, ["+variant=gradbal_scale_0.5"] + common, _best(0.31, 0.33, 0.25, 0.05))
    _fake_job(tmp_path, 1, ["+variant=baseline_no_ltrial"] + common, _best(0.35, 0.36, 0.30, 0.07, epoch=9))
    _fake_job(tmp_path, 2, ["+variant=lambda_1.0_eps_1.0"] + common, _best(None))  # NaN metric -> last
    _fake_job(tmp_path, 3, ["+variant=gradbal_eps_0.05"] + common, None,
              log="[2026-01-01 10:00:00,000][eirnn.train][ERROR] - /x.mat: file not found\n")
    _fake_job(tmp_path, 10, ["+variant=gradbal_eps_0.2"] + common, None,
              log="[t][eirnn.train][ERROR] - job failed\nTraceback (most recent call last):\n  File x\nValueError: boom\n")
    _fake_job(tmp_path, 11, ["+variant=gradbal_eps_0.5"] + common, None, log="[t][eirnn.train][INFO] - data: ...\n")
    (tmp_path / ".submitit" / "123" / ".hydra").mkdir(parents=True)  # launcher folders are not jobs
    (tmp_path / ".submitit" / "123" / ".hydra" / "overrides.yaml").write_text("[]")

    text, md, csv_path = report(tmp_path)
    assert md.read_text() == text
    table = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| rank")]
    assert [row.split("|")[2].strip() for row in table] == ["`baseline_no_ltrial`", "`gradbal_scale_0.5`", "`lambda_1.0_eps_1.0`"]
    assert table[0].split("|")[3].strip() == "0.3500" and table[0].split("|")[6].strip() == "0.0700"
    assert table[2].split("|")[3].strip() == "NaN"  # logged but NaN (a diverged run), not missing
    assert "data.path" not in text.split("Common overrides:")[0]  # not swept (same in every job)
    assert "Common overrides: `data=sc_mat data.path=/x.mat trainer.max_epochs=60`" in text
    assert "1m16s" in text
    assert table[1].split("|")[-3].strip() == "7 (early stop)" and table[0].split("|")[-3].strip() == "7"
    assert table[2].split("|")[-3].strip() == "7 (NaN at epoch 2)"  # diverged: NaN at the last validation (index 1)
    failed = text.split("Failed or unfinished jobs (3):")[1]
    assert "`gradbal_eps_0.05`" in failed and "/x.mat: file not found" in failed
    assert "ValueError: boom" in failed
    assert "`gradbal_eps_0.5`" in failed and "still running, killed or interrupted" in failed
    rows = list(csv.DictReader(open(csv_path)))
    assert len(rows) == 6
    assert [r["run"] for r in rows[:3]] == ["baseline_no_ltrial", "gradbal_scale_0.5", "lambda_1.0_eps_1.0"]
    assert rows[0]["rank"] == "1" and float(rows[0]["val/psth_corr"]) == 0.35 and rows[0]["status"] == "completed"
    assert {r["status"] for r in rows[3:]} == {"failed"} and rows[3]["job_dir"].endswith("/3")


def test_sweep_report_swept_columns_without_variants_and_min_mode(tmp_path):
    from eirnn.sweep_report import report

    cfg = {"optimized_metric": "val/L_neuron", "optimized_mode": "min"}
    _fake_job(tmp_path, 0, ["optim.lr=0.000123456789", "seed=1"], {"epoch": 1, "val/L_neuron": 0.9}, cfg=cfg)
    _fake_job(tmp_path, 1, ["optim.lr=0.01", "seed=1"], {"epoch": 1, "val/L_neuron": 0.5}, cfg=cfg)
    text, _, csv_path = report(tmp_path)
    assert "best val/L_neuron" in text and "(min)" in text
    table = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| rank")]
    assert "`optim.lr=0.01`" in table[0] and "`optim.lr=0.0001235`" in table[1]  # lower is better; floats shortened
    assert "seed" not in text.split("\n| rank")[1].split("\n")[0]  # seed was not swept
    rows = list(csv.DictReader(open(csv_path)))
    assert rows[1]["optim.lr"] == "0.000123456789"  # full precision in the CSV


@pytest.mark.slow
def test_sweep_report_cli_errors(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    res = subprocess.run([sys.executable, "-m", "eirnn.sweep_report", str(tmp_path / "missing")],
                         capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 2 and res.stderr.strip() == f"error: {tmp_path / 'missing'}: no such folder"
    res = subprocess.run([sys.executable, "-m", "eirnn.sweep_report", str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 2 and "no job folders" in res.stderr and "Traceback" not in res.stderr


# --------------------------------------------------------------------------- real multiruns (CLI)
def _cli(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "eirnn.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _jobs(sweep: Path) -> list[Path]:
    return sorted((p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


def _metrics(job: Path) -> dict:
    return json.loads((job / "metrics.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("experiment,names", [("lab_phase2", LAB_PHASE2), ("lab_ltrial_21", list(LAB_LTRIAL_21))])
def test_lab_sweep_runs_every_configuration(tmp_path, experiment, names):
    sweep = tmp_path / "sweep"
    res = _cli(["-m", f"experiment={experiment}", *TINY, f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = _jobs(sweep)
    assert len(jobs) == len(names)
    ran = []
    for job in jobs:
        ov = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        ran.append(next(o.split("=", 1)[1] for o in ov if o.startswith("+variant=")))
        assert _metrics(job)["epochs_trained"] == 1
    assert sorted(ran) == sorted(names)
    from eirnn.sweep_report import report

    text, _, csv_path = report(sweep)
    rows = list(csv.DictReader(open(csv_path)))
    assert len(rows) == len(names) and {r["status"] for r in rows} == {"completed"}
    assert sorted(r["run"] for r in rows) == sorted(names)


@pytest.mark.slow
def test_joblib_launcher_two_parallel_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    res = _cli(["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *TINY, "seed=1,2", f"hydra.sweep.dir={sweep}"],
               cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Joblib.Parallel" in res.stdout + res.stderr
    jobs = _jobs(sweep)
    assert len(jobs) == 2
    corr = {_metrics(j)["best"]["val/psth_corr"] for j in jobs}
    assert len(corr) == 2  # two seeds, two different runs


@pytest.mark.slow
def test_submitit_local_launcher_two_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    res = _cli(["-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", *TINY, "seed=1,2",
                f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = _jobs(sweep)
    assert len(jobs) == 2
    for job in jobs:
        m = _metrics(job)
        assert m["epochs_trained"] == 1 and -1 <= m["best"]["val/psth_corr"] <= 1
    assert (sweep / ".submitit").is_dir()


@pytest.mark.slow
def test_optuna_two_trials_maximise_the_returned_metric(tmp_path):
    sweep = tmp_path / "sweep"
    res = _cli(["hparams_search=optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.n_startup_trials=2",
                *TINY, f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = _jobs(sweep)
    assert len(jobs) == 2
    values = [_metrics(j)["best"]["val/psth_corr"] for j in jobs]
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert result["best_value"] == pytest.approx(max(values))
    best_job = jobs[values.index(max(values))]
    ov = dict(o.split("=", 1) for o in yaml.safe_load((best_job / ".hydra" / "overrides.yaml").read_text()))
    assert float(ov["optim.lr"]) == pytest.approx(result["best_params"]["optim.lr"])
    assert 1e-4 <= result["best_params"]["optim.lr"] <= 1e-2
    from eirnn.sweep_report import report

    assert "Optuna best value" in report(sweep)[0]


@pytest.mark.slow
@pytest.mark.parametrize("bad,needle", [
    ("data.path=/nonexistent/session.mat,null", "/nonexistent/session.mat: file not found"),
    ("loss.balance.mode=bogus,param", "loss.balance.mode must be one of"),
])
def test_failing_job_does_not_stop_the_sweep(tmp_path, bad, needle):
    """Hydra's basic launcher runs every job of the batch, then reports the first failure
    (exit code 1); the failed job's error is in its log and in the sweep report."""
    sweep = tmp_path / "sweep"
    res = _cli(["-m", *TINY, bad, f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert res.returncode == 1
    assert "Error executing job with overrides" in res.stderr and needle in res.stderr
    failed, ok = _jobs(sweep)
    assert not (failed / "metrics.json").exists()
    assert _metrics(ok)["epochs_trained"] == 1  # the job after the failure ran
    from eirnn.sweep_report import report

    text = report(sweep)[0]
    assert "1 completed, 1 failed" in text and needle in text.split("Failed or unfinished jobs")[1]
