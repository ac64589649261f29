"""TDD target selection (Wang et al. 2024, arXiv 2409.01347, sec. 3.2; TDD_SPEC section 2)."""

from __future__ import annotations

import torch

from tdd_lab.strategies.base import TargetStrategy
from tdd_lab.timesteps import multistep_target_set
from tdd_lab.utils.tensors import uniform
from tdd_lab.utils.validation import check_choice, check_int, check_range


class TDDStrategy(TargetStrategy):
    """Targets from the union M of the K-step schedules, K in [K_min, K_max].

    Per sample: m = max{mu in M : mu <= t'}; mu uniform on {mu in M : m - window <= mu <= m}
    (``mode="uniform"``) or mu = m (``mode="nearest"``); then s = floor((1 - u * s_ratio) mu),
    u ~ U[0, 1). Vectorised (searchsorted), no per-sample Python.
    """

    def __init__(
        self,
        num_inference_steps_min: int = 4,  # K_min: fewest sampling steps the student is prepared for
        num_inference_steps_max: int = 8,  # K_max: most sampling steps
        window: int = 260,                 # W: width of the candidate window below m (public code: 260)
        mode: str = "uniform",             # "uniform" in the window, or "nearest" (mu = m)
        s_ratio: float = 0.3,              # eta of the stochastic offset s = floor((1 - u eta) mu)
    ):
        check_int("num_inference_steps_min", num_inference_steps_min, 1)
        check_int("num_inference_steps_max", num_inference_steps_max, 1)
        if num_inference_steps_min > num_inference_steps_max:
            raise ValueError(
                "num_inference_steps_min must be <= num_inference_steps_max, got "
                f"{num_inference_steps_min} > {num_inference_steps_max}"
            )
        check_int("window", window, 0)
        check_choice("mode", mode, ("uniform", "nearest"))
        check_range("s_ratio", s_ratio, 0.0, 1.0)
        self.num_inference_steps_min = num_inference_steps_min
        self.num_inference_steps_max = num_inference_steps_max
        self.window, self.mode, self.s_ratio = window, mode, s_ratio
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None  # (grid, M)

    def target_set(self, grid: torch.Tensor) -> torch.Tensor:
        """M for this grid: (N,) -> (|M|,) int64 ascending; cached per grid tensor."""
        if self._cache is None or self._cache[0] is not grid:
            if self.num_inference_steps_max > grid.numel():
                raise ValueError(
                    f"num_inference_steps_max={self.num_inference_steps_max} exceeds the grid size "
                    f"num_ddim_timesteps={grid.numel()}"
                )
            steps = range(self.num_inference_steps_min, self.num_inference_steps_max + 1)
            self._cache = (grid, multistep_target_set(grid, steps))
        return self._cache[1]

    def sample(self, t_prev, grid, generator=None):
        targets = self.target_set(grid).to(t_prev.device)  # (|M|,)
        idx_m = torch.searchsorted(targets, t_prev, right=True) - 1  # (B,) index of m; M[0] = 0 <= t'
        if self.mode == "uniform":
            idx_lo = torch.searchsorted(targets, targets[idx_m] - self.window)  # first mu >= m - W
            count = (idx_m - idx_lo + 1).float()
            pick = idx_lo + (uniform(t_prev.shape, generator, t_prev.device) * count).long()
            idx_m = torch.minimum(pick, idx_m)
        mu = targets[idx_m]  # (B,)
        u = uniform(t_prev.shape, generator, t_prev.device)
        return torch.floor((1 - u * self.s_ratio) * mu).long()
