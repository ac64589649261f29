"""Base contract of a teacher solver: the ODE grid and one step along it."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

from tdd_lab.schedules import NoiseSchedule
from tdd_lab.timesteps import ddim_grid


class TeacherSolver(nn.Module, ABC):
    """Owns the teacher grid tau (N points) and moves a sample one grid step t -> t' = max(t - k, 0).

    The grids are (non-persistent) buffers and the schedule a submodule: the solver lives inside the
    LightningModule, so its ``.to(device)`` places them once.
    """

    grid: torch.Tensor       # (N,) tau_1..tau_N
    grid_prev: torch.Tensor  # (N,) t' = max(tau - k, 0) for each tau

    def __init__(self, schedule: NoiseSchedule, num_ddim_timesteps: int = 50):
        super().__init__()
        self.schedule = schedule
        self.num_ddim_timesteps = num_ddim_timesteps
        grid = ddim_grid(schedule.num_train_timesteps, num_ddim_timesteps)
        self.step_ratio = schedule.num_train_timesteps // num_ddim_timesteps  # k
        self.register_buffer("grid", grid, persistent=False)
        self.register_buffer("grid_prev", torch.clamp(grid - self.step_ratio, min=0), persistent=False)

    def sample_start(
        self, batch_size: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw n ~ U{0..N-1} per sample; return (t, t') = (tau_n, max(tau_n - k, 0)), each (B,) int64."""
        gen_device = generator.device if generator is not None else device
        n = torch.randint(0, self.num_ddim_timesteps, (batch_size,), generator=generator, device=gen_device)
        n = n.to(self.grid.device)
        return self.grid[n].to(device), self.grid_prev[n].to(device)

    @abstractmethod
    def step(
        self, x_t: torch.Tensor, t: torch.Tensor, t_prev: torch.Tensor, x0_hat: torch.Tensor, eps_hat: torch.Tensor
    ) -> torch.Tensor:
        """One teacher step from (x_t, t) with prediction (x0_hat, eps_hat) to t_prev: (B, ...) -> (B, ...)."""
