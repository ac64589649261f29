"""LCM: single target at the data end with the consistency boundary parameterisation (Luo et al. 2023)."""

from __future__ import annotations

import torch

from tdd_lab.prediction import boundary_scalings
from tdd_lab.strategies.base import TargetStrategy
from tdd_lab.utils.tensors import append_dims
from tdd_lab.utils.validation import check_range


class LCMStrategy(TargetStrategy):
    """s = 0 for every sample; F(x_t, t) = c_skip(t) x_t + c_out(t) x0_hat (c_skip(0) = 1, c_out(0) = 0)."""

    def __init__(
        self,
        sigma_data: float = 0.5,        # sigma_data of the boundary scalings
        timestep_scaling: float = 10.0,  # u = timestep_scaling * t
    ):
        check_range("sigma_data", sigma_data, 0.0, low_inclusive=False)
        check_range("timestep_scaling", timestep_scaling, 0.0, low_inclusive=False)
        self.sigma_data, self.timestep_scaling = sigma_data, timestep_scaling

    def sample(self, t_prev, grid, generator=None):
        return torch.zeros_like(t_prev)

    def consistency(self, x_t, t, s, x0_hat, eps_hat, schedule):
        c_skip, c_out = boundary_scalings(t, self.sigma_data, self.timestep_scaling)
        c_skip = append_dims(c_skip, x_t.ndim).to(x_t.dtype)
        c_out = append_dims(c_out, x_t.ndim).to(x_t.dtype)
        return c_skip * x_t + c_out * x0_hat
