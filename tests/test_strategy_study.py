"""The strategy study's arms (experiments/strategy_study) compose, build and train as their methods are designed;
its statistics match hand computations. Guards the study's scripts against config drift."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from tests.conftest import compose_cfg

STUDY = Path(__file__).resolve().parents[1] / "experiments" / "strategy_study"
sys.path.insert(0, str(STUDY))
arms_mod = pytest.importorskip("arms")
run_mod = pytest.importorskip("run")
tables_mod = pytest.importorskip("tables")
extra_mod = pytest.importorskip("extra_eval")

EXPECTED = {  # arm -> (strategy class, guidance class, sampler class, sampler eta)
    "lcm": ("LCMStrategy", "FixedGuidance", "LCMSampler", None),
    "pcm2": ("PCMStrategy", "FixedGuidance", "TDDSampler", 0.0),
    "pcm4": ("PCMStrategy", "FixedGuidance", "TDDSampler", 0.0),
    "pcm8": ("PCMStrategy", "FixedGuidance", "TDDSampler", 0.0),
    "tcd": ("TCDStrategy", "FixedGuidance", "TCDSampler", 0.3),
    "tdd": ("TDDStrategy", "DecoupledGuidance", "TDDSampler", 0.2),
    "tdd_s0": ("TDDStrategy", "DecoupledGuidance", "TDDSampler", 0.0),
    "tdd_fixed": ("TDDStrategy", "FixedGuidance", "TDDSampler", 0.2),
    "tdd_k2": ("TDDStrategy", "DecoupledGuidance", "TDDSampler", 0.2),
    "tdd_empty": ("TDDStrategy", "DecoupledGuidance", "TDDSampler", 0.2),
    "tdd_adv": ("TDDStrategy", "DecoupledGuidance", "TDDSampler", 0.2),
    "tdd_adv_hlr": ("TDDStrategy", "DecoupledGuidance", "TDDSampler", 0.2),
}


@pytest.mark.parametrize("teacher", sorted(arms_mod.TEACHERS))
def test_every_arm_composes_and_builds_as_designed(teacher, tmp_path, cache_dir):
    from tdd_lab.validate import instantiate

    t = arms_mod.TEACHERS[teacher]
    for arm in t.all_arms:
        ov = run_mod.overrides(teacher, arm, 3e-5, 7, tmp_path / arm)
        ov = [o.lstrip("+") for o in ov if not o.startswith("hydra.")]  # the compose API takes experiment=...
        cfg = compose_cfg(ov, tmp_path / arm, cache_dir)
        strategy = instantiate(cfg.strategy, "strategy")
        guidance = instantiate(cfg.guidance, "guidance")
        sampler = instantiate(cfg.sampler, "sampler")
        want = EXPECTED[arm]
        assert (type(strategy).__name__, type(guidance).__name__, type(sampler).__name__) == want[:3], arm
        assert sampler.eta == want[3], arm
        assert cfg.optimizer.lr == 3e-5 and cfg.seed == 7
        if arm.startswith("pcm"):  # one model per step count, evaluated at it
            assert strategy.num_phases == int(arm[3:]) and list(cfg.metrics.steps) == [int(arm[3:])]
        if arm == "tdd_s0":
            assert strategy.s_ratio == 0.0
        if arm == "tdd_k2":
            assert strategy.num_inference_steps_min == 2 and strategy.window == 500
        # the public SDXL defect is a switch of the tdd arm, nothing else
        assert getattr(guidance, "dropped_caption", "null") == ("empty_prompt" if arm == "tdd_empty" else "null"), arm
        # the adversarial term only in the TDD-adv arm, at the public settings
        adv = arm.startswith("tdd_adv")
        assert cfg.adversarial._target_.endswith("PCMDiscriminator" if adv else "NoAdversarial"), arm
        if adv:  # the public schedule; the heads' lr public (1e-5) or the 100x arm
            assert cfg.adversarial.schedule == "alternate" and cfg.adversarial.adv_weight == 0.1
            assert cfg.adversarial.lr == (1e-3 if arm == "tdd_adv_hlr" else 1e-5), arm
        if teacher == "gmm2d":  # stochastic samplers are evaluated at their own eta
            assert cfg.metrics.metrics.deterministic is False


def test_tdd_k2_trains_the_last_jump_of_two_step_sampling():
    """With K_min = 2 and a 500-wide window, t' just above 499 targets s = 0 (the 2-step schedule's last jump);
    the default arm (K 4..8, window 260) never does."""
    import torch

    from tdd_lab.strategies import TDDStrategy

    grid = torch.arange(19, 1000, 20)  # the N = 50 DDIM grid tau_i = 20 i - 1
    t_prev = torch.full((4000,), 519)
    g = torch.Generator().manual_seed(0)
    k2 = TDDStrategy(num_inference_steps_min=2, window=500, s_ratio=0.0).sample(t_prev, grid, g)
    default = TDDStrategy(s_ratio=0.0).sample(t_prev, grid, g)
    assert (k2 == 0).any() and not (default == 0).any()


def test_paired_interval_matches_hand_computation():
    a = {0: 1.0, 1: 2.0, 2: 3.0, 3: 4.0, 9: 100.0}
    b = {0: 1.5, 1: 2.1, 2: 3.7, 3: 3.9}
    p = tables_mod.paired(a, b)  # seeds 0-3 only: d = -0.5, -0.1, -0.7, +0.1
    d = [-0.5, -0.1, -0.7, 0.1]
    mean = sum(d) / 4
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 3)
    half = 3.182446305284263 * sd / 2  # t_{0.975, 3}
    assert p["n"] == 4 and p["wins"] == 3
    assert p["mean"] == pytest.approx(mean) and p["lo"] == pytest.approx(mean - half) and p["hi"] == pytest.approx(mean + half)
    assert tables_mod.paired({0: 1.0}, {0: 2.0}) is None


def test_composed_scale():
    # CFG g on a decoupled student at w composes to the teacher at diffusers scale g (1 + w), i.e. w' = g (1 + w) - 1
    assert extra_mod.composed_w(1.0, 3.5) == 3.5
    assert extra_mod.composed_w(0.5, 3.5) == pytest.approx(1.25)
    assert extra_mod.composed_w(2.0, 3.5) == pytest.approx(8.0)


def test_lr_sweep_extends_beyond_edge_winners_only():
    next_lr = run_mod.next_lr
    assert next_lr(3e-5, [3e-5, 1e-4, 3e-4]) == 1e-5      # lowest lr won: one rung lower
    assert next_lr(3e-4, [3e-5, 1e-4, 3e-4]) == 1e-3      # highest won: one rung higher
    assert next_lr(1e-4, [3e-5, 1e-4, 3e-4]) is None      # interior winner: done
    assert next_lr(3e-5, [1e-5, 3e-5, 1e-4, 3e-4]) is None
    assert next_lr(3e-6, [3e-6, 1e-5, 3e-5]) is None      # the ladder's end
