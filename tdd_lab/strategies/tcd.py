"""TCD / CTM-style multi-target selection (Zheng et al. 2024, arXiv 2402.19159; Kim et al. 2023)."""

from __future__ import annotations

import torch

from tdd_lab.strategies.base import TargetStrategy
from tdd_lab.utils.tensors import uniform
from tdd_lab.utils.validation import check_range


class TCDStrategy(TargetStrategy):
    """Rule: s = floor((1 - g) t'), g ~ U[gamma_min, gamma_max) per sample.

    With the defaults (0, 1) s is (near-)uniform on [0, t'], the CTM/TCD "anywhere earlier on
    the trajectory" target; a narrower range mimics training for a fixed inference gamma.
    """

    def __init__(
        self,
        gamma_min: float = 0.0,  # smallest relative jump below t'
        gamma_max: float = 1.0,  # largest relative jump below t' (1: down to s = 0)
    ):
        check_range("gamma_min", gamma_min, 0.0, 1.0)
        check_range("gamma_max", gamma_max, 0.0, 1.0)
        if gamma_min > gamma_max:
            raise ValueError(f"gamma_min must be <= gamma_max, got {gamma_min} > {gamma_max}")
        self.gamma_min, self.gamma_max = gamma_min, gamma_max

    def sample(self, t_prev, grid, generator=None):
        g = self.gamma_min + (self.gamma_max - self.gamma_min) * uniform(t_prev.shape, generator, t_prev.device)
        return torch.floor((1 - g) * t_prev).long()
