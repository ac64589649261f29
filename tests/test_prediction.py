"""Prediction-type conversions, the consistency function, LCM scalings and thresholding."""

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from tdd_lab.prediction import (
    boundary_scalings,
    consistency_function,
    dynamic_threshold,
    from_x0_eps,
    to_x0_eps,
)
from tdd_lab.schedules import FlowMatchSchedule, VPSchedule


@pytest.mark.parametrize("schedule", [VPSchedule(), FlowMatchSchedule(shift=3.0)], ids=["vp", "flow"])
@pytest.mark.parametrize("ptype", ["epsilon", "v_prediction", "sample", "flow"])
def test_round_trip_recovers_x0_and_eps(schedule, ptype):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64), torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([1, 50, 250, 500, 750, 998])
    a, s = schedule.alpha_sigma(t, 4, torch.float64)
    x_t = a * x0 + s * eps
    out = from_x0_eps(x0, eps, a, s, ptype)
    x0_hat, eps_hat = to_x0_eps(out, x_t, a, s, ptype)
    torch.testing.assert_close(x0_hat, x0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(eps_hat, eps, rtol=1e-9, atol=1e-9)


def test_flow_velocity_is_eps_minus_x0():
    x0, eps = torch.randn(2, 5), torch.randn(2, 5)
    a, s = torch.tensor(0.3), torch.tensor(0.7)
    torch.testing.assert_close(from_x0_eps(x0, eps, a, s, "flow"), eps - x0)


@pytest.mark.parametrize("ptype", ["epsilon", "v_prediction", "sample"])
def test_x0_matches_diffusers_ddim(ptype):
    ddim = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                         prediction_type=ptype, clip_sample=False)
    ddim.set_timesteps(10)
    sched = VPSchedule()
    x_t, out = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t = int(ddim.timesteps[3])
    ref = ddim.step(out, t, x_t, eta=0.0).pred_original_sample
    a, s = sched.alpha_sigma(torch.tensor([t, t]), 4)
    x0, _ = to_x0_eps(out, x_t, a, s, ptype)
    torch.testing.assert_close(x0, ref, rtol=1e-5, atol=1e-5)


def test_consistency_function_is_identity_at_s_equals_t_and_x0_at_clean_end():
    x0, eps = torch.randn(3, 2), torch.randn(3, 2)
    a, s = torch.tensor([[0.6], [0.8], [0.1]]), torch.tensor([[0.8], [0.6], [0.995]])
    x_t = a * x0 + s * eps
    torch.testing.assert_close(consistency_function(x0, eps, a, s), x_t)
    torch.testing.assert_close(consistency_function(x0, eps, torch.ones(3, 1), torch.zeros(3, 1)), x0)


def test_lcm_boundary_scalings():
    t = torch.tensor([0, 1, 10, 999])
    c_skip, c_out = boundary_scalings(t)
    assert c_skip[0] == 1.0 and c_out[0] == 0.0
    u = 10.0 * 999
    assert c_skip[3].item() == pytest.approx(0.25 / (u**2 + 0.25))
    assert c_out[3].item() == pytest.approx(u / (u**2 + 0.25) ** 0.5)
    assert (c_skip.diff() < 0).all() and (c_out.diff() > 0).all()


def test_dynamic_threshold_matches_diffusers():
    ref = DDPMScheduler(thresholding=True, dynamic_thresholding_ratio=0.995, sample_max_value=1.5)
    x = 3 * torch.randn(4, 3, 8, 8)
    torch.testing.assert_close(dynamic_threshold(x, 0.995, 1.5), ref._threshold_sample(x))
    small = 0.5 * torch.rand(2, 3, 4, 4)  # quantile < 1 -> threshold 1 -> unchanged
    torch.testing.assert_close(dynamic_threshold(small), small)


def test_unknown_prediction_type():
    with pytest.raises(ValueError, match="prediction_type"):
        to_x0_eps(torch.zeros(1), torch.zeros(1), torch.ones(1), torch.ones(1), "score")
