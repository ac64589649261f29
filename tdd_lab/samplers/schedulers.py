"""The samplers: TDD, LCM, TCD, DDIM and DPM-Solver++, each one diffusers scheduler."""

from __future__ import annotations

from typing import Any

from tdd_lab.samplers.base import Sampler
from tdd_lab.schedulers import TDDScheduler
from tdd_lab.utils.validation import check_choice, check_int, check_range


def _check_eta(eta: float) -> float:
    check_range("sampler.eta", eta, 0.0, 1.0)
    return eta


class TDDSampler(Sampler):
    """TDD sampling (TDD_SPEC section 5): gamma/eta jumps, non-equidistant schedules, early x0 clipping."""

    def __init__(
        self,
        eta: float = 0.2,                        # gamma of TCD; 0 = deterministic DDIM
        timestep_schedule: str = "equidistant",  # or "nonequidistant" (dense at high noise)
        special_jump: bool = False,              # published tables for N = 250, K = 5, 6, 7
        thresholding: bool = False,              # dynamic x0 clipping ...
        t_l: int = -1,                           # ... on steps 0..t_l (-1: none)
        num_ddim_timesteps: int = 50,            # N of training: the grid the timesteps are taken from
    ):
        super().__init__(num_ddim_timesteps)
        self.eta = _check_eta(eta)
        check_choice("sampler.timestep_schedule", timestep_schedule, ("equidistant", "nonequidistant"))
        self.timestep_schedule, self.special_jump = timestep_schedule, special_jump
        self.thresholding, self.t_l = thresholding, t_l

    def make_scheduler(self, schedule_config):
        self.check_schedule(schedule_config)
        return TDDScheduler(**schedule_config, tdd_train_step=self.num_ddim_timesteps,
                            timestep_schedule=self.timestep_schedule, special_jump=self.special_jump,
                            thresholding=self.thresholding, t_l=self.t_l)

    def step_kwargs(self, generator) -> dict[str, Any]:
        return {"eta": self.eta, "generator": generator}


class LCMSampler(Sampler):
    """Multistep consistency sampling (Luo et al. 2023, Alg. 1) with diffusers' ``LCMScheduler``.

    ``timestep_scaling`` must be the LCM strategy's (the boundary scalings the student was trained with);
    the config interpolates it from ``strategy.timestep_scaling``.
    """

    def __init__(self, timestep_scaling: float = 10.0, num_ddim_timesteps: int = 50):
        super().__init__(num_ddim_timesteps)
        check_range("sampler.timestep_scaling", timestep_scaling, 0.0, low_inclusive=False)
        self.timestep_scaling = timestep_scaling

    def make_scheduler(self, schedule_config):
        from diffusers import LCMScheduler

        self.check_schedule(schedule_config)
        return LCMScheduler(**schedule_config, original_inference_steps=self.num_ddim_timesteps,
                            timestep_scaling=self.timestep_scaling, set_alpha_to_one=True, clip_sample=False)


class TCDSampler(Sampler):
    """Strategic stochastic sampling (Zheng et al. 2024) with diffusers' ``TCDScheduler``."""

    def __init__(self, eta: float = 0.3, num_ddim_timesteps: int = 50):  # eta: gamma
        super().__init__(num_ddim_timesteps)
        self.eta = _check_eta(eta)

    def make_scheduler(self, schedule_config):
        from diffusers import TCDScheduler

        self.check_schedule(schedule_config)
        return TCDScheduler(**schedule_config, original_inference_steps=self.num_ddim_timesteps, clip_sample=False)

    def step_kwargs(self, generator):
        return {"eta": self.eta, "generator": generator}


class DDIMSampler(Sampler):
    """DDIM (Song et al. 2021) with trailing timestep spacing, ending at x0."""

    def __init__(self, eta: float = 0.0, timestep_spacing: str = "trailing", num_ddim_timesteps: int = 50):
        super().__init__(num_ddim_timesteps)
        self.eta = _check_eta(eta)
        check_choice("sampler.timestep_spacing", timestep_spacing, ("trailing", "leading", "linspace"))
        self.timestep_spacing = timestep_spacing

    def make_scheduler(self, schedule_config):
        from diffusers import DDIMScheduler

        self.check_schedule(schedule_config)
        return DDIMScheduler(**schedule_config, timestep_spacing=self.timestep_spacing, set_alpha_to_one=True,
                             clip_sample=False)

    def step_kwargs(self, generator):
        return {"eta": self.eta, "generator": generator}


class DPMppSampler(Sampler):
    """DPM-Solver++ multistep (Lu et al. 2022) with trailing spacing and a zero final sigma."""

    def __init__(self, solver_order: int = 2, num_ddim_timesteps: int = 50):
        super().__init__(num_ddim_timesteps)
        check_int("sampler.solver_order", solver_order, 1, 3)
        self.solver_order = solver_order

    def make_scheduler(self, schedule_config):
        from diffusers import DPMSolverMultistepScheduler

        self.check_schedule(schedule_config)
        return DPMSolverMultistepScheduler(**schedule_config, algorithm_type="dpmsolver++",
                                           solver_order=self.solver_order, timestep_spacing="trailing",
                                           final_sigmas_type="zero", lower_order_final=True)


class FlowTDDSampler(Sampler):
    """TDD sampling for flow-matching teachers (FLUX): :class:`~tdd_lab.schedulers.FlowTDDScheduler`.

    Needs a model function returning (x0_hat, eps_hat); the scheduler takes the velocity eps - x0.
    """

    def __init__(self, eta: float = 0.2, timestep_schedule: str = "equidistant", num_ddim_timesteps: int = 50):
        super().__init__(num_ddim_timesteps)
        self.eta = _check_eta(eta)
        check_choice("sampler.timestep_schedule", timestep_schedule, ("equidistant", "nonequidistant"))
        self.timestep_schedule = timestep_schedule

    schedule_kinds = ("flow",)

    def make_scheduler(self, schedule_config):
        from tdd_lab.schedulers import FlowTDDScheduler

        self.check_schedule(schedule_config)
        rule = {k: schedule_config[k] for k in ("base_shift", "max_shift", "base_image_seq_len", "max_image_seq_len")
                if k in schedule_config}  # FluxPipeline recomputes mu at other resolutions from these
        return FlowTDDScheduler(num_train_timesteps=schedule_config["num_train_timesteps"],
                                shift=schedule_config.get("shift", 1.0), mu=schedule_config.get("mu"),
                                use_dynamic_shifting=schedule_config.get("mu") is not None,
                                tdd_train_step=self.num_ddim_timesteps, eta=self.eta,
                                timestep_schedule=self.timestep_schedule, **rule)

    def network_timesteps(self, scheduler):
        return scheduler.grid_timesteps  # ``timesteps`` holds sigma * T (what FluxPipeline feeds the transformer)

    def model_output(self, x0, eps):
        return eps - x0  # velocity

    def step_kwargs(self, generator):
        return {"generator": generator}
