"""Base contract of a sampler (k-diffusion style: one signature for every sampler).

``sampler.sample(denoiser, noise, cond, uncond, num_steps, guider)``: the denoiser gives (x0, eps) at
integer training timesteps, the guider combines its conditional and unconditional outputs, and the
sampler runs its diffusers scheduler over ``num_steps`` steps. A sampler holds its own settings,
including the grid size N the student was distilled on (``num_ddim_timesteps``), so the scheduler it
exports for the stock pipelines is the one the metrics were measured with.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from typing import Any

import torch
from tqdm.auto import tqdm

from tdd_lab.conditioner import Condition
from tdd_lab.guider import Guider, NoGuidance
from tdd_lab.utils.validation import check_int


class Sampler(ABC):
    """Runs a diffusers scheduler over K steps with a :class:`~tdd_lab.denoiser.Denoiser` and a guider."""

    eta: float | None = None  # stochasticity, where the scheduler has one
    schedule_kinds: tuple[str, ...] = ("vp",)  # the noise-schedule families its scheduler handles

    def __init__(self, num_ddim_timesteps: int = 50):  # N of training (the distillation grid)
        check_int("sampler.num_ddim_timesteps", num_ddim_timesteps, 1)
        self.num_ddim_timesteps = num_ddim_timesteps

    def check_schedule(self, schedule_config: dict[str, Any]) -> None:
        """Raise ``ValueError`` unless this sampler handles the schedule's family (checked before training)."""
        kind = schedule_config.get("kind", "vp")
        if kind not in self.schedule_kinds:
            other = {"vp": "tdd", "flow": "flow_tdd"}.get(kind, "another sampler")
            raise ValueError(f"the {type(self).__name__} samples {'/'.join(self.schedule_kinds)} schedules, but the teacher "
                             f"has a {kind!r} schedule; use sampler={other}")

    @abstractmethod
    def make_scheduler(self, schedule_config: dict[str, Any]):
        """The diffusers scheduler for a schedule's ``diffusers_config()`` (with the network's prediction type)."""

    def model_output(self, x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """What the scheduler's ``step`` takes, from the (guided) prediction: epsilon for the VP samplers."""
        return eps

    def network_timesteps(self, scheduler) -> torch.Tensor:
        """The integer training timesteps the network is called at, per scheduler step (K,)."""
        return scheduler.timesteps

    def step_kwargs(self, generator: torch.Generator | None) -> dict[str, Any]:
        return {"generator": generator}

    def deterministic(self) -> Sampler:
        """A copy with eta = 0 where the sampler has an eta (used for ODE-error metrics)."""
        other = copy.copy(self)
        if other.eta is not None:
            other.eta = 0.0
        return other

    @torch.no_grad()
    def sample(
        self,
        denoiser,                                # (x_t, t, cond, timestep_cond) -> (x0_hat, eps_hat)
        noise: torch.Tensor,                     # (B, ...) initial noise
        cond: Condition,                         # (B, ...) conditions
        uncond: Condition,                       # (B, ...) null conditions (used by CFG guiders)
        num_steps: int,                          # K
        guider: Guider | None = None,            # None: the conditional model alone
        timestep_cond: torch.Tensor | None = None,  # (B, D) student w-embedding
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """Generate x0 (B, ...) from ``noise``."""
        guider = guider or NoGuidance()
        scheduler = self.make_scheduler(denoiser.schedule.diffusers_config())
        scheduler.set_timesteps(num_steps)
        b = noise.shape[0]
        x = noise * scheduler.init_noise_sigma
        kwargs = self.step_kwargs(generator)
        # integer training timesteps the network is called at (flow schedulers keep sigma*T in `timesteps`)
        grid_ts = self.network_timesteps(scheduler)
        # networks whose pipeline steps the scheduler on another latent layout (FLUX: packed tokens) say so; stepping
        # in that layout draws the re-noising noise exactly as the stock pipeline does (the step is elementwise)
        to_layout = getattr(getattr(denoiser, "net", None), "to_scheduler_layout", None)
        for t, t_int in tqdm(list(zip(scheduler.timesteps, grid_ts)), disable=not progress,
                             desc=f"sampling {num_steps} steps", leave=False):
            x_in = scheduler.scale_model_input(x, t)
            tb = torch.full((b,), int(t_int), device=x.device, dtype=torch.long)
            x0, eps = guider(denoiser, x_in, tb, cond, uncond, timestep_cond)
            out = self.model_output(x0, eps)
            if to_layout is None:
                x = scheduler.step(out, t, x, **kwargs).prev_sample
            else:
                h, w = x.shape[-2:]
                x = denoiser.net.from_scheduler_layout(scheduler.step(to_layout(out), t, to_layout(x), **kwargs)
                                                       .prev_sample, h, w)
        return x

    def describe(self) -> dict[str, Any]:
        """The sampler's settings, for cache keys, logs and ``student.json``."""
        return {"class": type(self).__name__, **{k: v for k, v in vars(self).items() if not k.startswith("_")}}
