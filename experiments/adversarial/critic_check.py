"""Can the PCM discriminator's heads tell the student's prediction from the consistency target at all?

    python experiments/adversarial/critic_check.py [--lr 1e-3] [--steps 150] [--deltas -1 0.3 1.0]

Builds the ``tdd_digits`` run with ``adversarial=pcm`` (the cached digits teacher, the student at its initialisation
= the teacher) and trains only the heads, with the training code's own ``discriminator_loss`` (re-noising of real and
fake to t_gan in [s, s + T / K_min), hinge loss), on:

* ``delta = -1``: real = the consistency target, fake = the student's prediction (what TDD-adv trains on);
* ``delta >= 0``: real = the target, fake = the target + delta x N(0, 1) (a perturbation of known size, in data units
  of the [-1, 1] images): a control that the heads can learn at this lr and budget at all.

A hinge discriminator that cannot separate real from fake sits at d_loss = 2 (any constant logit c in [-1, 1] gives
(1 + c) + (1 - c)); falling below 2 means it separates them. Prints the mean d_loss of the first 10 and last 20 steps.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

ROOT = Path(__file__).resolve().parents[2]


def build(lr: float, out: Path):
    from tdd_lab.train import build_module
    from tdd_lab.validate import preflight

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", return_hydra_config=True,
                      overrides=["experiment=tdd_digits", "adversarial=pcm", f"adversarial.lr={lr}"])
    with open_dict(cfg):
        cfg.paths.output_dir = cfg.hydra.runtime.output_dir = str(out)
        cfg.hydra.job.num = 0
    HydraConfig().set_config(cfg)
    parts = preflight(cfg)
    pl.seed_everything(0)
    return build_module(cfg, parts)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--deltas", type=float, nargs="+", default=[-1.0, 0.3, 1.0])
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        module, dm = build(args.lr, Path(tmp))
    dm.setup("fit")
    adv = module.adversarial
    init = {k: v.clone() for k, v in adv.heads.state_dict().items()}
    for delta in args.deltas:
        adv.heads.load_state_dict(init)  # every arm from the same heads
        opt = adv.make_optimizer()
        batches, losses = iter(dm.train_dataloader()), []
        for _ in range(args.steps):
            batch = next(batches, None)
            if batch is None:
                batches = iter(dm.train_dataloader())
                batch = next(batches)
            with torch.no_grad():
                pred, target, s, cond, _ = module.distillation_terms(batch)
            fake = pred if delta < 0 else target + delta * torch.randn_like(target)
            loss = adv.discriminator_loss(target, fake, s, cond)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        gap = (pred - target).pow(2).mean().sqrt().item()
        what = "student prediction" if delta < 0 else f"target + {delta:g} N(0,1)"
        print(f"fake = {what}: d_loss first 10 {sum(losses[:10]) / 10:.3f}, last 20 {sum(losses[-20:]) / 20:.3f} "
              f"(heads' lr {args.lr:g}, {args.steps} steps; rms(prediction - target) on the last batch {gap:.4f})",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
