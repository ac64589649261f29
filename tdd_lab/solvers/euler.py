"""Euler teacher step for flow-matching schedules (FLUX, SD3)."""

from __future__ import annotations

import torch

from tdd_lab.schedules import NoiseSchedule
from tdd_lab.solvers.base import TeacherSolver


def euler_flow_step(x: torch.Tensor, velocity: torch.Tensor, sigma: torch.Tensor, sigma_prev: torch.Tensor):
    """x_{sigma'} = x + (sigma' - sigma) v with v = eps - x0: (B, ...) -> (B, ...)."""
    return x + (sigma_prev - sigma) * velocity


class FlowEulerSolver(TeacherSolver):
    """Euler on the flow ODE dx/dsigma = v over the grid on the sigma*T axis."""

    def __init__(self, schedule: NoiseSchedule, num_ddim_timesteps: int = 50):
        if schedule.kind != "flow":
            raise ValueError(f"solver 'euler' needs a flow-matching schedule, got {schedule.kind!r}; use 'ddim'")
        super().__init__(schedule, num_ddim_timesteps)

    def step(self, x_t, t, t_prev, x0_hat, eps_hat):
        _, sigma = self.schedule.alpha_sigma(t, x_t.ndim, x_t.dtype)
        _, sigma_prev = self.schedule.alpha_sigma(t_prev, x_t.ndim, x_t.dtype)
        return euler_flow_step(x_t, eps_hat - x0_hat, sigma, sigma_prev)
