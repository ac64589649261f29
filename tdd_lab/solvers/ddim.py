"""DDIM (eta = 0) teacher step for VP schedules (Song et al. 2021, eq. 12)."""

from __future__ import annotations

import torch

from tdd_lab.prediction import consistency_function
from tdd_lab.schedules import NoiseSchedule
from tdd_lab.solvers.base import TeacherSolver


def ddim_step(x0_hat: torch.Tensor, eps_hat: torch.Tensor, a_prev: torch.Tensor, s_prev: torch.Tensor) -> torch.Tensor:
    """x_{t'} = a_{t'} x0_hat + s_{t'} eps_hat: (B, ...) -> (B, ...)."""
    return consistency_function(x0_hat, eps_hat, a_prev, s_prev)


class DDIMSolver(TeacherSolver):
    """Deterministic DDIM on the grid tau (the LCM/TDD "DDIM solver")."""

    def __init__(self, schedule: NoiseSchedule, num_ddim_timesteps: int = 50):
        if schedule.kind != "vp":
            raise ValueError(f"solver 'ddim' needs a VP schedule, got a {schedule.kind!r} schedule; use 'euler'")
        super().__init__(schedule, num_ddim_timesteps)

    def step(self, x_t, t, t_prev, x0_hat, eps_hat):
        a_prev, s_prev = self.schedule.alpha_sigma(t_prev, x0_hat.ndim, x0_hat.dtype)
        return ddim_step(x0_hat, eps_hat, a_prev, s_prev)
