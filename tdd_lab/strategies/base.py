"""Base contract of a target-timestep strategy (TDD_SPEC section 2)."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from tdd_lab.prediction import consistency_function
from tdd_lab.schedules import NoiseSchedule


class TargetStrategy(ABC):
    """Chooses the consistency target s for each sample and maps predictions to it.

    ``sample`` draws s (B,) from t' (B,) given the teacher grid tau (N,); ``consistency``
    is the function F(x_t, t -> s) applied to a prediction (x0_hat, eps_hat) at (x_t, t).
    The default F is the semi-linear projection a_s x0_hat + s_s eps_hat.
    """

    @abstractmethod
    def sample(
        self, t_prev: torch.Tensor, grid: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Targets s (B,) int64 with 0 <= s <= t' for previous grid points t' (B,) int64."""

    def consistency(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        s: torch.Tensor,
        x0_hat: torch.Tensor,
        eps_hat: torch.Tensor,
        schedule: NoiseSchedule,
    ) -> torch.Tensor:
        """F(x_t, t -> s): (B, ...) -> (B, ...)."""
        a_s, s_s = schedule.alpha_sigma(s, x0_hat.ndim, x0_hat.dtype)
        return consistency_function(x0_hat, eps_hat, a_s, s_s)
