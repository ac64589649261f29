"""Base contract of a teacher: a frozen conditional denoiser on a noise schedule."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from tdd_lab.guidance.base import Condition
from tdd_lab.schedules import NoiseSchedule


class Teacher(ABC):
    """``denoise(x_t, t, cond) -> (x0_hat, eps_hat)`` at integer timesteps t (B,) of ``schedule``."""

    schedule: NoiseSchedule

    @abstractmethod
    def null_condition(self, device: torch.device | str = "cpu") -> Condition:
        """The one unconditional condition (batch size 1), used for CFG and prompt dropping alike."""

    @abstractmethod
    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, cond: Condition) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, ...), (B,), cond -> (x0_hat, eps_hat), each (B, ...)."""
