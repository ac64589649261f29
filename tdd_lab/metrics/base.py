"""Base contract of a metric set."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from tdd_lab.teachers.base import Teacher


class Metrics(ABC):
    """``compute(samples, labels, noise, teacher, w)`` -> {metric name: value} for one sample set."""

    deterministic: bool = False  # True: evaluate with eta = 0 samplers (ODE-error style metrics)

    @abstractmethod
    def compute(
        self, samples: torch.Tensor, labels: torch.Tensor, noise: torch.Tensor, teacher: Teacher, w: float
    ) -> dict[str, float]:
        """Metrics of ``samples`` (n, ...) generated from ``noise`` (n, ...) for class ``labels`` (n,).

        ``w`` is the teacher CFG scale ("w + 1" form) that defines the reference trajectory.
        """

    def describe(self) -> dict:
        return {"class": type(self).__name__, **{k: v for k, v in vars(self).items() if not k.startswith("_")}}
