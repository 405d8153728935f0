"""Speed benchmark of the fit: ``python -m benchmarks.run [--quick | --smoke] [--threads N]``.

Prints a markdown table of median wall-clock times (each measurement repeated; the
median and the number of repeats are reported) for our code and for a plain-PyTorch
reference written the way the lab wrote it (:mod:`benchmarks.reference`), measured in
the same process on the same data, so that every figure is a ratio (reference / ours).
Next to each wall time is the process's CPU time per call (user + system, all threads):
on a machine shared with other jobs it is the steadier figure (with one thread it is close
to the wall time the same work takes on an idle core). The run-time settings are those of
``python -m eirnn.train`` (:func:`eirnn.runtime.configure`: ``--threads`` or ``auto``, malloc
tuning unless ``--no-malloc-tuning``) and are printed in the header.

Rows:

* ``a``  one training epoch through the real Hydra + Lightning path: the config is
  composed from ``conf/`` with overrides, data module / model / LightningModule are built
  by :func:`eirnn.train.build_datamodule` / ``build_model`` / ``build_module``, and
  ``trainer.fit`` runs with ``logger=none callbacks=none``; an epoch is timed from the
  start of its training step to the end of its validation. Reference: one lab-style
  epoch (balanced step + validation, no Lightning).
* ``a2`` the same epoch without Lightning: our training-step computation (model,
  ``FitObjective``, ``GradientBalancer``, clipping, Adam -- what ``training_step`` runs)
  plus the validation (forward + ``compute_val_metrics``).
* ``b1``/``b2`` model forward + backward (embedding, recurrence, readout) at batch 64 and
  at the whole training set; ``b3`` the recurrence kernel alone (drive given).
* ``c*`` one optimisation step per balancing mode: ``param`` (two gradients through the
  recurrence), ``output`` (output-space balancing, one), and the single-loss steps
  ``fixed`` (``L_neuron + 0.1 L_trial``) and ``off`` (``L_neuron``).
* ``d``  ``L_trial`` (Sinkhorn trial matching) forward + backward.
* ``v``  validation (forward with the fixed validation noise + all metrics).
* ``e``  many seeds at once: one epoch through ``trainer.fit`` (as row ``a``) of an ensemble of
  ``K`` seeds trained as one batched model (``ensemble.size=K``, ``--ensemble-size``, default
  20), against the same epoch with ``ensemble.size=1`` in the reference column; the ratio
  (K-seed epoch / one-model epoch) is printed below the table.
* ``f1``/``f2`` start-up: ``python -m eirnn.train --help`` and a 1-epoch run
  (``trainer.max_epochs=1 logger=none``, built-in synthetic data), as subprocesses.

On a GPU (``--device cuda``) the same rows run on the device (our code and the reference;
a step of rows ``c*`` is eager, and ``c*_g`` is the same step replayed as a CUDA graph), plus:

* ``g32`` one epoch through ``trainer.fit`` of the default configuration (``data=sc_mat`` as
  it comes: 32 trials per step) with CUDA graphs (``module.cuda_graphs=auto``); reference
  column: the same epoch with ``module.cuda_graphs=false`` (eager GPU steps);
* ``g0`` the same with the whole training set in one batch (``data.batch_size=0``);
* ``e`` (as above, at the default configuration);
* ``s21`` one epoch of ``experiment=lab_ltrial_21`` (one of its 21 configurations), projected
  to the whole sweep (21 x 500 epochs, run one after the other) below the table;
* ``fm`` one epoch of ``experiment=final_model``, projected to its 2000 epochs.

Data: the real session when present (``--data``), else a synthetic session of the same
shape (430 x 219 bins, 41 neurons, 80 units), said so in the header. ``--quick`` (fewer
repeats, no 1-epoch subprocess) runs in under a minute; ``--smoke`` uses tiny sizes (for
the test suite). A run whose validation metric turns NaN is flagged in row ``a`` (NaN
arithmetic would be timed instead of the fit; ``--lr`` overrides the learning rate, which
does not change the work per step).
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
DEFAULT_SESSION = REPO.parent / "shared" / "data" / "rnn_export_Newton_08_14_2025_SC.mat"
# The lab's best configuration, one full-batch step per epoch (the package default is now 32
# trials per step; the timings in experiments/speed.md are full-batch epochs): the lab's loss
# (conf/loss/default.yaml: correlation L_neuron, Sinkhorn L_trial, param balancing; data=sc_mat
# alone now selects loss=sc_mat), attention embedding, learnable h0.
# --override data.batch_size=32 times the default batch size instead.
BEST = ["loss=default", "model.input_embedding=attention", "model.learnable_h0=true", "data.batch_size=0"]
SYNTH_SAME_SHAPE = ["data=synthetic", "data.synthetic.n_trials=538", "+data.synthetic.n_exc=31",
                    "+data.synthetic.n_inh=10", "+data.synthetic.n_time=219"]
SMOKE = ["data=synthetic", "data.synthetic.n_trials=40", "+data.synthetic.n_exc=4", "+data.synthetic.n_inh=2",
         "+data.synthetic.n_time=24", "model.n_hidden=6", "model.embed_dim=8", "model.n_heads=2"]
ROW_IDS = ("a", "a2", "b1", "b2", "b3", "c_param", "c_output", "c_fixed", "c_off", "d", "v", "e", "f1", "f2")
GPU_ROW_IDS = ("a", "a2", "b1", "b2", "b3", "c_param", "c_param_g", "c_output", "c_fixed", "c_off", "c_off_g", "d", "v",
               "g32", "g0", "e", "s21", "fm")
_SYNC: list = []  # the device's synchronize when timing a GPU (device work is asynchronous)


# ----------------------------------------------------------------------------- helpers


def compose(overrides: list[str], output_dir: str):
    """``conf/train.yaml`` composed with ``overrides`` (as ``python -m eirnn.train`` would)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = hydra_compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = output_dir
    GlobalHydra.instance().clear()
    return cfg


class Timings(list):
    """Wall-clock seconds per call (the list) and this process's CPU seconds per call (``.cpu``:
    user + system time of all its threads; on a machine shared with other jobs it is the
    steadier measure of the work done, with one thread close to the wall time of an idle core)."""

    def __init__(self, wall=(), cpu=()):
        super().__init__(wall)
        self.cpu = list(cpu)


def _cpu_s() -> float:
    return time.process_time()


def measure(fn: Callable[[], object], repeats: int, warmup: int = 1) -> Timings:
    """Wall-clock (and CPU) seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    sync = _SYNC[0] if _SYNC else (lambda: None)
    for _ in range(warmup):
        fn()
    out = Timings()
    for _ in range(repeats):
        sync()
        c0, t0 = _cpu_s(), time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t0)
        out.cpu.append(_cpu_s() - c0)
    return out


def _after_first(t: Timings) -> Timings:
    """The epochs after the first (a warm-up: first sightings of the input tensors, buffers)."""
    return Timings(t[1:], t.cpu[1:])


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ms(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 1e3:.1f}"


class Table:
    def __init__(self):
        self.rows: list[dict] = []
        self.ensemble: tuple | None = None  # row e: (K, K-seed epoch, single epoch, their CPU times)

    def add(self, rid: str, what: str, ours: list[float] | None, ref: list[float] | None = None, note: str = ""):
        med = statistics.median(ours) if ours else None
        rmed = statistics.median(ref) if ref else None
        cpu = statistics.median(ours.cpu) if getattr(ours, "cpu", None) else None
        rcpu = statistics.median(ref.cpu) if getattr(ref, "cpu", None) else None
        self.rows.append(dict(id=rid, what=what, ours=med, ours_min=min(ours) if ours else None, ref=rmed,
                              cpu=cpu, ref_cpu=rcpu, n=len(ours) if ours else 0, n_ref=len(ref) if ref else 0,
                              note=note))
        print(f"  [{rid}] ours {_ms(med)} ms, reference {_ms(rmed)} ms", file=sys.stderr, flush=True)

    def get(self, rid: str) -> float | None:
        return next((r["ours"] for r in self.rows if r["id"] == rid), None)

    def get_ref(self, rid: str) -> float | None:
        return next((r["ref"] for r in self.rows if r["id"] == rid), None)

    def markdown(self) -> str:
        lines = ["| row | what | ours median (ms) | ours min (ms) | reference median (ms) | ratio ref/ours | "
                 "ours CPU (ms) | reference CPU (ms) | CPU ratio | repeats (ours, ref) |",
                 "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in self.rows:
            ratio = f"{r['ref'] / r['ours']:.1f}x" if r["ref"] and r["ours"] else "n/a"
            cratio = f"{r['ref_cpu'] / r['cpu']:.1f}x" if r["ref_cpu"] and r["cpu"] else "n/a"
            what = r["what"] + (f" ({r['note']})" if r["note"] else "")
            lines.append(f"| {r['id']} | {what} | {_ms(r['ours'])} | {_ms(r['ours_min'])} | {_ms(r['ref'])} | {ratio} | "
                         f"{_ms(r['cpu'])} | {_ms(r['ref_cpu'])} | {cratio} | {r['n']}, {r['n_ref']} |")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- the fit pieces


class Fit:
    """Data, our model/module and the lab-style reference built from the same config."""

    def __init__(self, overrides: list[str], seed: int = 42, device: str = "cpu"):
        import lightning as L
        import torch

        from benchmarks.reference import LabStyleRNN
        from eirnn.train import build_datamodule, build_model, build_module

        self.tmp = tempfile.mkdtemp(prefix="eirnn_bench_")
        self.overrides = overrides
        self.cfg = compose(overrides + [f"seed={seed}"], self.tmp)
        L.seed_everything(seed, verbose=False)
        self.dm = build_datamodule(self.cfg)
        self.device = torch.device(device)
        self.model = build_model(self.cfg, self.dm).to(self.device)
        self.module = build_module(self.cfg, self.model, self.dm).to(self.device)
        self.train = {k: v.to(self.device) for k, v in self.dm.tensors("train").items()}
        self.val = {k: v.to(self.device) for k, v in self.dm.tensors("val").items()}
        self.n_rec = self.model.n_recorded
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        cap = {"capturable": True} if self.device.type == "cuda" else {}  # (steps replayed as CUDA graphs)
        self.opt = torch.optim.Adam(self.params, lr=float(self.cfg.optim.lr), **cap)
        self.gen = torch.Generator(device=self.device).manual_seed(seed)
        self.ref = LabStyleRNN(self.model).to(self.device)
        self.ref_opt = torch.optim.Adam([p for p in self.ref.parameters() if p.requires_grad], lr=float(self.cfg.optim.lr))
        self.ref_gen = torch.Generator(device=self.device).manual_seed(seed)
        self.graphs = None
        t = self.cfg.loss.trial
        self.trial_cfg = dict(epsilon=float(t.epsilon), n_iters=int(t.n_iters), smooth_sigma_bins=float(t.smooth_sigma_bins))
        self.bal = self.cfg.loss.balance

    # ours ---------------------------------------------------------------------
    def step(self, mode: str = "param", noise=None):
        """What ``FitModule.training_step`` computes, without Lightning's bookkeeping."""
        import torch

        m, obj = self.module, self.module.objective
        m.balancer.mode = mode
        if noise is None:
            out = self.model(self.train["inputs"], noise=True, generator=self.gen)
        else:
            out = self.model(self.train["inputs"], noise=True, noise_sample=noise)
        rec = out.rates[..., : self.n_rec]
        target, mask = self.train["rates"], self.train["mask"]
        l_neuron = obj.neuron_term(rec, target, mask)
        l_trial = obj.trial_term(rec, target, mask) if mode != "off" else None
        l_extra = sum(obj.extra_term(self.model, out.rates, mask).values())
        self.opt.zero_grad(set_to_none=True)
        m.balancer.backward(self.params, l_neuron, l_trial, l_extra, outputs=rec)
        torch.nn.utils.clip_grad_norm_(self.params, float(self.cfg.optim.grad_clip))
        self.opt.step()

    def step_graphed(self, mode: str = "param"):
        """:meth:`step` replayed as a CUDA graph (:class:`eirnn.training.cuda_graph.StepGraphs`; the
        state noise drawn before the replay, as ``FitModule`` does)."""
        import torch

        from eirnn.training.cuda_graph import StepGraphs

        if self.graphs is None:
            self.graphs = StepGraphs(self.device)
        x = self.train["inputs"]
        noise = torch.empty((x.shape[0], x.shape[1], self.model.n_units), device=self.device).normal_(generator=self.gen)

        def fn(noise):
            self.step(mode, noise)
            return {}

        self.graphs.run(("step", mode), fn, {"noise": noise})

    def validation(self):
        import torch

        gen = torch.Generator(device=self.device).manual_seed(self.module.val_seed)
        with torch.no_grad():
            out = self.model(self.val["inputs"], noise=True, generator=gen)
        v = {"rates": out.rates[..., : self.n_rec], "target": self.val["rates"], "mask": self.val["mask"]}
        return self.module.compute_val_metrics(v)[0]

    # reference ----------------------------------------------------------------
    def ref_step(self, mode: str = "param"):
        from benchmarks.reference import reference_step

        reference_step(self.ref, self.ref_opt, self.module.objective, self.train, self.ref_gen, mode=mode,
                       scale=float(self.bal.ltrial_scale), lam=float(self.bal.lambda_trial),
                       clip=float(self.cfg.optim.grad_clip), trial_cfg=self.trial_cfg)

    def ref_validation(self):
        import torch

        from benchmarks.reference import reference_validation

        gen = torch.Generator(device=self.device).manual_seed(self.module.val_seed)
        return reference_validation(self.ref, self.module.objective, self.val, gen, self.dm.bin_size_ms, self.trial_cfg)


def lightning_epochs(overrides: list[str], epochs: int, seed: int = 42,
                     ensemble_size: int = 1, device: str = "cpu") -> tuple[list[float], list[float]]:
    """Per-epoch wall times (training + validation) of ``trainer.fit``; and val/psth_corr.

    ``ensemble_size > 1``: ``ensemble.size=K``, the ensemble built as ``eirnn.train`` builds it
    (:func:`eirnn.runs.ensemble.build_ensemble`); ``val/psth_corr`` is then the members' mean.
    """
    import lightning as L
    from hydra.utils import instantiate

    from eirnn.train import build_datamodule, build_model, build_module
    from eirnn.runs.ensemble import build_ensemble

    class EpochTimer(L.Callback):
        def __init__(self):
            self.t0, self.c0, self.times = 0.0, 0.0, Timings()

        def on_train_epoch_start(self, trainer, pl_module):
            if _SYNC:
                _SYNC[0]()
            self.t0, self.c0 = time.perf_counter(), _cpu_s()

        def on_validation_end(self, trainer, pl_module):
            if _SYNC:
                _SYNC[0]()
            self.times.append(time.perf_counter() - self.t0)
            self.times.cpu.append(_cpu_s() - self.c0)

    tmp = tempfile.mkdtemp(prefix="eirnn_bench_fit_")
    acc = ["trainer.accelerator=gpu"] if device == "cuda" else []
    cfg = compose(overrides + [f"seed={seed}", f"trainer.max_epochs={epochs}", "logger=none", "callbacks=none",
                               f"ensemble.size={ensemble_size}"] + acc, tmp)
    L.seed_everything(seed, verbose=False)
    dm = build_datamodule(cfg)
    if ensemble_size > 1:
        model, module = build_ensemble(cfg, dm, ensemble_size)
    else:
        model = build_model(cfg, dm)
        module = build_module(cfg, model, dm)
    timer = EpochTimer()
    trainer = instantiate(cfg.trainer, callbacks=[timer], logger=False, default_root_dir=tmp,
                          enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False)
    trainer.fit(module, datamodule=dm)
    return timer.times, [h.get("val/psth_corr", float("nan")) for h in module.history]


def data_overrides(path: str, smoke: bool = False) -> tuple[list[str], str]:
    """Hydra overrides of the benchmark data and a one-line description for the header."""
    if smoke:
        return SMOKE, "synthetic smoke-test session (tiny)"
    if Path(path).exists():
        return ["data=sc_mat", f"data.path={path}"], f"real session {Path(path).name}"
    return SYNTH_SAME_SHAPE, f"SYNTHETIC session of the real shape (real file {path} absent)"


def _subprocess_time(args: list[str], repeats: int, env: dict) -> Timings:
    import resource

    out = Timings()
    for _ in range(repeats):
        r0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "eirnn.train", *args], cwd=str(REPO), env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        out.append(time.perf_counter() - t0)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        out.cpu.append((r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime))
        if proc.returncode != 0:
            raise RuntimeError(f"eirnn.train {' '.join(args)} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return out


# ----------------------------------------------------------------------------- main


def run(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer repeats, no 1-epoch subprocess (< 60 s)")
    p.add_argument("--smoke", action="store_true", help="tiny synthetic sizes, 1 repeat (for tests)")
    p.add_argument("--data", default=str(DEFAULT_SESSION), help="lab MATLAB export (default: the real session)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--repeats", type=int, default=None, help="repeats per row (default 7, quick 3, smoke 1)")
    p.add_argument("--epochs", type=int, default=None, help="epochs of the Lightning run (default 8, quick 4, smoke 2)")
    p.add_argument("--lr", type=float, default=None, help="optim.lr of the timed runs (default: the config's)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="where to time (cuda: the GPU table, rows " + ",".join(GPU_ROW_IDS) + ")")
    p.add_argument("--rows", default=None, help="comma-separated subset of " + ",".join(ROW_IDS)
                   + " (cpu) or " + ",".join(GPU_ROW_IDS) + " (cuda)")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="extra Hydra override for every timed run (repeatable), e.g. data.filters=null")
    p.add_argument("--ensemble-size", type=int, default=None,
                   help="K of row e (epoch of a K-seed ensemble vs one model; default 20, smoke 3)")
    p.add_argument("--no-malloc-tuning", action="store_true",
                   help="leave glibc malloc at its defaults (eirnn.train applies malloc_tuning=true)")
    p.add_argument("--out", default=None, help="also write the markdown to this file")
    args = p.parse_args(argv)

    import torch

    from eirnn.runtime import configure

    runtime_note = configure(args.threads or "auto", malloc_tuning=not args.no_malloc_tuning)  # as eirnn.train does
    known = GPU_ROW_IDS if args.device == "cuda" else ROW_IDS
    rows = {r.strip() for r in (args.rows or ",".join(known)).split(",") if r.strip()}
    unknown = rows - set(known)
    if unknown:
        p.error(f"--rows: unknown row(s) {sorted(unknown)}; known: {','.join(known)}")
    if args.device == "cuda":
        if not torch.cuda.is_available():
            p.error("--device cuda: no CUDA device (torch.cuda.is_available() is False)")
        torch.set_float32_matmul_precision("high")  # as eirnn.train does
        _SYNC[:] = [torch.cuda.synchronize]
        runtime_note += f"; device {torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    repeats = args.repeats or (1 if args.smoke else 3 if args.quick else 7)
    epochs = args.epochs or (2 if args.smoke else 4 if args.quick else 8)
    if epochs < 2:
        p.error("--epochs must be >= 2 (the first epoch is a warm-up)")

    data_ov, data_note = data_overrides(args.data, args.smoke)
    overrides = data_ov + BEST + ([f"optim.lr={args.lr}"] if args.lr else []) + list(args.override)
    load0 = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    t_start = time.perf_counter()
    table = Table()
    fit = Fit(overrides, device=args.device)
    n_train, n_time = fit.train["inputs"].shape[:2]
    print(f"benchmark: {data_note}, {n_train} training trials x {n_time} bins, {fit.model.n_units} units",
          file=sys.stderr, flush=True)

    dev = args.device
    if "a" in rows:
        times, traj = lightning_epochs(overrides, epochs, device=dev)
        ref = measure(lambda: (fit.ref_step("param"), fit.ref_validation()), max(1, min(repeats, epochs - 1)))
        note = "NaN val/psth_corr during the run" if any(math.isnan(v) for v in traj) else ""
        table.add("a", "epoch via Hydra + Lightning trainer.fit (param balancing)", _after_first(times), ref, note)
    if "a2" in rows:
        table.add("a2", "epoch without Lightning (training step + validation)",
                  measure(lambda: (fit.step("param"), fit.validation()), repeats),
                  measure(lambda: (fit.ref_step("param"), fit.ref_validation()), repeats))
    if rows & {"b1", "b2", "b3"}:
        _rows_b(fit, table, rows, repeats)
    for mode in ("param", "output", "fixed", "off"):
        rid = f"c_{mode}"
        if rid in rows:
            label = {"param": "balanced step, param mode (2 backward passes)",
                     "output": "balanced step, output mode (1 backward pass)",
                     "fixed": "single-loss step: L_neuron + 0.1 L_trial (fixed)",
                     "off": "single-loss step: L_neuron only (off)"}[mode]
            table.add(rid, label, measure(lambda: fit.step(mode), repeats), measure(lambda: fit.ref_step(mode), repeats))
        if f"{rid}_g" in rows:
            table.add(f"{rid}_g", f"the same step replayed as a CUDA graph; reference column: the eager step (row {rid})",
                      measure(lambda: fit.step_graphed(mode), max(repeats, 5), warmup=2),
                      measure(lambda: fit.step(mode), repeats))
    if "d" in rows:
        _row_d(fit, table, repeats)
    if "v" in rows:
        table.add("v", "validation (forward + metrics)", measure(fit.validation, repeats), measure(fit.ref_validation, repeats))
    if dev == "cuda":
        _gpu_rows(table, rows, data_ov, list(args.override), epochs)
    if "e" in rows:
        k = args.ensemble_size or (3 if args.smoke else 20)
        e_ov = overrides if dev == "cpu" else data_ov + list(args.override)  # GPU: the default configuration
        t_k, traj_k = lightning_epochs(e_ov, epochs, ensemble_size=k, device=dev)
        t_1, _ = lightning_epochs(e_ov, epochs, device=dev)
        note = "NaN val/psth_corr during the run" if any(math.isnan(v) for v in traj_k) else ""
        table.add("e", f"epoch via trainer.fit of ONE model of K={k} seeds (ensemble.size={k}); "
                       "reference column: the same epoch with ensemble.size=1", _after_first(t_k), _after_first(t_1), note)
        table.ensemble = (k, statistics.median(t_k[1:]), statistics.median(t_1[1:]),
                          statistics.median(t_k.cpu[1:]), statistics.median(t_1.cpu[1:]))
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    if "f1" in rows:
        table.add("f1", "start-up: python -m eirnn.train --help", _subprocess_time(["--help"], max(1, min(repeats, 3)), env),
                  None, "subprocess")
    if "f2" in rows and not args.quick and not args.smoke:
        tmp = tempfile.mkdtemp(prefix="eirnn_bench_first_")
        table.add("f2", "time to first epoch: python -m eirnn.train trainer.max_epochs=1 logger=none",
                  _subprocess_time(["trainer.max_epochs=1", "logger=none", f"hydra.run.dir={tmp}"], 1, env), None,
                  "subprocess, synthetic default data, whole command")

    load1 = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    md = _header(data_note, n_train, n_time, fit, load0, load1, time.perf_counter() - t_start, args, runtime_note) \
        + "\n\n" + table.markdown()
    md += "\n\n" + _ratios(table)
    if getattr(table, "ensemble", None):
        k, t_k, t_1, c_k, c_1 = table.ensemble
        md += (f"\n\nensemble (row e): K={k} seeds in one batched model: {t_k:.3f} s per epoch vs {t_1:.3f} s for one "
               f"model: **{t_k / t_1:.2f}x the time of one** (target <= {'1.5' if args.device == 'cuda' else '3'}x), {t_k / k:.3f} s per seed per epoch "
               f"({k * t_1 / t_k:.2f}x the throughput of {k} sequential single runs); CPU time {c_k:.3f} s vs "
               f"{c_1:.3f} s: {c_k / c_1:.2f}x")
    if getattr(table, "projections", None):
        md += "\n\n" + "\n".join(table.projections)
    print(md, flush=True)
    if args.out:
        Path(args.out).write_text(md + "\n")
    return md


def _gpu_rows(table: Table, rows: set[str], data_ov: list[str], extra: list[str], epochs: int,
              device: str = "cuda") -> None:
    """The GPU rows g32, g0, s21, fm (see the module docstring); projections are kept on ``table``."""
    table.projections = []
    runs = (("g32", "epoch via trainer.fit, default configuration (data=sc_mat: 32 trials per step), CUDA graphs; "
                    "reference column: the same with module.cuda_graphs=false", []),
            ("g0", "the same, whole training set in one batch (data.batch_size=0)", ["data.batch_size=0"]))
    for rid, label, ov in runs:
        if rid in rows:
            t, traj = lightning_epochs(data_ov + extra + ov, epochs, device=device)
            r, _ = lightning_epochs(data_ov + extra + ov + ["module.cuda_graphs=false"], max(2, min(epochs, 4)),
                                    device=device)
            note = "NaN val/psth_corr during the run" if any(math.isnan(v) for v in traj) else ""
            table.add(rid, label, _after_first(t), _after_first(r), note)
    for rid, exp, variant, n_epochs, label in (
            ("s21", "lab_ltrial_21", "+variant=gradbal_scale_0.5", 500 * 21,
             "epoch of experiment=lab_ltrial_21 (+variant=gradbal_scale_0.5), CUDA graphs"),
            ("fm", "final_model", None, 2000, "epoch of experiment=final_model, CUDA graphs")):
        if rid in rows:
            ov = data_ov + extra + [f"experiment={exp}"] + ([variant] if variant else [])
            t, _ = lightning_epochs(ov, epochs, device=device)
            t = _after_first(t)
            table.add(rid, label, t, None)
            med = statistics.median(t)
            what = ("the 21 configurations x 500 epochs, one after the other" if rid == "s21"
                    else "the final-model run's 2000 epochs")
            table.projections.append(f"projection ({rid}): {what}: {n_epochs} x {med:.4f} s = "
                                     f"**{n_epochs * med / 60:.1f} min** (epoch time only; no early stopping assumed)")


def _rows_b(fit: Fit, table: Table, rows: set[str], repeats: int):
    import torch

    from eirnn.models.recurrence import FusedRecurrence, recurrence_reference

    u_all = fit.train["inputs"]
    g = torch.Generator(device=fit.device).manual_seed(0)
    for rid, bsz in (("b1", min(64, u_all.shape[0])), ("b2", u_all.shape[0])):
        if rid not in rows:
            continue
        u = u_all[:bsz]
        grad_out = torch.randn(bsz, u.shape[1], fit.model.n_units, generator=g, device=fit.device)
        ps = fit.params
        ref_ps = [p for p in fit.ref.parameters() if p.requires_grad]

        def ours():
            r = fit.model(u, generator=fit.gen).rates
            torch.autograd.grad((r * grad_out).sum(), ps, allow_unused=True)

        def ref():
            r, _ = fit.ref(u, generator=fit.ref_gen)
            torch.autograd.grad((r * grad_out).sum(), ref_ps, allow_unused=True)

        table.add(rid, f"model forward + backward, batch {bsz}", measure(ours, repeats), measure(ref, repeats))
    if "b3" in rows:
        m = fit.model
        with torch.no_grad():
            alpha = m.alpha()
            inp = (alpha * m.input_drive(u_all)).transpose(0, 1).contiguous()
            w_t = (m.W_rec * alpha[:, None]).T.contiguous()
            args = [inp, w_t, 1.0 - alpha, m.rate_scale, m.rate_baseline, m.h0.detach()]
        args = [a.clone().requires_grad_() for a in args]
        grad_out = torch.randn(inp.shape, generator=g, device=fit.device)

        def kernel():
            x, w, dec, sc, bs, h = args
            r, _ = FusedRecurrence.apply(x, None, None, None, w, dec, sc, bs, h, False, True)
            torch.autograd.grad(r, args, grad_out)

        def loop():
            r, _ = recurrence_reference(*args, time_major=True)
            torch.autograd.grad(r, args, grad_out)

        table.add("b3", f"recurrence kernel alone, batch {inp.shape[1]}: fused vs autograd step loop",
                  measure(kernel, repeats), measure(loop, repeats))


def _row_d(fit: Fit, table: Table, repeats: int):
    import torch

    from benchmarks.reference import trial_loss_reference

    with torch.no_grad():
        rates = fit.model(fit.train["inputs"], generator=fit.gen).rates[..., : fit.n_rec].contiguous()
    rates.requires_grad_()
    target, mask = fit.train["rates"], fit.train["mask"]
    obj = fit.module.objective

    def ours():
        torch.autograd.grad(obj.trial_term(rates, target, mask), rates)

    def ref():
        torch.autograd.grad(trial_loss_reference(rates, target, mask, **fit.trial_cfg), rates)

    table.add("d", f"L_trial (Sinkhorn, {fit.trial_cfg['n_iters']} iterations) forward + backward",
              measure(ours, repeats), measure(ref, repeats))


def _header(data_note, n_train, n_time, fit, load0, load1, wall, args, runtime_note="") -> str:
    import lightning
    import torch

    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    return "\n".join([
        f"### eirnn speed benchmark ({mode} mode)",
        "",
        f"- machine: {cpu_model()}, {os.cpu_count()} cores; {runtime_note or f'torch threads {torch.get_num_threads()}'}",
        f"- versions: python {platform.python_version()}, torch {torch.__version__}, lightning {lightning.__version__}",
        f"- data: {data_note}; {n_train} training trials x {n_time} bins, {fit.n_rec} recorded + "
        f"{fit.model.n_units - fit.n_rec} hidden units; rows a and e (trainer.fit): "
        f"{_batch_note(fit.cfg)}, the other rows: the whole training set in one batch",
        f"- config: {' '.join(fit.overrides)} (loss defaults: Sinkhorn L_trial eps 0.1 x 20 iterations, "
        f"balance.mode=param, ltrial_scale 0.5), seed 42",
        f"- date {time.strftime('%Y-%m-%d %H:%M %Z')}; command: python -m benchmarks.run {' '.join(sys.argv[1:])}",
        f"- load average (1 min) at start / end: {load0[0]:.2f} / {load1[0]:.2f}; total benchmark wall time {wall:.0f} s",
        "- times are wall-clock medians over the stated repeats (after one warm-up call); reference = plain-PyTorch "
        "lab-style code (benchmarks/reference.py) on the same data in the same process; CPU = this process's "
        "user + system time per call (all threads), the steadier figure on a shared machine",
    ])


def _batch_note(cfg) -> str:
    bs = int(cfg.data.get("batch_size") or 0)
    return "full batch (data.batch_size=0)" if bs <= 0 else f"mini-batches of {bs} trials (data.batch_size={bs})"


def _ratios(table: Table) -> str:
    lines = ["| balanced-step cost | ours | reference | ours (CPU time) | reference (CPU time) |", "|---|---:|---:|---:|---:|"]

    def ratio(num, den, key):
        a = next((r[key] for r in table.rows if r["id"] == num), None)
        b = next((r[key] for r in table.rows if r["id"] == den), None)
        return f"{a / b:.2f}" if a and b else "n/a"

    for num, den, label in (("c_param", "c_fixed", "param / fixed (single loss incl. L_trial)"),
                            ("c_output", "c_fixed", "output / fixed"),
                            ("c_param", "c_off", "param / off (L_neuron only)"),
                            ("c_output", "c_off", "output / off")):
        lines.append(f"| {label} | {ratio(num, den, 'ours')} | {ratio(num, den, 'ref')} | "
                     f"{ratio(num, den, 'cpu')} | {ratio(num, den, 'ref_cpu')} |")
    return "\n".join(lines)


def main() -> None:
    run()


if __name__ == "__main__":
    main()
