"""TDDScheduler against diffusers' DDIM and TCD schedulers, and inside a stock SDXL pipeline."""

import functools
import json

import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverSinglestepScheduler, EulerDiscreteScheduler, TCDScheduler

from tdd_lab.schedulers import TDDScheduler
from tdd_lab.timesteps import SPECIAL_JUMP_TABLES

SD_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def run(scheduler, outputs, x, eta=None, seed=0):
    """Feed fixed model outputs through the scheduler; return the sample after every step."""
    gen = torch.Generator().manual_seed(seed)
    kwargs = {} if eta is None else {"eta": eta, "generator": gen}
    samples = []
    for t, out in zip(scheduler.timesteps, outputs):
        x = scheduler.step(out, t, x, **kwargs).prev_sample
        samples.append(x)
    return samples


@pytest.mark.parametrize("k", [1, 2, 4, 5, 8])
@pytest.mark.parametrize("ptype", ["epsilon", "v_prediction", "sample"])
def test_eta_zero_equals_diffusers_ddim(k, ptype):
    """N = T: the TDD grid is DDIM's trailing schedule and the last step returns x0 (alpha_final = 1)."""
    tdd = TDDScheduler(**SD_BETAS, prediction_type=ptype, tdd_train_step=1000)
    ddim = DDIMScheduler(**SD_BETAS, prediction_type=ptype, timestep_spacing="trailing", set_alpha_to_one=True,
                         clip_sample=False)
    tdd.set_timesteps(k)
    ddim.set_timesteps(k)
    assert tdd.timesteps.tolist() == ddim.timesteps.tolist()
    g = torch.Generator().manual_seed(k)
    outs, x = [torch.randn(2, 4, 8, 8, generator=g) for _ in range(k)], torch.randn(2, 4, 8, 8, generator=g)
    ours, ref = run(tdd, outs, x, eta=0.0), run(ddim, outs, x, eta=0.0)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_eta_zero_is_ddim_on_the_n250_schedule():
    tdd = TDDScheduler(**SD_BETAS, tdd_train_step=250)
    tdd.set_timesteps(4)
    assert tdd.timesteps.tolist() == [999, 751, 499, 251]
    abar = tdd.alphas_cumprod
    g = torch.Generator().manual_seed(0)
    outs, x = [torch.randn(1, 4, 8, 8, generator=g) for _ in range(4)], torch.randn(1, 4, 8, 8, generator=g)
    samples = run(tdd, outs, x, eta=0.0)
    ref = x
    for i, t in enumerate([999, 751, 499, 251]):
        x0 = (ref - (1 - abar[t]).sqrt() * outs[i]) / abar[t].sqrt()
        ref = x0 if i == 3 else abar[[751, 499, 251][i]].sqrt() * x0 + (1 - abar[[751, 499, 251][i]]).sqrt() * outs[i]
        torch.testing.assert_close(samples[i], ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("eta", [0.0, 0.2, 0.3, 0.7, 1.0])
@pytest.mark.parametrize("k", [2, 4, 6, 8])
@pytest.mark.parametrize("n", [50, 250])
def test_agrees_with_tcd_except_last_step(eta, k, n):
    tdd = TDDScheduler(**SD_BETAS, tdd_train_step=n)
    tcd = TCDScheduler(**SD_BETAS, original_inference_steps=n)
    tdd.set_timesteps(k)
    tcd.set_timesteps(k)
    assert tdd.timesteps.tolist() == tcd.timesteps.tolist()
    g = torch.Generator().manual_seed(k)
    outs, x = [torch.randn(2, 4, 8, 8, generator=g) for _ in range(k)], torch.randn(2, 4, 8, 8, generator=g)
    ours, ref = run(tdd, outs, x, eta=eta, seed=1), run(tcd, outs, x, eta=eta, seed=1)
    for a, b in zip(ours[:-1], ref[:-1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # last step: TDD returns x0_hat exactly; TCD stops at alpha_0 x0 + sigma_0 eps
    x_last, t_last = (ours[-2] if k > 1 else x), int(tdd.timesteps[-1])
    abar = tdd.alphas_cumprod[t_last]
    x0 = (x_last - (1 - abar).sqrt() * outs[-1]) / abar.sqrt()
    torch.testing.assert_close(ours[-1], x0, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ref[-1], x0, rtol=1e-5, atol=1e-5)


def test_stochastic_sampling_is_seeded():
    tdd = TDDScheduler(**SD_BETAS)
    tdd.set_timesteps(4)
    g = torch.Generator().manual_seed(0)
    outs, x = [torch.randn(1, 4, 8, 8, generator=g) for _ in range(4)], torch.randn(1, 4, 8, 8, generator=g)
    draws = []
    for seed in (5, 5, 6):
        tdd.set_timesteps(4)  # a pipeline call resets the step index the same way
        draws.append(run(tdd, outs, x, 0.3, seed=seed))
    a, b, c = draws
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])


@pytest.mark.parametrize("t_l", [-1, 0, 1, 2])
def test_clipping_applies_to_first_t_l_plus_one_steps(t_l):
    tdd = TDDScheduler(**SD_BETAS, thresholding=True, t_l=t_l, dynamic_thresholding_ratio=0.995, sample_max_value=1.0)
    tdd.set_timesteps(4)
    g = torch.Generator().manual_seed(0)
    x = 3 * torch.randn(1, 4, 8, 8, generator=g)
    clipped_steps = []
    for t in tdd.timesteps:
        out = 5 * torch.randn(1, 4, 8, 8, generator=g)  # x0_hat far outside [-1, 1]
        res = tdd.step(out, t, x, eta=0.0)
        clipped_steps.append(bool(res.denoised.abs().max() <= 1.0 + 1e-6))
        x = res.prev_sample
    expected = [i <= t_l for i in range(4)]  # the first t_l + 1 steps; t_l = -1 clips none (public scheduler)
    assert clipped_steps == expected


def test_special_jump_and_nonequidistant_rule():
    for (n, k), table in SPECIAL_JUMP_TABLES.items():
        s = TDDScheduler(tdd_train_step=n, special_jump=True)
        s.set_timesteps(k)
        assert s.timesteps.tolist() == table
        r = TDDScheduler(tdd_train_step=n, timestep_schedule="nonequidistant")
        r.set_timesteps(k)
        assert r.timesteps.tolist() == table
    s = TDDScheduler(tdd_train_step=250, special_jump=True)
    s.set_timesteps(4)  # no table: equidistant, as the public scheduler
    assert s.timesteps.tolist() == [999, 751, 499, 251]
    r = TDDScheduler(tdd_train_step=50, timestep_schedule="nonequidistant")
    r.set_timesteps(3)
    assert r.timesteps.tolist() == [999, 759, 499]


def test_custom_timesteps():
    s = TDDScheduler()
    s.set_timesteps(timesteps=[999, 600, 300])
    assert s.num_inference_steps == 3 and s.timesteps.tolist() == [999, 600, 300]
    with pytest.raises(ValueError, match="descending"):
        s.set_timesteps(timesteps=[300, 600])
    with pytest.raises(ValueError, match="exactly one"):
        s.set_timesteps()


def test_save_load_round_trip(tmp_path):
    s = TDDScheduler(**SD_BETAS, tdd_train_step=250, special_jump=True, t_l=1, thresholding=True,
                     timestep_schedule="nonequidistant", prediction_type="v_prediction")
    s.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "scheduler_config.json").read_text())
    assert cfg["_class_name"] == "TDDScheduler" and cfg["tdd_train_step"] == 250 and cfg["t_l"] == 1
    loaded = TDDScheduler.from_pretrained(tmp_path)
    strip = lambda c: {k: v for k, v in c.items() if not k.startswith("_")}  # noqa: E731
    assert strip(loaded.config) == strip(s.config)
    for k in (5, 6):
        s.set_timesteps(k)
        loaded.set_timesteps(k)
        assert torch.equal(s.timesteps, loaded.timesteps)


def test_from_config_of_sd_and_sdxl_schedulers():
    sdxl = EulerDiscreteScheduler(**SD_BETAS, timestep_spacing="leading", steps_offset=1)
    s = TDDScheduler.from_config(sdxl.config, tdd_train_step=250)
    assert s.config.beta_schedule == "scaled_linear" and s.config.tdd_train_step == 250
    assert torch.equal(s.alphas_cumprod, sdxl.alphas_cumprod)
    sd15_v = DDIMScheduler(**SD_BETAS, prediction_type="v_prediction")
    assert TDDScheduler.from_config(sd15_v.config).config.prediction_type == "v_prediction"


def test_loads_public_tdd_scheduler_config(tmp_path):
    """A saved config of the public scheduler (DPMSolverSinglestep keys + tdd_train_step/special_jump/t_l)."""
    public = DPMSolverSinglestepScheduler(**SD_BETAS, solver_order=1).config
    cfg = dict(public, _class_name="TDDScheduler", tdd_train_step=250, special_jump=True, t_l=-1,
               thresholding=False, use_flow_sigmas=False)
    (tmp_path / "scheduler_config.json").write_text(json.dumps(cfg))
    s = TDDScheduler.from_pretrained(tmp_path)
    assert s.config.tdd_train_step == 250 and s.config.special_jump
    s.set_timesteps(6)
    assert s.timesteps.tolist() == SPECIAL_JUMP_TABLES[(250, 6)]
    x = torch.randn(1, 4, 8, 8)
    for t in s.timesteps:
        x = s.step(torch.randn_like(x), t, x, eta=0.2, generator=torch.Generator().manual_seed(0)).prev_sample
    assert torch.isfinite(x).all()


def test_bad_input():
    with pytest.raises(ValueError, match=r"eta must be in \[0, 1\]"):
        s = TDDScheduler()
        s.set_timesteps(4)
        s.step(torch.zeros(1, 4, 8, 8), 999, torch.zeros(1, 4, 8, 8), eta=1.5)
    with pytest.raises(ValueError, match="num_ddim_timesteps must divide"):
        TDDScheduler(tdd_train_step=300)
    with pytest.raises(ValueError, match="timestep_schedule"):
        TDDScheduler(timestep_schedule="karras")
    with pytest.raises(ValueError, match="set_timesteps"):
        TDDScheduler().step(torch.zeros(1), 999, torch.zeros(1))


def test_runs_inside_tiny_sdxl_pipeline(tmp_path):
    """4 steps in a stock StableDiffusionXLPipeline loaded from disk; the pipeline's eta reaches `step`."""
    from diffusers import StableDiffusionXLPipeline

    from tdd_lab.testing.tiny import save_tiny_sdxl

    save_tiny_sdxl(tmp_path / "sdxl")
    pipe = StableDiffusionXLPipeline.from_pretrained(tmp_path / "sdxl")
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = TDDScheduler.from_config(pipe.scheduler.config, tdd_train_step=250)
    seen = []
    step = pipe.scheduler.step

    @functools.wraps(step)  # keeps step's signature, which the pipeline inspects for `eta`
    def spy(*args, **kwargs):
        seen.append((int(args[1]), kwargs.get("eta")))
        return step(*args, **kwargs)

    pipe.scheduler.step = spy

    def generate(eta, seed=0):
        return pipe("a photo of a cat", num_inference_steps=4, guidance_scale=1.7, eta=eta, height=32, width=32,
                    generator=torch.Generator().manual_seed(seed), output_type="np").images

    img = generate(0.2)
    assert seen == [(999, 0.2), (751, 0.2), (499, 0.2), (251, 0.2)]
    assert img.shape == (1, 32, 32, 3) and torch.isfinite(torch.from_numpy(img)).all()
    assert (generate(0.2) == img).all()  # seeded
    assert not (generate(0.0) == img).all()  # eta changes the trajectory
