"""GPU path (issue 16): CUDA graphs of the training step, no host synchronisation, System A's BPTT.

The CUDA tests skip on a machine without a GPU; the CPU tests check the same code paths'
arithmetic (the graphed step's function run eagerly, the GPU variant of the tanh BPTT).
"""
from __future__ import annotations

import math

import pytest
import torch

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
SMALL = ["data.synthetic.n_trials=60", "+data.synthetic.n_time=30", "model.n_hidden=8", "model.embed_dim=8",
         "model.n_heads=2", "logger=none", "callbacks=none", "trainer.max_epochs=3", "seed=5"]


def _build(compose, tmp_path, overrides):
    import lightning as L

    from eirnn.train import build_datamodule, build_model, build_module

    cfg = compose(SMALL + overrides, tmp_path)
    L.seed_everything(int(cfg.seed), verbose=False)
    dm = build_datamodule(cfg)
    model = build_model(cfg, dm)
    return cfg, dm, model, build_module(cfg, model, dm)


def _fit(cfg, dm, module, accelerator="cpu", callbacks=()):
    from hydra.utils import instantiate

    trainer = instantiate(cfg.trainer, accelerator=accelerator, logger=False, callbacks=list(callbacks),
                          enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                          default_root_dir=cfg.paths.output_dir)
    trainer.fit(module, datamodule=dm)
    return trainer


class _EagerGraphs:
    """Stands in for StepGraphs on a CPU: every call runs the function eagerly (no capture)."""

    def __init__(self):
        self.calls = 0

    def run(self, key, fn, inputs, setup=None):
        self.calls += 1
        if setup is None:
            return fn(**inputs)
        with setup(False):
            return fn(**inputs)


@pytest.mark.slow
@pytest.mark.parametrize("batch", ["16", "0"])
def test_graphed_step_function_matches_the_eager_step_on_cpu(compose, tmp_path, batch, monkeypatch):
    """The function a CUDA graph captures (forward with a pre-drawn noise, losses, balanced backward,
    clipping, Adam, bookkeeping) gives the eager training step's run exactly (CPU, same seeds)."""
    from eirnn.training.module import FitModule

    ov = [f"data.batch_size={batch}", "optim.warmup_steps=3", "loss.trial.warmup_epochs=1"]
    cfg, dm, _, eager = _build(compose, tmp_path / "a", ov)
    tr = _fit(cfg, dm, eager)
    cfg, dm, _, graphed = _build(compose, tmp_path / "b", ov)
    fake = _EagerGraphs()
    monkeypatch.setattr(FitModule, "graphs_enabled", lambda self: True)
    monkeypatch.setattr(FitModule, "_step_graphs", lambda self: fake)
    tr2 = _fit(cfg, dm, graphed)
    assert fake.calls > 3 and tr2.global_step == tr.global_step > 0
    for a, b in zip(eager.history, graphed.history, strict=True):
        for k in ("val/psth_corr", "val/L_neuron", "train/loss", "train/L_neuron", "lr"):
            assert (math.isnan(a[k]) and math.isnan(b[k])) or a[k] == b[k], (k, a[k], b[k])
    for (n, p), (_, q) in zip(eager.model.named_parameters(), graphed.model.named_parameters()):
        assert torch.equal(p, q), n


@pytest.mark.parametrize("batched", [False, True])
def test_tanh_rnn_device_path_matches_cpu_path(batched, monkeypatch):
    """The GPU variant of System A's BPTT (weight gradients as one product after the loop) gives
    the CPU variant's values and gradients (float64, run on the CPU)."""
    import eirnn.models.tanh_recurrence as tr

    g = torch.Generator().manual_seed(3)
    lead, wl = ((3, 4), (3,)) if batched else ((4,), ())
    kw = dict(dtype=torch.float64)
    u = torch.randn(12, *lead, 1, generator=g, **kw)
    u[2:6] = 0.0
    base = (u, torch.randn(*wl, 1, 7, generator=g, **kw), 0.3 * torch.randn(*wl, 7, 7, generator=g, **kw),
            torch.randn(*wl, 7, 1, generator=g, **kw), torch.randn(7, generator=g, **kw))
    gy = torch.randn(12, *lead, 1, generator=g, **kw)
    res = []
    for device_path in (False, True):
        monkeypatch.setattr(tr, "DEVICE_PATH_ON_CPU", device_path)
        args = [a.clone().requires_grad_() for a in base]
        y, x = tr.tanh_rnn(*args, 0.9, return_states=True)
        grads = torch.autograd.grad(y, args, gy)
        with torch.no_grad():
            y_inf, _ = tr.tanh_rnn(*args, 0.9)
        res.append((y.detach(), x, y_inf, grads))
    (y0, x0, i0, g0), (y1, x1, i1, g1) = res
    torch.testing.assert_close(y1, y0)
    torch.testing.assert_close(x1, x0)
    torch.testing.assert_close(i1, i0)
    for a, b in zip(g0, g1):
        torch.testing.assert_close(b, a)


# ----------------------------------------------------------------------------------------- CUDA


@CUDA
@pytest.mark.parametrize("shape", [
    (None, 32, 500), (None, 20, 500), (None, 100, 500),   # experiment=system_a: batches of 32, the last of 20, validation
    (None, 32, 100), (None, 4, 100),                      # system_a_small, its sanity size
    (4, 32, 100), (20, 32, 500), (20, 100, 500),          # ensembles (bmm strategy): K members
])
def test_tanh_rnn_backward_on_cuda_every_shape(shape):
    """System A's hand-written BPTT runs on CUDA (it failed in cuBLASLt before) and matches float64 on the CPU."""
    from eirnn.models.tanh_recurrence import tanh_rnn

    K, B, N = shape
    T = 40
    g = torch.Generator().manual_seed(0)
    lead, wl = ((K, B), (K,)) if K else ((B,), ())
    u = torch.zeros(T, *lead, 1)
    u[5:12] = 2.0
    a = 0.01
    I = torch.randn(*wl, N, 1, generator=g)
    G = torch.randn(*wl, N, N, generator=g) / N ** 0.5
    w = torch.randn(*wl, N, 1, generator=g) / N ** 0.5
    h0 = torch.zeros(N)
    gy = torch.randn(T, *lead, 1, generator=g)

    def run(device, dtype):
        ins = [(a * I).mT, (a * 1.5) * G.mT, w]
        ins = [t.to(device, dtype).requires_grad_() for t in ins]
        y, _ = tanh_rnn(u.to(device, dtype), ins[0], ins[1], ins[2], h0.to(device, dtype), 1.0 - a)
        grads = torch.autograd.grad(y, ins, gy.to(device, dtype))
        return [y.detach().cpu().double()] + [t.cpu().double() for t in grads]

    torch.backends.cuda.matmul.allow_tf32 = False
    ref = run("cpu", torch.float64)
    got = run("cuda", torch.float32)
    for r, x in zip(ref, got):
        assert torch.isfinite(x).all()
        assert (x - r).norm() / r.norm().clamp_min(1e-12) < 1e-4


def _sync_checked(module, method):
    """Wrap ``module.<method>`` so that, after two calls per key (eager step + capture), every call runs
    under torch.cuda.set_sync_debug_mode('error'); returns the list of checked calls."""
    orig = getattr(module, method)
    seen: dict = {}
    checked = []

    def wrapped(batch, batch_idx):
        key = (batch_idx if method == "validation_step" else None, tuple(batch["inputs"].shape))
        seen[key] = seen.get(key, 0) + 1
        if seen[key] <= 2:
            return orig(batch, batch_idx)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            return orig(batch, batch_idx)
        finally:
            torch.cuda.set_sync_debug_mode("default")
            checked.append(key)

    setattr(module, method, wrapped)
    return checked


@pytest.mark.slow
@CUDA
@pytest.mark.parametrize("graphs", ["true", "false"])
def test_training_and_validation_steps_do_not_synchronise_on_cuda(compose, tmp_path, graphs):
    """A whole training_step and validation_step on CUDA (eager and graphed) never wait for the device."""
    cfg, dm, _, module = _build(compose, tmp_path, ["data.batch_size=16", "trainer.max_epochs=4",
                                                    f"module.cuda_graphs={graphs}"])
    checked = _sync_checked(module, "training_step")
    vchecked = _sync_checked(module, "validation_step")
    _fit(cfg, dm, module, accelerator="gpu")
    assert checked and vchecked
    assert all(math.isfinite(h["val/psth_corr"]) for h in module.history)
    if graphs == "true":
        assert module._graphs is not None and module._graphs.failed is None, module._graphs.failed
        assert module._graphs.captures >= 2  # a training and a validation graph at least


@pytest.mark.slow
@CUDA
@pytest.mark.parametrize("graphs", ["true", "false"])
def test_ensemble_steps_do_not_synchronise_on_cuda(compose, tmp_path, graphs):
    from eirnn.train import build_datamodule
    from eirnn.runs.ensemble import build_ensemble

    cfg = compose(SMALL + ["data.batch_size=16", "trainer.max_epochs=4", "ensemble.size=3",
                           f"module.cuda_graphs={graphs}"], tmp_path)
    dm = build_datamodule(cfg)
    _, module = build_ensemble(cfg, dm, 3)
    checked = _sync_checked(module, "training_step")
    vchecked = _sync_checked(module, "validation_step")
    _fit(cfg, dm, module, accelerator="gpu")
    assert checked and vchecked
    assert all(math.isfinite(h["val/psth_corr"]) for h in module.history)
    if graphs == "true":
        assert module._graphs is not None and module._graphs.failed is None, module._graphs.failed
        assert module._graphs.captures >= 2  # a training and a validation graph at least


@pytest.mark.slow
@CUDA
def test_graphed_fit_on_cuda_follows_the_eager_fit(compose, tmp_path):
    """The same run with and without CUDA graphs on the GPU: the same trajectory up to float32 round-off."""
    hist = {}
    for graphs in ("true", "false"):
        cfg, dm, _, module = _build(compose, tmp_path / graphs, ["data.batch_size=16", "trainer.max_epochs=4",
                                                                  f"module.cuda_graphs={graphs}"])
        _fit(cfg, dm, module, accelerator="gpu")
        hist[graphs] = [h["val/psth_corr"] for h in module.history]
    assert len(hist["true"]) == 4
    for a, b in zip(hist["true"], hist["false"]):
        assert abs(a - b) < 1e-3, (hist["true"], hist["false"])


@pytest.mark.slow
def test_graphed_ensemble_step_function_matches_the_eager_step_on_cpu(compose, tmp_path, monkeypatch):
    """The same for an ensemble (K members as one batched model): the graphed step function run
    eagerly gives the eager ensemble step's run exactly."""
    from eirnn.train import build_datamodule
    from eirnn.runs.ensemble import build_ensemble
    from eirnn.training.ensemble import EnsembleFitModule

    runs = {}
    for name in ("eager", "graphed"):
        cfg = compose(SMALL + ["data.batch_size=16", "ensemble.size=2", "optim.warmup_steps=2"], tmp_path / name)
        dm = build_datamodule(cfg)
        _, module = build_ensemble(cfg, dm, 2)
        if name == "graphed":
            fake = _EagerGraphs()
            monkeypatch.setattr(EnsembleFitModule, "graphs_enabled", lambda self: True)
            monkeypatch.setattr(EnsembleFitModule, "_step_graphs", lambda self: fake)
        _fit(cfg, dm, module)
        runs[name] = module
    assert fake.calls > 3
    for a, b in zip(runs["eager"].history, runs["graphed"].history, strict=True):
        for k in ("val/psth_corr", "train/loss", "lr"):
            assert (math.isnan(a[k]) and math.isnan(b[k])) or a[k] == b[k], (k, a[k], b[k])
    for (n, p), (_, q) in zip(runs["eager"].model.named_parameters(), runs["graphed"].model.named_parameters()):
        assert torch.equal(p, q), n


def test_device_validation_metrics_match_the_numpy_metrics():
    """The validation metrics computed with torch on the device (GPU runs) equal eirnn.metrics' numpy ones."""
    import numpy as np

    from eirnn import metrics as M
    from eirnn.training.module import device_psth_corr_and_bps

    g = torch.Generator().manual_seed(0)
    rates = torch.rand(9, 30, 5, generator=g) * 40
    target = torch.poisson(torch.rand(9, 30, 5, generator=g) * 2, generator=g) * 40
    mask = torch.rand(9, 30, 5, generator=g) > 0.2
    mask[:, :, 4] = False  # a neuron without valid bins: NaN correlation
    target[:, :, 3] = 7.0  # a constant PSTH: NaN
    r, bps = device_psth_corr_and_bps(rates, target, mask, 25.0)
    ref = M.psth_correlation(rates, target, mask)
    np.testing.assert_allclose(r.numpy(), ref, rtol=1e-12, atol=1e-12)
    assert np.isnan(ref[4]) and np.isnan(ref[3])
    assert float(bps) == pytest.approx(M.bits_per_spike(rates, target, mask, bin_size_ms=25.0), rel=1e-12)


def test_device_validation_path_gives_the_cpu_metrics(compose, tmp_path):
    """FitModule's one-transfer validation metrics (the GPU path, run here on CPU tensors) give the CPU path's values."""
    import numpy as np

    _, dm, model, module = _build(compose, tmp_path, [])
    val = dm.tensors("val")
    with torch.no_grad():
        rates = model(val["inputs"], noise=True, generator=torch.Generator().manual_seed(0)).rates[..., :model.n_recorded]
    v = {"rates": rates, "target": val["rates"], "mask": val["mask"]}
    vals, arrays = module.compute_val_metrics(v)
    pn, bps, ln, lt, pm, pd = module._device_val_metrics(rates.float(), val["rates"].float(), val["mask"])
    np.testing.assert_allclose(pn, arrays["per_neuron_corr"], rtol=1e-10, atol=1e-12)
    assert bps == pytest.approx(vals["val/bits_per_spike"], rel=1e-10)
    assert ln == pytest.approx(vals["val/L_neuron"], rel=1e-6) and lt == pytest.approx(vals["val/L_trial"], rel=1e-6)
    np.testing.assert_array_equal(pm, arrays["psth_model"])
    np.testing.assert_array_equal(pd, arrays["psth_data"])


@pytest.mark.parametrize("with_inv", [False, True])
def test_lean_recurrence_variant_matches_the_cpu_variant(with_inv, monkeypatch):
    """The GPU variant of the fused E-I recurrence (fewer kernels per step) gives the CPU variant's
    rates, states and gradients, for autograd's backward and for output_vjp's two cotangents (float64)."""
    import eirnn.models.recurrence as rec

    g = torch.Generator().manual_seed(2)
    T, B, n, U = 15, 4, 6, 9
    kw = dict(dtype=torch.float64)
    drive = torch.randn(U, n, generator=g, **kw) if with_inv else torch.randn(T, B, n, generator=g, **kw)
    inv = torch.randint(0, U, (T, B), generator=g) if with_inv else None
    xi = torch.randn(B, T, n, generator=g, **kw)
    base = [drive, torch.rand(n, generator=g, **kw) * 0.2, 0.3 * torch.randn(n, n, generator=g, **kw),
            torch.rand(n, generator=g, **kw) * 0.5 + 0.3, torch.tensor(2.0, **kw), torch.tensor(0.4, **kw),
            torch.randn(n, generator=g, **kw)]
    cots = [torch.randn(T, B, n, generator=g, **kw) for _ in range(3)]
    res = []
    for lean in (False, True):
        monkeypatch.setattr(rec, "LEAN_ON_CPU", lean)
        d, coef, w_t, decay, s, b, h0 = [a.clone().requires_grad_() for a in base]
        ins = [d, coef, w_t, decay, s, b, h0]
        r, x = rec.FusedRecurrence.apply(d, inv, xi, coef, w_t, decay, s, b, h0, True, True)
        one = torch.autograd.grad(r, ins, cots[0], retain_graph=True)
        inputs, per_k = rec.output_vjp(r, cots[1:])
        two = [[gk for gk in grads] for grads in per_k]
        res.append((r.detach(), x.detach(), one, [t.shape for t in inputs], two))
    (r0, x0, one0, s0, two0), (r1, x1, one1, s1, two1) = res
    torch.testing.assert_close(r1, r0)
    torch.testing.assert_close(x1, x0)
    for a, b_ in zip(one0, one1):
        torch.testing.assert_close(b_, a)
    assert s0 == s1
    for ga, gb in zip(two0, two1):
        for a, b_ in zip(ga, gb):
            torch.testing.assert_close(b_, a)


@pytest.mark.parametrize("drive", ["linear", "table", "lookup"])
def test_lean_ensemble_recurrence_matches_the_autograd_loop(drive, monkeypatch):
    """The GPU variant of the K-member recurrence (run on CPU tensors) against the plain autograd loop (float64)."""
    import eirnn.models.recurrence as rec
    from eirnn.models.ensemble import FusedEnsembleRecurrence, ensemble_recurrence_reference

    monkeypatch.setattr(rec, "LEAN_ON_CPU", True)
    g = torch.Generator().manual_seed(1)
    K, T, B, n, C, U = 3, 6, 4, 5, 3, 7
    r_ = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    u = r_(T, B, C) if drive == "linear" else None
    w_in = r_(K, C, n) * 0.3 if drive == "linear" else None
    table = {"linear": None, "table": r_(K, T, B, n), "lookup": r_(K, U, n)}[drive]
    inv = torch.randint(0, U, (T, B), generator=g) if drive == "lookup" else None
    args = [u, w_in, table, inv, r_(K, n) * 0.1, r_(K, B, T, n), r_(K, n).abs() * 0.2, r_(K, n, n) * 0.2,
            r_(K, n).abs() * 0.5 + 0.2, r_(K).abs() + 0.5, r_(K).abs() * 0.5, r_(K, n) * 0.1]
    for i in (1, 2, 4, 6, 7, 8, 9, 10, 11):
        if args[i] is not None:
            args[i].requires_grad_()
    want = [a for a in args if a is not None and a.requires_grad]
    r1, x1 = FusedEnsembleRecurrence.apply({}, *args, True, True)
    r2, x2 = ensemble_recurrence_reference(*args, return_states=True)
    gr, gx = torch.randn_like(r1), torch.randn_like(r1)
    torch.testing.assert_close(r1, r2)
    torch.testing.assert_close(x1, x2)
    for a, b in zip(torch.autograd.grad((r1 * gr).sum() + (x1 * gx).sum(), want),
                    torch.autograd.grad((r2 * gr).sum() + (x2 * gx).sum(), want)):
        torch.testing.assert_close(a, b)
    with torch.no_grad():
        r3, _ = FusedEnsembleRecurrence.apply({}, *args, False, False)
    torch.testing.assert_close(r3, r2.detach())


@pytest.mark.parametrize("sigma", [1.0, 0.0])
def test_trial_loss_of_k_models_at_once_matches_k_calls(sigma):
    """trial_loss_members (the ensembles' batched L_trial on a GPU) = trial_loss per model, values and gradients."""
    from eirnn.losses.trial import trial_loss, trial_loss_members

    g = torch.Generator().manual_seed(4)
    K, B, T, N = 3, 7, 20, 5
    rates = (torch.rand(K, B, T, N, generator=g, dtype=torch.float64) * 30).requires_grad_()
    target = torch.rand(B, T, N, generator=g, dtype=torch.float64) * 30
    mask = torch.rand(B, T, N, generator=g) > 0.1
    mask[2, 15:] = False
    kw = dict(epsilon=0.5, n_iters=10, smooth_sigma_bins=sigma)
    got = trial_loss_members(rates, target, mask, **kw)
    want = torch.stack([trial_loss(rates[k], target, mask, **kw) for k in range(K)])
    torch.testing.assert_close(got, want)
    w = torch.rand(K, generator=g, dtype=torch.float64)
    g1, = torch.autograd.grad((got * w).sum(), rates)
    g2, = torch.autograd.grad((want * w).sum(), rates)
    torch.testing.assert_close(g1, g2)
