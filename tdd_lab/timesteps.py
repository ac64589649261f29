"""Timestep grids shared by training (the teacher ODE grid, target sets) and sampling.

Notation of TDD_SPEC: T training steps, N = ``num_ddim_timesteps``, k = T // N, grid
tau_i = i*k - 1 (i = 1..N). The K-step schedule taken from the grid is
S_K = reversed(tau)[floor(j*N/K)], j = 0..K-1 (the TCD/TDD inference schedule).
"""

from __future__ import annotations

import torch

from tdd_lab.utils.validation import check_int

# Published non-equidistant schedules of the public TDD scheduler (`special_jump`), keyed by (N, K).
SPECIAL_JUMP_TABLES: dict[tuple[int, int], list[int]] = {
    (250, 5): [999, 875, 751, 499, 251],
    (250, 6): [999, 875, 751, 627, 499, 251],
    (250, 7): [999, 875, 751, 627, 499, 375, 251],
}


def check_grid_size(num_train_timesteps: int, num_ddim_timesteps: int) -> None:
    """``num_ddim_timesteps`` must be a positive divisor of ``num_train_timesteps``."""
    check_int("num_ddim_timesteps", num_ddim_timesteps, 1, num_train_timesteps)
    if num_train_timesteps % num_ddim_timesteps:
        raise ValueError(
            f"num_ddim_timesteps must divide num_train_timesteps={num_train_timesteps} "
            f"(allowed: a divisor in [1, {num_train_timesteps}]), got {num_ddim_timesteps}"
        )


def ddim_grid(num_train_timesteps: int = 1000, num_ddim_timesteps: int = 50) -> torch.Tensor:
    """Teacher ODE grid tau_i = i*k - 1, i = 1..N: (N,) int64 ascending (e.g. 3, 7, ..., 999 for N = 250)."""
    check_grid_size(num_train_timesteps, num_ddim_timesteps)
    k = num_train_timesteps // num_ddim_timesteps
    return torch.arange(1, num_ddim_timesteps + 1, dtype=torch.long) * k - 1


def equidistant_schedule(grid: torch.Tensor, num_steps: int) -> torch.Tensor:
    """S_K = reversed(tau)[floor(j*N/K)], j = 0..K-1: (N,) -> (K,) int64 descending."""
    n = grid.numel()
    check_int("num_inference_steps", num_steps, 1, n)
    idx = torch.div(torch.arange(num_steps, dtype=torch.long) * n, num_steps, rounding_mode="floor")
    return grid.flip(0)[idx.to(grid.device)]


def multistep_target_set(grid: torch.Tensor, steps: list[int] | range) -> torch.Tensor:
    """TDD's target set M: sorted union of S_K over ``steps``, with 0 prepended and the largest value dropped.

    (N,) -> (|M|,) int64 ascending. N = 250, K = 4..8 gives
    {0, 127, 143, 167, 199, 251, ..., 859, 875} (TDD_SPEC section 2).
    """
    union = torch.cat([equidistant_schedule(grid, k) for k in steps])
    m = torch.unique(union)  # sorted ascending
    zero = torch.zeros(1, dtype=m.dtype, device=m.device)
    return torch.cat([zero, m])[:-1]


def nonequidistant_schedule(grid: torch.Tensor, num_steps: int) -> torch.Tensor:
    """Non-equidistant K-step schedule, dense at high noise, by rule: (N,) -> (K,) descending.

    Let C be the largest power of two <= K. Take the C-step equidistant schedule and add the
    first K - C points (from the noisy end) of the 2C-step schedule that it lacks. Powers of two
    give the equidistant schedule; for N = 250 this reproduces the published ``special_jump``
    tables (K = 5, 6, 7 from the 4- and 8-step schedules).
    """
    n = grid.numel()
    check_int("num_inference_steps", num_steps, 1, n)
    coarse_k = 1 << (num_steps.bit_length() - 1)
    coarse = equidistant_schedule(grid, coarse_k)
    if coarse_k == num_steps:
        return coarse
    fine = equidistant_schedule(grid, min(2 * coarse_k, n))
    extra = fine[~torch.isin(fine, coarse)][: num_steps - coarse_k]
    return torch.sort(torch.cat([coarse, extra]), descending=True).values
