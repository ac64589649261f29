"""Consistency distillation losses: small callables with hyper-parameters in ``__init__``."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from tdd_lab.utils.validation import check_range


class DistillationLoss(ABC):
    """``loss(pred, target)`` -> scalar mean over all elements, computed in float32."""

    @abstractmethod
    def elementwise(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(B, ...) -> (B, ...) loss per element."""

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.elementwise(pred.float(), target.float()).mean()


class L2Loss(DistillationLoss):
    """Mean squared error (LCM)."""

    def elementwise(self, pred, target):
        return (pred - target) ** 2


class PseudoHuberLoss(DistillationLoss):
    """Pseudo-Huber, sqrt((pred - target)^2 + c^2) - c (Song & Dhariwal 2023, iCT sec. 3.3).

    Evaluated as d^2 / (sqrt(d^2 + c^2) + c), algebraically equal but free of the float32
    cancellation that the direct form suffers when |d| << c (c = 1e-3 in the TDD recipe).
    """

    def __init__(self, huber_c: float = 1e-3):  # c: quadratic below ~c, linear above
        check_range("huber_c", huber_c, 0.0, low_inclusive=False)
        self.huber_c = huber_c

    def elementwise(self, pred, target):
        d2 = (pred - target) ** 2
        return d2 / (torch.sqrt(d2 + self.huber_c**2) + self.huber_c)

