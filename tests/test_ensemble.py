"""Many seeds at once (ensemble.size=K): K independent EIRNNs trained as one batched model."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from conftest import tiny_overrides
from eirnn.models import EIRNN
from eirnn.models.ensemble import EnsembleEIRNN, FusedEnsembleRecurrence, ensemble_recurrence_reference
from eirnn.training.balancer import GradientBalancer
from eirnn.training.ensemble import (
    MemberPlateau,
    clip_member_grad_norms_,
    ensemble_backward,
    load_member_checkpoint,
    member_grad_norms,
)

FAST = tiny_overrides("data.synthetic.n_trials=60", "model.n_hidden=6", drop=("trainer.max_epochs",))  # debug=fast's 3 epochs
EXC = np.array([1, 1, 0, 1, 1, 0, 1], bool)


def _members(k=3, seed=10, **kw):
    return [EIRNN(5, EXC, n_hidden=4, seed=seed + i, **kw) for i in range(k)]


def _inputs(b=4, t=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, t, 5, generator=g) < 0.3).float()


# ----------------------------------------------------------------------------- the model


@pytest.mark.parametrize("kw", [{}, {"rank": 3}, {"rank": 3, "lowrank_dale": "factors"},
                                {"input_embedding": "attention", "embed_dim": 8, "n_heads": 2, "learnable_h0": True},
                                {"learnable_tau": "population"}, {"recurrence_impl": "autograd"}])
def test_members_compute_what_the_single_models_compute(kw):
    """Rates and parameter gradients of member k equal those of the single model k (same noise)."""
    members = _members(**kw)
    ens = EnsembleEIRNN(members, seeds=[10, 11, 12])
    u = _inputs()
    xi = torch.randn(3, 4, 6, ens.n_units, generator=torch.Generator().manual_seed(1))
    ws = {}
    for _ in range(2):  # the second call reuses the workspace buffers
        out = ens(u, noise_sample=xi, workspace=ws)
        g = torch.randn(out.rates.shape, generator=torch.Generator().manual_seed(2))
        names = [n for n, p in ens.stacked.items() if p.requires_grad]
        grads = dict(zip(names, torch.autograd.grad((out.rates * g).sum(), [ens.stacked[n] for n in names],
                                                    allow_unused=True)))
        for k, m in enumerate(members):
            single = m(u, noise_sample=xi[k])
            torch.testing.assert_close(out.rates[k], single.rates, rtol=1e-5, atol=1e-5)
            ps = [(n, p) for n, p in m.named_parameters() if p.requires_grad]
            gs = torch.autograd.grad((single.rates * g[k]).sum(), [p for _, p in ps], allow_unused=True)
            for (n, _), gk in zip(ps, gs):
                ge = grads[n.replace(".", "__")]
                if ge is None:
                    assert gk is None or not gk.any(), n
                    continue
                torch.testing.assert_close(ge[k], torch.zeros_like(ge[k]) if gk is None else gk, rtol=1e-4, atol=1e-5)


def test_member_generators_draw_the_single_models_noise():
    members = _members()
    ens = EnsembleEIRNN(members)
    u = _inputs()
    out = ens(u, generator=[torch.Generator().manual_seed(100 + k) for k in range(3)])
    for k, m in enumerate(members):
        torch.testing.assert_close(out.rates[k], m(u, generator=torch.Generator().manual_seed(100 + k)).rates)


def test_fused_kernel_matches_the_autograd_loop_float64():
    torch.manual_seed(0)
    K, T, B, n, C = 2, 5, 3, 4, 3
    args = [torch.randn(T, B, C), torch.randn(K, C, n) * 0.3, None, None, torch.randn(K, n) * 0.1,
            torch.randn(K, B, T, n), torch.rand(K, n) * 0.2, torch.randn(K, n, n) * 0.2, torch.rand(K, n) * 0.5 + 0.2,
            torch.rand(K) + 0.5, torch.rand(K) * 0.5, torch.randn(K, n) * 0.1]
    args = [None if a is None else a.double() for a in args]
    for i in (1, 4, 6, 7, 8, 9, 10, 11):
        args[i].requires_grad_()
    want = [a for a in args if a is not None and a.requires_grad]
    r1, _ = FusedEnsembleRecurrence.apply({}, *args, False, True)
    r2, _ = ensemble_recurrence_reference(*args)
    g = torch.randn_like(r1)
    torch.testing.assert_close(r1, r2)
    for a, b in zip(torch.autograd.grad((r1 * g).sum(), want), torch.autograd.grad((r2 * g).sum(), want)):
        torch.testing.assert_close(a, b)


def test_gradient_of_one_member_does_not_touch_the_others():
    ens = EnsembleEIRNN(_members(input_embedding="attention", embed_dim=8, n_heads=2, learnable_h0=True))
    out = ens(_inputs(), generator=[torch.Generator().manual_seed(k) for k in range(3)])
    params = [p for p in ens.parameters() if p.requires_grad]
    for j in range(3):
        grads = torch.autograd.grad(out.rates[j].pow(2).mean(), params, retain_graph=True, allow_unused=True)
        assert sum(g is not None for g in grads) >= len(params) - 2  # all but the unused readout
        for p, g in zip(params, grads):
            if g is None:
                continue
            others = torch.cat([g[i].flatten() for i in range(3) if i != j])
            assert torch.count_nonzero(others) == 0
            assert g[j].abs().sum() > 0 or p.shape[1:] == ()  # member j's own slice moves


def test_dale_and_zero_diagonal_for_every_member():
    ens = EnsembleEIRNN(_members(k=4))
    with torch.no_grad():  # any raw values: the parametrisation keeps the constraints
        for p in ens.parameters():
            p.normal_()
    w = ens.W_rec  # [K, n, n]
    sign = ens.is_excitatory.float() * 2 - 1
    for k in range(4):
        assert torch.all(torch.diagonal(w[k]) == 0)
        assert torch.all(w[k] * sign[None, :] >= 0)  # column j has unit j's sign


def test_member_state_dict_is_a_single_model_state_dict():
    members = _members(learnable_h0=True)
    ens = EnsembleEIRNN(members)
    for k, m in enumerate(members):
        state = ens.member_state_dict(k)
        assert list(state) == list(m.state_dict())
        fresh = EIRNN(5, EXC, n_hidden=4, seed=0, learnable_h0=True)
        fresh.load_state_dict(state)
        for a, b in zip(fresh.state_dict().values(), m.state_dict().values()):
            assert torch.equal(a, b)


def test_members_must_share_the_architecture():
    with pytest.raises(ValueError, match="architecture"):
        EnsembleEIRNN([EIRNN(5, EXC, n_hidden=4, seed=0), EIRNN(5, EXC, n_hidden=5, seed=1)])


# ----------------------------------------------------------------------------- the step


@pytest.mark.parametrize("mode", ["param", "output", "fixed", "off"])
def test_balanced_step_is_per_member(mode):
    """ensemble_backward gives member k exactly the single-model balancer's gradient for member k."""
    members = _members()
    ens = EnsembleEIRNN(members)
    u, target = _inputs(), torch.rand(4, 6, 7) * 10
    xi = torch.randn(3, 4, 6, ens.n_units, generator=torch.Generator().manual_seed(3))
    bal = GradientBalancer(mode=mode, scale=0.5, lambda_fixed=0.3)

    def losses(rec):
        main = ((rec.mean(0) - target.mean(0)) ** 2).mean()
        aux = (rec - target).abs().mean() * (3.0 + rec[..., 0].mean())  # another direction and scale
        return main, aux

    out = ens(u, noise_sample=xi)
    rec = ens.member_recorded(out.rates)
    pairs = [losses(rec[k]) for k in range(3)]
    main, aux = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
    extra = torch.stack([1e-3 * w.pow(2).mean() for w, _ in ens.member_regularized_weights()])
    params = [p for p in ens.parameters() if p.requires_grad]
    stats = ensemble_backward(bal, params, main, aux, extra, outputs=rec)
    by_name = {n: p.grad for n, p in ens.stacked.items() if p.requires_grad}
    for k, m in enumerate(members):
        r = m(u, noise_sample=xi[k]).rates[..., :7]
        mk, ak = losses(r)
        sparams = [p for p in m.parameters() if p.requires_grad]
        st = bal.backward(sparams, mk, ak, 1e-3 * m.W_rec.pow(2).mean(), outputs=r)
        torch.testing.assert_close(stats["weight"][k], st["weight"], rtol=1e-4, atol=1e-7)
        for n, p in m.named_parameters():
            if p.requires_grad and p.grad is not None:
                torch.testing.assert_close(by_name[n.replace(".", "__")][k], p.grad, rtol=1e-4, atol=1e-6)


def test_per_member_clipping_and_norms():
    g = torch.Generator().manual_seed(0)
    a = torch.nn.Parameter(torch.zeros(3, 4, 5))
    b = torch.nn.Parameter(torch.zeros(3, 2))
    a.grad = torch.randn(3, 4, 5, generator=g) * torch.tensor([0.01, 1.0, 10.0])[:, None, None]
    b.grad = torch.randn(3, 2, generator=g)
    singles = [[a.grad[k].clone(), b.grad[k].clone()] for k in range(3)]
    norms = clip_member_grad_norms_([a, b], 1.0, 3)
    for k in range(3):
        pa, pb = torch.nn.Parameter(torch.zeros(4, 5)), torch.nn.Parameter(torch.zeros(2))
        pa.grad, pb.grad = singles[k]
        n = torch.nn.utils.clip_grad_norm_([pa, pb], 1.0)
        torch.testing.assert_close(norms[k], n)
        torch.testing.assert_close(a.grad[k], pa.grad)
        torch.testing.assert_close(b.grad[k], pb.grad)
    assert torch.all(member_grad_norms([a.grad, b.grad], 3) <= 1.0 + 1e-5)


def test_member_plateau_follows_reduce_lr_on_plateau():
    metrics = [0.1, 0.2, 0.2, 0.19, 0.2, 0.21, 0.21, 0.2, 0.2, 0.2, float("nan"), 0.3, 0.3, 0.3, 0.3]
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    ref = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=2, min_lr=0.1)
    ours = MemberPlateau(1.0, factor=0.5, patience=2, min_lr=0.1)
    for m in metrics:
        ref.step(m)
        ours.step(m)
        assert ours.lr == pytest.approx(opt.param_groups[0]["lr"])


# ----------------------------------------------------------------------------- through Hydra


def test_members_are_initialised_as_single_models_of_seed_plus_k(compose, tmp_path):
    from omegaconf import open_dict

    from eirnn.train import build_datamodule, build_model
    from eirnn.runs.ensemble import build_ensemble
    from eirnn.training.ensemble import EnsembleFitModule

    cfg = compose(FAST + ["ensemble.size=3", "seed=7", "model.input_embedding=attention", "model.embed_dim=8",
                         "model.n_heads=2"], tmp_path)
    dm = build_datamodule(cfg)
    model, module = build_ensemble(cfg, dm, 3)
    assert isinstance(module, EnsembleFitModule) and model.seeds == [7, 8, 9]
    for k in range(3):
        with open_dict(cfg):
            cfg.seed = 7 + k
        single = build_model(cfg, dm).state_dict()
        member = model.member_state_dict(k)
        assert list(member) == list(single)
        for name in single:
            assert torch.equal(member[name], single[name]), (k, name)


@pytest.mark.slow
def test_two_epoch_ensemble_run_writes_per_member_outputs(compose, tmp_path):
    from eirnn.train import train

    summary = train(compose(FAST + ["ensemble.size=3", "trainer.max_epochs=2", "logger=tensorboard"], tmp_path))
    ens = json.loads((tmp_path / "ensemble_metrics.json").read_text())
    assert ens["size"] == 3 and ens["seeds"] == [42, 43, 44] and len(ens["members"]) == 3
    best = [m["best_val/psth_corr"] for m in ens["members"]]
    assert ens["best_val/psth_corr_mean"] == pytest.approx(np.mean(best))
    assert ens["best_val/psth_corr_std"] == pytest.approx(np.std(best))
    log = json.loads((tmp_path / "training_log.json").read_text())
    assert [h["epoch"] for h in log] == [0, 1]
    for h in log:
        per = [h[f"val/psth_corr/m{k}"] for k in range(3)]
        assert h["val/psth_corr"] == pytest.approx(np.mean(per))  # the monitored metric is the mean
    for k, m in enumerate(ens["members"]):
        assert m["best_epoch"] in (0, 1)
        assert m["best_val/psth_corr"] == pytest.approx(max(h[f"val/psth_corr/m{k}"] for h in log))
        state, info = load_member_checkpoint(tmp_path / "members" / f"m{k}" / "checkpoints" / "best.ckpt")
        assert info["member"] == k and info["seed"] == 42 + k and info["epoch"] == m["best_epoch"]
        assert "recurrent.raw" in state and state["W_in"].dim() == 2
        n_rec = state["is_excitatory"].numel() - 6
        single = EIRNN(state["W_in"].shape[1], state["is_excitatory"][:n_rec].numpy(), n_hidden=6, dt=25.0)
        single.load_state_dict(state)
        meta = json.loads((tmp_path / "members" / f"m{k}" / "best.json").read_text())
        assert meta["seed"] == 42 + k and meta["epoch"] == m["best_epoch"]
    assert summary["ensemble"]["size"] == 3
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert {"val/psth_corr", "val/psth_corr/m0", "val/psth_corr/m2"} <= set(acc.Tags()["scalars"])


@pytest.mark.slow
def test_member_follows_the_single_run_of_its_seed(compose, tmp_path):
    """Same split (data.split_seed), same noise stream: member 1 of seed 42 == the run with seed 43."""
    from eirnn.train import train

    common = ["trainer.max_epochs=3", "callbacks.early_stopping.patience=100", "data.split_seed=42"]
    train(compose(FAST + common + ["ensemble.size=2"], tmp_path / "ens"))
    train(compose(FAST + common + ["seed=43"], tmp_path / "single"))
    ens = json.loads((tmp_path / "ens" / "training_log.json").read_text())
    one = json.loads((tmp_path / "single" / "training_log.json").read_text())
    for a, b in zip(ens, one):
        assert a["val/psth_corr/m1"] == pytest.approx(b["val/psth_corr"], abs=1e-5)


@pytest.mark.slow
def test_stopped_members_are_frozen_and_training_ends_when_all_stop(compose, tmp_path):
    from eirnn.train import train

    # lr 0: no member ever improves after epoch 0, so with patience 1 all stop at epoch 1
    summary = train(compose(FAST + ["ensemble.size=2", "trainer.max_epochs=6", "optim.lr=0.0",
                                   "callbacks.early_stopping.patience=1"], tmp_path))
    assert summary["epochs_trained"] == 2 and summary["early_stopped"]
    ens = json.loads((tmp_path / "ensemble_metrics.json").read_text())
    assert [m["stopped_epoch"] for m in ens["members"]] == [1, 1] and ens["all_stopped"]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*LeafSpec")
def test_a_stopped_member_does_not_move(compose, tmp_path):
    import lightning as L

    from eirnn.train import build_datamodule
    from eirnn.runs.ensemble import build_ensemble

    cfg = compose(FAST + ["ensemble.size=2"], tmp_path)
    dm = build_datamodule(cfg)
    model, module = build_ensemble(cfg, dm, 2)
    before = [model.member_state_dict(k) for k in range(2)]
    module.member_stopped_epoch[1] = -1  # member 1 stopped before training
    trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm)
    after = [model.member_state_dict(k) for k in range(2)]
    assert all(torch.equal(before[1][n], after[1][n]) for n in before[1])
    assert not torch.equal(before[0]["recurrent.raw"], after[0]["recurrent.raw"])
    assert module.history[-1]["lr/m1"] == 0.0 and module.history[-1]["ensemble/active_members"] == 1


@pytest.mark.slow
def test_size_one_is_the_usual_single_model_run(compose, tmp_path):
    from eirnn.train import train
    from eirnn.training.module import FitModule

    a = train(compose(FAST + ["trainer.max_epochs=2"], tmp_path / "default"))
    b = train(compose(FAST + ["trainer.max_epochs=2", "ensemble.size=1"], tmp_path / "one"))
    assert a["final"]["val/psth_corr"] == b["final"]["val/psth_corr"]
    assert a["best"]["val/psth_corr"] == b["best"]["val/psth_corr"]
    assert "ensemble" not in b and not (tmp_path / "one" / "ensemble_metrics.json").exists()
    assert not (tmp_path / "one" / "members").exists()
    assert "val/psth_corr/m0" not in b["final"]
    import eirnn.training.module as mod

    assert mod.FitModule is FitModule


def test_bad_ensemble_settings_are_user_errors(compose, tmp_path):
    from eirnn.train import UserError, train

    with pytest.raises(UserError, match="ensemble.size"):
        train(compose(FAST + ["ensemble.size=0"], tmp_path / "zero"))
    with pytest.raises(UserError, match="export"):
        train(compose(FAST + ["ensemble.size=2", "+export=true"], tmp_path / "export"))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*LeafSpec")
@pytest.mark.filterwarnings("ignore:Mean of empty slice")
def test_a_diverging_member_does_not_affect_the_others(compose, tmp_path):
    """A member whose weights are NaN is stopped (NaN metric); the other members train as without it."""
    import lightning as L

    from eirnn.train import build_datamodule
    from eirnn.runs.ensemble import build_ensemble

    histories = []
    for poison in (False, True):
        cfg = compose(FAST + ["ensemble.size=2"], tmp_path / str(poison))
        dm = build_datamodule(cfg)
        model, module = build_ensemble(cfg, dm, 2)
        if poison:
            with torch.no_grad():
                model.stacked["W_in"][1].fill_(float("nan"))
        trainer = L.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, num_sanity_val_steps=0)
        trainer.fit(module, datamodule=dm)
        histories.append(module.history)
        if poison:
            assert module.member_stopped_epoch == [None, 0]
            assert all(torch.isfinite(p[0]).all() for p in model.parameters())
    for clean, poisoned in zip(*histories):
        assert poisoned["val/psth_corr/m0"] == pytest.approx(clean["val/psth_corr/m0"], abs=1e-6)
        assert math.isnan(poisoned["val/psth_corr/m1"])
        assert poisoned["val/psth_corr"] == poisoned["val/psth_corr/m0"]  # the mean leaves the NaN member out
        assert poisoned["ensemble/nan_members"] == 1


def test_member_checkpoint_opens_the_common_format_and_the_older_files(tmp_path):
    """One member format for fits and task networks; the older fit best.pt (a bare state dict) and
    task .ckpt still open; anything else is a one-line UserError."""
    from eirnn.errors import UserError
    from eirnn.training.ensemble.members import member_checkpoint

    state = EIRNN(5, EXC, n_hidden=4, seed=1).state_dict()
    ckpt = member_checkpoint(state, 2, 12, {"epoch": 3, "val/psth_corr": 0.5}, 4, 40)
    torch.save(ckpt, tmp_path / "best.ckpt")
    torch.save(state, tmp_path / "best.pt")
    torch.save({"state_dict": {f"model.{n}": t for n, t in state.items()}, "epoch": 1,
                "eirnn_task": {"ensemble_member": 1}}, tmp_path / "old_task.ckpt")
    (tmp_path / "junk.ckpt").write_text("not torch")
    new, info = load_member_checkpoint(tmp_path / "best.ckpt")
    assert info == {"member": 2, "seed": 12, "epoch": 3, "metrics": {"epoch": 3, "val/psth_corr": 0.5}}
    old, old_info = load_member_checkpoint(tmp_path / "best.pt")
    task, task_info = load_member_checkpoint(tmp_path / "old_task.ckpt")
    assert old_info == {} and task_info["member"] == 1
    for s2 in (new, old, task):
        assert list(s2) == list(state) and all(torch.equal(s2[n], state[n]) for n in state)
    for bad in ("junk.ckpt", "missing.ckpt"):
        with pytest.raises(UserError) as err:
            load_member_checkpoint(tmp_path / bad)
        assert "\n" not in str(err.value) and bad in str(err.value)


@pytest.mark.parametrize("mode", ["param", "output", "fixed", "off"])
def test_balancer_member_axis_with_one_member_is_the_single_model(mode):
    """GradientBalancer.backward(members=1) on [1, ...]-stacked parameters gives the single model's gradient."""
    torch.manual_seed(0)
    w = torch.randn(3, 4, requires_grad=True)
    x = torch.randn(5, 3)
    w1 = w.detach().clone()[None].requires_grad_(True)

    def losses(out):
        return (out ** 2).mean(), out.sin().mean(), 0.1 * out.abs().mean()

    bal = GradientBalancer(mode=mode, scale=0.7, lambda_fixed=0.3)
    out = x @ w
    m, a, e = losses(out)
    s1 = bal.backward([w], m, None if mode == "off" else a, e, outputs=out)
    outk = torch.einsum("bi,kij->kbj", x, w1)
    mk, ak, ek = (torch.stack([t]) for t in losses(outk[0]))
    sk = bal.backward([w1], mk, None if mode == "off" else ak, ek, outputs=outk, members=1)
    torch.testing.assert_close(w1.grad[0], w.grad)
    for key in s1:
        torch.testing.assert_close(sk[key].reshape(()), s1[key].reshape(()))


# ----------------------------------------------------------------------------- ensemble.vary


@pytest.mark.slow
@pytest.mark.parametrize("vary, same_seed, single", [
    # member 1 steps at 2e-3 while the optimiser runs at max lr 1e-2 (f_1 = 0.2): the single run at 2e-3
    ("{optim.lr:[1e-2,2e-3]}", False, ["seed=43", "optim.lr=2e-3"]),
    # the same members from one seed, with a warmup ramp and the plateau schedule (one per member, from lr_k)
    ("{optim.lr:[1e-2,2e-3]}", True, ["seed=42", "optim.lr=2e-3", "optim.warmup_steps=5", "scheduler=plateau",
                                      "scheduler.patience=0"]),
    # loss weights, every member from seed 42: member 1 == the single run of seed 42 with its weights
    ("{loss.reg.lambda_l2:[1e-4,2.0],loss.neuron.lambda_var:[0.05,2.0]}", True,
     ["seed=42", "loss.reg.lambda_l2=2.0", "loss.neuron.lambda_var=2.0"]),
])
def test_member_follows_the_single_run_of_its_values(compose, tmp_path, vary, same_seed, single):
    """ensemble.vary: member k trains as the single run with value k of each list (and seed + k, or
    seed with ensemble.same_seed), up to float round-off; its values are recorded."""
    from eirnn.train import train

    common = ["trainer.max_epochs=3", "callbacks.early_stopping.patience=100", "data.split_seed=42",
              "optim.warmup_steps=0"] + [o for o in single if o.split("=")[0] in ("optim.warmup_steps", "scheduler",
                                                                                   "scheduler.patience")]
    single = [o for o in single if o not in common]
    train(compose(FAST + common + ["ensemble.size=2", f"ensemble.vary={vary}",
                                   f"ensemble.same_seed={str(same_seed).lower()}"], tmp_path / "ens"))
    train(compose(FAST + common + single, tmp_path / "single"))
    ens = json.loads((tmp_path / "ens" / "training_log.json").read_text())
    one = json.loads((tmp_path / "single" / "training_log.json").read_text())
    assert len(ens) == len(one) == 3
    for a, b in zip(ens, one):
        assert a["val/psth_corr/m1"] == pytest.approx(b["val/psth_corr"], abs=1e-5)
        if "optim.warmup_steps=5" not in common:  # (the single run's "lr" includes the warmup ramp; lr/m{k} not)
            assert a["lr/m1"] == pytest.approx(b["lr"])
    assert abs(ens[-1]["val/psth_corr/m1"] - ens[-1]["val/psth_corr/m0"]) > 1e-4  # the values do matter
    # the varied values are in ensemble_metrics.json and each member's best.json
    want = [dict(o.split("=") for o in single if not o.startswith("seed"))]
    summary = json.loads((tmp_path / "ens" / "ensemble_metrics.json").read_text())
    assert summary["seeds"] == ([42, 42] if same_seed else [42, 43])
    m1 = summary["members"][1]["values"]
    assert m1 == {k: pytest.approx(float(v)) for k, v in want[0].items()}
    assert set(summary["vary"]) == set(m1) and all(len(v) == 2 for v in summary["vary"].values())
    best = json.loads((tmp_path / "ens" / "members" / "m1" / "best.json").read_text())
    assert best["values"] == m1 and best["seed"] == summary["seeds"][1]


@pytest.mark.parametrize("override, key", [
    ("ensemble.vary={optim.lr:[1e-3,5e-3,1e-2]}", "optim.lr"),          # 3 values for 2 members
    ("ensemble.vary={model.n_hidden:[4,8]}", "model.n_hidden"),          # changes the architecture
    ("ensemble.vary={loss.trial.epsilon:[0.1,0.2]}", "loss.trial.epsilon"),  # not a per-member weight
    ("ensemble.vary={optim.lr:[1e-3,abc]}", "optim.lr"),                 # not a number
    ("ensemble.vary={optim.lr:1e-3}", "optim.lr"),                       # not a list
])
def test_bad_ensemble_vary_is_a_user_error_naming_the_key(compose, tmp_path, override, key):
    from eirnn.runs.ensemble import ensemble_vary
    from eirnn.train import UserError

    cfg = compose(FAST + ["ensemble.size=2", override], tmp_path)
    with pytest.raises(UserError, match=key.replace(".", r"\.")) as err:
        ensemble_vary(cfg, 2)
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_ensemble_vary_cli_errors_exit_2(tmp_path):
    """Through the command line: a one-line error and exit status 2, before any training."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS="1")
    for args, key in ((["ensemble.size=2", "ensemble.vary={model.n_hidden:[4,8]}"], "model.n_hidden"),
                      (["ensemble.size=2", "ensemble.vary={optim.lr:[1e-3]}"], "optim.lr"),
                      (["ensemble.vary={optim.lr:[1e-3]}"], "ensemble.size")):
        res = subprocess.run([sys.executable, "-m", "eirnn.train", *FAST, *args, f"hydra.run.dir={tmp_path}"],
                             cwd=root, env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 2, res.stderr[-2000:]
        assert key in res.stderr


def test_empty_vary_keeps_the_seed_plus_k_members(compose, tmp_path):
    from eirnn.runs.ensemble import build_ensemble, ensemble_vary
    from eirnn.train import build_datamodule

    cfg = compose(FAST + ["ensemble.size=2"], tmp_path)
    assert ensemble_vary(cfg, 2) == {}
    model, module = build_ensemble(cfg, build_datamodule(cfg), 2)
    assert model.seeds == [42, 43] and module.vary == {} and module.lr_ratios == [1.0, 1.0]
    assert module.member_objectives is None and module.member_train_seeds == [module.train_seed + k for k in range(2)]


def test_varied_lr_starts_each_members_plateau_and_loss_weights_build_member_objectives(compose, tmp_path):
    from eirnn.runs.ensemble import build_ensemble
    from eirnn.train import build_datamodule

    cfg = compose(FAST + ["ensemble.size=3", "scheduler=plateau", "ensemble.same_seed=true",
                          "ensemble.vary={optim.lr:[1e-3,4e-3,2e-3],loss.reg.lambda_l2:[0.0,0.1,0.2]}"], tmp_path)
    model, module = build_ensemble(cfg, build_datamodule(cfg), 3)
    assert model.seeds == [42, 42, 42] and len(set(module.member_train_seeds)) == 1
    assert len(set(module.member_val_seeds)) == 1
    opt = module.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    assert opt.param_groups[0]["lr"] == pytest.approx(4e-3)  # the optimiser's lr is the largest
    assert [p.lr for p in module._plateaus] == pytest.approx([1e-3, 4e-3, 2e-3])
    assert module.member_lrs() == pytest.approx([1e-3, 4e-3, 2e-3])
    assert [o.reg["lambda_l2"] for o in module.member_objectives] == [0.0, 0.1, 0.2]
    assert module.member_values(2) == {"optim.lr": 2e-3, "loss.reg.lambda_l2": 0.2}
