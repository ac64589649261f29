"""PCM: phased consistency targets (Wang et al. 2024, arXiv 2405.18407)."""

from __future__ import annotations

import torch

from tdd_lab.strategies.base import TargetStrategy
from tdd_lab.timesteps import multistep_target_set
from tdd_lab.utils.validation import check_int


class PCMStrategy(TargetStrategy):
    """Deterministic multistep targets: s = the largest phase edge <= t'.

    Edges e_0 = 0 < e_1 < ... < e_{M-1} are the points of the M-step sampling schedule
    S_M taken from the grid (so each phase is exactly one step of M-step sampling).
    """

    def __init__(self, num_phases: int = 4):  # M: number of phases (= sampling steps)
        check_int("num_phases", num_phases, 1)
        self.num_phases = num_phases
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None

    def edges(self, grid: torch.Tensor) -> torch.Tensor:
        """Phase edges (M,) int64 ascending, starting at 0."""
        if self._cache is None or self._cache[0] is not grid:
            if self.num_phases > grid.numel():
                raise ValueError(f"num_phases={self.num_phases} exceeds num_ddim_timesteps={grid.numel()}")
            self._cache = (grid, multistep_target_set(grid, [self.num_phases]))
        return self._cache[1]

    def sample(self, t_prev, grid, generator=None):
        edges = self.edges(grid).to(t_prev.device)
        return edges[torch.searchsorted(edges, t_prev, right=True) - 1]
