"""Early training blow-up vs the lr warmup: the first optimiser steps of a fit, seed by seed.

For each seed, runs ``--epochs`` epochs of the configured fit's optimisation step outside
Lightning (the same model, objective, balancer, clipping and Adam as
:class:`~eirnn.training.FitModule`; no validation, no non-finite-step guard, so a blow-up is
seen as it happens) and prints a markdown table: the largest model rate over all steps, how
many steps had a rate above 1000 sp/s, the largest ``L_neuron`` and the first step whose
gradient was not finite.

    python experiments/early_blowup.py --seeds 0-7 --epochs 3 --warmup 0 -- data=sc_mat data.path=FILE
    python experiments/early_blowup.py --seeds 0-7 --epochs 15 --warmup 100 -- data=sc_mat data.path=FILE

Everything after ``--`` is a Hydra override of ``conf/train.yaml``; ``--warmup`` sets
``optim.warmup_steps``.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _seeds(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b or a) + 1))
    return out


def first_steps(overrides: list[str], seed: int, epochs: int) -> dict:
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from eirnn.train import build_datamodule, build_model, build_module
    from eirnn.training.lr_warmup import grads_finite, scaled_lr, warmup_factor

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"seed={seed}", "logger=none"] + overrides)
    torch.manual_seed(seed)
    dm = build_datamodule(cfg)
    model = build_model(cfg, dm)
    module = build_module(cfg, model, dm)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=float(cfg.optim.lr))
    warm, clip = int(cfg.optim.get("warmup_steps", 0) or 0), float(cfg.optim.grad_clip)
    gen = torch.Generator().manual_seed(seed)
    res = {"max_rate": 0.0, "steps_above_1e3": 0, "max_L_neuron": 0.0, "first_nonfinite_step": None, "steps": 0}
    step = 0
    for epoch in range(epochs):
        for batch in dm.train_dataloader():
            out = model(batch["inputs"], noise=True, generator=gen)
            rec = out.rates[..., : model.n_recorded]
            l_neuron = module.objective.neuron_term(rec, batch["rates"], batch["mask"])
            l_trial = (module.objective.trial_term(rec, batch["rates"], batch["mask"])
                       if module.objective.trial_active(epoch) else None)
            extra = sum(module.objective.extra_term(model, out.rates, batch["mask"]).values())
            opt.zero_grad(set_to_none=True)
            params = list(model.parameters())
            module.balancer.backward(params, l_neuron, l_trial, extra, outputs=rec)
            rate, ln = float(rec.detach().max()), float(l_neuron.detach())
            res["max_rate"] = max(res["max_rate"], rate) if math.isfinite(rate) else math.inf
            res["steps_above_1e3"] += int(not rate < 1e3)
            res["max_L_neuron"] = max(res["max_L_neuron"], ln) if math.isfinite(ln) else math.inf
            if not grads_finite(params):
                res["first_nonfinite_step"] = step
                res["steps"] = step + 1
                return res
            if clip > 0:
                torch.nn.utils.clip_grad_norm_(params, clip)
            with scaled_lr(opt, warmup_factor(step, warm)):
                opt.step()
            step += 1
    res["steps"] = step
    return res


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    overrides = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0-7", help="e.g. 0-7 or 1,3,5")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=None, help="optim.warmup_steps (default: the config's)")
    args = ap.parse_args(argv)
    if args.warmup is not None:
        overrides = overrides + [f"optim.warmup_steps={args.warmup}"]
    print(f"overrides: {' '.join(overrides)}; {args.epochs} epochs\n")
    print("| seed | steps | max rate (sp/s) | steps with a rate > 1000 sp/s | max L_neuron | first non-finite gradient |")
    print("|---|---:|---:|---:|---:|---|")
    for seed in _seeds(args.seeds):
        r = first_steps(overrides, seed, args.epochs)
        nf = "none" if r["first_nonfinite_step"] is None else f"step {r['first_nonfinite_step']}"
        print(f"| {seed} | {r['steps']} | {r['max_rate']:.3g} | {r['steps_above_1e3']} | {r['max_L_neuron']:.3g} | {nf} |",
              flush=True)


if __name__ == "__main__":
    main()
