"""Base contract of a teacher: a frozen conditional denoiser on a noise schedule."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tdd_lab.guidance.base import Condition
from tdd_lab.schedules import NoiseSchedule


class Teacher(ABC):
    """``denoise(x_t, t, cond) -> (x0_hat, eps_hat)`` at integer timesteps t (B,) of ``schedule``.

    Besides the denoiser, a teacher knows how to turn a data batch into (x0, condition), gives
    the student its initial network (``net(x_t, model_time, cond, timestep_cond) -> raw output``
    of ``prediction_type``), and saves/loads a student for ``tdd_lab.sample``.
    """

    schedule: NoiseSchedule
    prediction_type: str = "epsilon"
    sample_shape: tuple[int, ...]
    num_classes: int

    @abstractmethod
    def null_condition(self, device: torch.device | str = "cpu") -> Condition:
        """The one unconditional condition (batch size 1), used for CFG and prompt dropping alike."""

    @abstractmethod
    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, cond: Condition) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, ...), (B,), cond -> (x0_hat, eps_hat), each (B, ...)."""

    @abstractmethod
    def conditions(self, labels: torch.Tensor) -> Condition:
        """Conditions for class labels (B,); label -1 is the null condition."""

    def prepare_batch(self, batch: dict[str, Any]) -> tuple[torch.Tensor, Condition]:
        """A data batch ``{"x0", "label"}`` -> (x0 (B, ...), condition)."""
        return batch["x0"], self.conditions(batch["label"])

    @abstractmethod
    def student_network(self) -> nn.Module:
        """The student's initial network (a trainable copy of the teacher's, or its closest analogue)."""

    @abstractmethod
    def save_student(self, net: nn.Module, directory: Path) -> None:
        """Write a student network (LoRA merged) and what sampling needs into ``directory``."""

    @abstractmethod
    def save_samples(self, samples: torch.Tensor, labels: torch.Tensor, path: Path) -> None:
        """Write a picture of ``samples`` (image grid, scatter plot, ...) to ``path`` (PNG)."""

    def to(self, device: torch.device | str) -> Teacher:
        return self
