"""Noise schedules match diffusers exactly."""

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

from tdd_lab.schedules import FlowMatchSchedule, VPSchedule, calculate_shift, exponential_time_shift


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(beta_schedule="linear", beta_start=0.0001, beta_end=0.02),
        dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
        dict(beta_schedule="squaredcos_cap_v2"),
        dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, rescale_betas_zero_snr=True),
    ],
)
def test_vp_alphas_cumprod_bitwise_equal_to_ddpm(kwargs):
    ref = DDPMScheduler(num_train_timesteps=1000, **kwargs)
    ours = VPSchedule(num_train_timesteps=1000, **kwargs)
    assert torch.equal(ours.alphas_cumprod, ref.alphas_cumprod)
    assert torch.equal(ours.betas, ref.betas)
    # a^2 + s^2 = 1 for VP
    torch.testing.assert_close(ours.alphas**2 + ours.sigmas**2, torch.ones(1000, dtype=torch.float64))


def test_vp_from_diffusers_config_and_add_noise():
    ref = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    ours = VPSchedule.from_diffusers_config(ref.config)
    x0, eps = torch.randn(5, 4, 8, 8), torch.randn(5, 4, 8, 8)
    t = torch.tensor([0, 10, 500, 998, 999])
    torch.testing.assert_close(ours.add_noise(x0, eps, t), ref.add_noise(x0, eps, t), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_sigmas_match_flowmatch_euler(shift):
    ref = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    ours = FlowMatchSchedule(num_train_timesteps=1000, shift=shift)
    # diffusers stores training sigmas descending (sigma_999 first)
    torch.testing.assert_close(ours.sigmas.flip(0).float(), ref.sigmas.float(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ours.alphas + ours.sigmas, torch.ones(1000, dtype=torch.float64))
    t = torch.tensor([999, 0])
    torch.testing.assert_close(ours.model_time(t).float(), torch.stack([ref.timesteps[0], ref.timesteps[-1]]))


def test_flux_dynamic_shift_matches_diffusers():
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift as flux_calculate_shift

    for seq_len in (256, 1024, 4096):
        assert calculate_shift(seq_len) == pytest.approx(flux_calculate_shift(seq_len))
    mu = calculate_shift(1024)
    ref = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)
    sigmas = np.linspace(1.0, 1 / 8, 8)
    ref.set_timesteps(sigmas=sigmas, mu=mu)
    ours = exponential_time_shift(torch.from_numpy(sigmas), mu)
    torch.testing.assert_close(ours.float(), ref.sigmas[:-1].float(), rtol=1e-6, atol=1e-6)
    sched = FlowMatchSchedule(mu=mu)
    assert sched.sigmas[-1] == pytest.approx(1.0)
    assert sched.sigmas[499] > 0.5  # shifted towards noise


def test_bad_schedule_arguments():
    with pytest.raises(ValueError, match="beta_schedule"):
        VPSchedule(beta_schedule="quadratic")
    with pytest.raises(ValueError, match="shift"):
        FlowMatchSchedule(shift=0.0)
