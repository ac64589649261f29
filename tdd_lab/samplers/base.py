"""Base contract of a sampler (k-diffusion style: one signature for every sampler)."""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch
from tqdm.auto import tqdm

from tdd_lab.guidance.base import concat_conditions, expand_condition

# eps_fn(x_t (B, ...), t (B,) int64, cond, timestep_cond) -> epsilon (B, ...), or the pair (x0_hat, eps_hat).
# VP samplers need epsilon only; flow samplers need the pair (x0 is not recoverable from eps at sigma = 1).
EpsFn = Callable[[torch.Tensor, torch.Tensor, Any, "torch.Tensor | None"], "torch.Tensor | tuple"]


class Sampler(ABC):
    """Runs a diffusers scheduler over K steps with an epsilon-predicting model and optional CFG."""

    eta: float | None = None  # stochasticity, where the scheduler has one

    @abstractmethod
    def make_scheduler(self, schedule_config: dict[str, Any], num_ddim_timesteps: int):
        """The diffusers scheduler for a teacher schedule (``VPSchedule.diffusers_config()``) and grid size N."""

    def model_output(self, x0: torch.Tensor | None, eps: torch.Tensor) -> torch.Tensor:
        """What the scheduler's ``step`` takes, from the (guided) prediction: epsilon for the VP samplers."""
        return eps

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
        eps_fn: EpsFn,
        noise: torch.Tensor,                     # (B, ...) initial noise
        cond: Any,                               # (B, ...) conditions
        null: Any,                               # (1, ...) the null condition
        num_steps: int,                          # K
        schedule_config: dict[str, Any],         # teacher schedule as diffusers config keys
        num_ddim_timesteps: int,                 # N of training
        guidance_scale: float = 1.0,             # CFG in the standard form eps_u + g (eps_c - eps_u); 1 = off
        timestep_cond: torch.Tensor | None = None,  # (B, D) student w-embedding
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """Generate x0 (B, ...) from ``noise``."""
        scheduler = self.make_scheduler(schedule_config, num_ddim_timesteps)
        scheduler.set_timesteps(num_steps)
        b = noise.shape[0]
        uncond = expand_condition(null, b)
        x = noise * scheduler.init_noise_sigma
        kwargs = self.step_kwargs(generator)
        # integer training timesteps the network is called at (flow schedulers keep sigma*T in `timesteps`)
        grid_ts = getattr(scheduler, "grid_timesteps", scheduler.timesteps)
        for t, t_int in tqdm(list(zip(scheduler.timesteps, grid_ts)), disable=not progress,
                             desc=f"sampling {num_steps} steps", leave=False):
            x_in = scheduler.scale_model_input(x, t)
            tb = torch.full((b,), int(t_int), device=x.device, dtype=torch.long)
            if guidance_scale == 1.0:
                x0, eps = _pair(eps_fn(x_in, tb, cond, timestep_cond))
            else:  # one batched 2B forward for cond and uncond
                tc = None if timestep_cond is None else torch.cat([timestep_cond, timestep_cond])
                x0, eps = _pair(eps_fn(torch.cat([x_in, x_in]), torch.cat([tb, tb]), concat_conditions(cond, uncond), tc))
                guide = lambda out: None if out is None else out[b:] + guidance_scale * (out[:b] - out[b:])
                x0, eps = guide(x0), guide(eps)
            x = scheduler.step(self.model_output(x0, eps), t, x, **kwargs).prev_sample
        return x

    def describe(self) -> dict[str, Any]:
        """The sampler's settings, for cache keys and logs."""
        return {"class": type(self).__name__, **{k: v for k, v in vars(self).items() if not k.startswith("_")}}


def _pair(out) -> tuple[torch.Tensor | None, torch.Tensor]:
    """A model function's output as (x0_hat or None, eps_hat)."""
    return (out[0], out[1]) if isinstance(out, tuple) else (None, out)
