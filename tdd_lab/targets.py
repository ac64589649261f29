"""Target networks of the consistency loss: the online student (TDD's default) or an EMA copy."""

from __future__ import annotations

import copy

import torch
from torch import nn

from tdd_lab.utils.validation import check_range


class TargetNetwork(nn.Module):
    """``target(x, t, cond, timestep_cond)`` under no_grad; ``update(student)`` after each optimizer step."""

    def bind(self, student: nn.Module) -> TargetNetwork:
        raise NotImplementedError

    def update(self, student: nn.Module) -> None:
        """Called after every optimizer step."""


class OnlineTarget(TargetNetwork):
    """The student itself, evaluated without gradient (the public TDD code; no EMA)."""

    def bind(self, student):
        object.__setattr__(self, "_student", student)  # a reference, not a submodule (no double checkpoint)
        return self

    def forward(self, *args, **kwargs):
        with torch.no_grad():
            return self._student(*args, **kwargs)


class EMATarget(TargetNetwork):
    """Exponential moving average of the student weights (Song et al. 2023, consistency models)."""

    def __init__(self, decay: float = 0.95):  # mu of theta^- <- mu theta^- + (1 - mu) theta
        super().__init__()
        check_range("target.decay", decay, 0.0, 1.0)
        self.decay = decay

    def bind(self, student):
        self.net = copy.deepcopy(student).requires_grad_(False).eval()
        return self

    def forward(self, *args, **kwargs):
        with torch.no_grad():
            return self.net(*args, **kwargs)

    @torch.no_grad()
    def update(self, student):
        for pe, p in zip(self.net.parameters(), student.parameters()):
            if p.requires_grad:
                pe.lerp_(p.detach(), 1 - self.decay)
