"""Contract of every ``conf/sampler`` option: reaches x0 at the last step, reproducible (and generator-free at
eta = 0), settings from the trained config, and a diffusers scheduler whose config round-trips through files.

Each option runs on the schedule kinds its ``make_scheduler`` accepts (VP and/or flow matching); a kind it
cannot serve must be refused when the scheduler is made, never half-used."""

import pytest
import torch
from diffusers.configuration_utils import ConfigMixin
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from tdd_lab.guider import ClassifierFreeGuidance
from tdd_lab.samplers import Sampler
from tdd_lab.teachers.gmm import GaussianMixture

from .conftest import SCHEDULES, known_bug, option_params, point_mass_denoiser

STEPS = (1, 2, 4, 8)

# diffusers' TCDScheduler (the TCD authors' sampler, used as designed) ends at timestep 0: it returns
# a_0 x0_hat + s_0 eps_hat (s_0 = 0.029 on scaled_linear, 0.01 on linear betas), not x0_hat. Documented, kept.
TCD_LAST_STEP = {"tcd": "diffusers' TCDScheduler lands on timestep 0 (a_0 x0 + s_0 eps), not x0: by its design"}


def served_kinds(sampler) -> dict:
    """{kind: schedule} of the schedule kinds this sampler makes a scheduler for."""
    out = {}
    for kind, make in SCHEDULES.items():
        schedule = make()
        try:
            sampler.make_scheduler(schedule.diffusers_config())
        except (ValueError, TypeError):  # refused; how: test_a_schedule_kind_it_cannot_serve_is_refused_by_name
            continue
        out[kind] = schedule
    assert out, f"{type(sampler).__name__} serves no schedule kind"
    return out


class MixtureDenoiser:
    """The exact (x0, eps) of gmm2d's 2-D 8-component mixture at integer timesteps of any schedule kind."""

    def __init__(self, schedule):
        self.schedule, self.mixture = schedule, GaussianMixture.ring(8, 4, 1.0, 0.08)

    def __call__(self, x_t, t, cond, timestep_cond=None):
        a, s = self.schedule.alpha_sigma(t, x_t.ndim, torch.float64)
        x0 = self.mixture.denoise(x_t, a, s, cond)
        return x0.to(x_t.dtype), ((x_t.double() - a * x0.double()) / s).to(x_t.dtype)


def run(sampler, denoiser, noise, k, seed, guider=None):
    labels = torch.arange(len(noise)) % 4
    return sampler.sample(denoiser, noise, labels, torch.full_like(labels, -1), k, guider,
                          generator=torch.Generator().manual_seed(seed))

@pytest.mark.parametrize("option", option_params("sampler"))
class TestSamplerContract:
    @pytest.fixture
    def sampler(self, composer, option):
        return composer.build("sampler", option)

    def test_is_a_sampler_with_the_training_grid_size(self, composer, option, sampler):
        assert isinstance(sampler, Sampler)
        n = composer.cfg().solver.num_ddim_timesteps
        assert sampler.num_ddim_timesteps == n  # ${solver.num_ddim_timesteps}
        other = composer.build("sampler", option, "solver.num_ddim_timesteps=250")
        assert other.num_ddim_timesteps == 250 and other.describe()["num_ddim_timesteps"] == 250

    def test_settings_come_from_the_trained_config(self, composer, option):
        """The exported scheduler records the strategy's settings it depends on (LCM: timestep_scaling)."""
        trained = ("strategy=lcm", "strategy.timestep_scaling=7.0", "solver.num_ddim_timesteps=250")
        if "timestep_scaling" not in composer.values("sampler", option, *trained):
            pytest.skip("this sampler reads no strategy setting")
        sampler = composer.build("sampler", option, *trained)
        kind, schedule = next(iter(served_kinds(sampler).items()))
        config = sampler.make_scheduler(schedule.diffusers_config()).config
        assert sampler.timestep_scaling == 7.0 and config["timestep_scaling"] == 7.0
        assert 250 in (config.get("original_inference_steps"), config.get("tdd_train_step")), dict(config)

    def test_reaches_x0_at_the_last_step(self, sampler, request):
        """Point mass x0 = c with its exact (x0, eps): every sampler, at every step count, returns c."""
        known_bug(request, TCD_LAST_STEP)
        c = torch.tensor([0.6, -1.1])
        noise = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
        for kind, schedule in served_kinds(sampler).items():
            den = point_mass_denoiser(c, schedule)
            for k in STEPS:
                out = run(sampler, den, noise, k, seed=1)
                assert out.shape == noise.shape and out.dtype == noise.dtype
                torch.testing.assert_close(out, c.expand_as(out), rtol=0, atol=2e-5,
                                           msg=lambda m, kind=kind, k=k: f"{kind}, {k} steps: {m}")
                guided = run(sampler, den, noise, k, seed=1, guider=ClassifierFreeGuidance(3.5))
                torch.testing.assert_close(guided, c.expand_as(out), rtol=0, atol=2e-5)

    def test_reproducible_and_generator_free_at_eta_zero(self, sampler):
        noise = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
        for kind, schedule in served_kinds(sampler).items():
            den = MixtureDenoiser(schedule)
            a, b = run(sampler, den, noise, 4, seed=1), run(sampler, den, noise, 4, seed=1)
            assert torch.equal(a, b), f"{kind}: same noise and seed must give the same samples"
            if sampler.eta:  # a stochastic sampler draws its re-noising from the generator it is given
                assert not torch.allclose(a, run(sampler, den, noise, 4, seed=2)), kind
            eta = sampler.eta
            det = sampler.deterministic()
            assert det is not sampler and sampler.eta == eta  # a copy: the configured sampler is untouched
            if det.eta is None:
                continue  # no eta to switch off (LCM's multistep sampling always re-noises)
            assert det.eta == 0.0
            x1, x2 = run(det, den, noise, 4, seed=1), run(det, den, noise, 4, seed=2)
            assert torch.equal(x1, x2), f"{kind}: eta = 0 must not depend on the generator"
            flipped = run(det, den, noise.flip(0), 4, seed=1)
            assert not torch.allclose(x1, flipped), "samples must depend on the noise"

    def test_a_schedule_kind_it_cannot_serve_is_refused_by_name(self, sampler, request):
        """Like the solvers: the wrong schedule family is a ValueError that says which sampler needs what."""
        for kind, make in SCHEDULES.items():
            try:
                sampler.make_scheduler(make().diffusers_config())
            except Exception as e:  # noqa: BLE001
                assert isinstance(e, ValueError) and "sampler" in str(e), f"{kind}: {type(e).__name__}: {e}"

    def test_scheduler_is_diffusers_and_its_config_round_trips(self, sampler, tmp_path):
        for kind, schedule in served_kinds(sampler).items():
            scheduler = sampler.make_scheduler(schedule.diffusers_config())
            assert isinstance(scheduler, SchedulerMixin) and isinstance(scheduler, ConfigMixin)
            scheduler.save_pretrained(tmp_path / kind)
            loaded = type(scheduler).from_pretrained(tmp_path / kind)
            public = {k: v for k, v in scheduler.config.items() if not k.startswith("_")}
            assert {k: v for k, v in loaded.config.items() if not k.startswith("_")} == public
            for k in (2, 4):
                scheduler.set_timesteps(k)
                loaded.set_timesteps(k)
                same = torch.equal(torch.as_tensor(scheduler.timesteps), torch.as_tensor(loaded.timesteps))
                assert same, (kind, k)
