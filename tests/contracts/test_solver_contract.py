"""Contract of every ``conf/solver`` option: built on the schedule kind it needs (its constructor says which), one
exact step along the grid, and grids that are buffers moving with the module."""

import pytest
import torch

from tdd_lab.solvers import TeacherSolver
from tdd_lab.timesteps import ddim_grid

from .conftest import SCHEDULES, option_params, point_mass_denoiser

GRID_SIZES = (50, 250)


def solvers_for(composer, option, n=None):
    """{schedule kind: solver} for the kinds the option's constructor accepts; the others must refuse by name."""
    overrides = () if n is None else (f"solver.num_ddim_timesteps={n}",)
    make = composer.build("solver", option, *overrides)  # _partial_: the schedule comes from the teacher
    built = {}
    for kind, schedule in SCHEDULES.items():
        try:
            built[kind] = make(schedule=schedule())
        except ValueError as e:  # a schedule of the wrong family is refused, naming what it got
            assert kind in str(e), f"{option} refused a {kind} schedule without naming it: {e}"
    assert built, f"solver {option} accepts no schedule kind"
    return built


@pytest.mark.parametrize("option", option_params("solver"))
class TestSolverContract:
    def test_grid_is_the_configured_ddim_grid(self, composer, option):
        for n in GRID_SIZES:
            for kind, solver in solvers_for(composer, option, n).items():
                assert isinstance(solver, TeacherSolver)
                k = 1000 // n
                assert solver.num_ddim_timesteps == n
                assert torch.equal(solver.grid, ddim_grid(1000, n)), kind
                assert torch.equal(solver.grid_prev, torch.clamp(ddim_grid(1000, n) - k, min=0)), kind
                t, t_prev = solver.sample_start(256, torch.Generator().manual_seed(0))
                assert t.dtype == t_prev.dtype == torch.int64
                assert torch.isin(t, solver.grid).all() and torch.equal(t_prev, torch.clamp(t - k, min=0))

    def test_one_step_from_exact_x_t_lands_on_the_exact_x_t_prev(self, composer, option):
        """A point mass x0 = c: x_t = a_t c + s_t eps, its exact denoiser gives (c, eps), and one teacher step
        must land on a_t' c + s_t' eps exactly, from every grid point."""
        gen = torch.Generator().manual_seed(0)
        for n in GRID_SIZES:
            for kind, solver in solvers_for(composer, option, n).items():
                schedule = solver.schedule
                t, t_prev = solver.grid, solver.grid_prev  # (N,) each: every step of the grid
                c = torch.tensor([0.7, -1.3, 0.2], dtype=torch.float64)
                eps = torch.randn(n, 3, generator=gen, dtype=torch.float64)
                x_t = schedule.add_noise(c.expand(n, 3), eps, t)
                x0_hat, eps_hat = point_mass_denoiser(c, schedule)(x_t, t, None)
                torch.testing.assert_close(eps_hat, eps, rtol=0, atol=1e-9)
                out = solver.step(x_t, t, t_prev, x0_hat, eps_hat)
                torch.testing.assert_close(out, schedule.add_noise(c.expand(n, 3), eps, t_prev), rtol=0, atol=1e-9,
                                           msg=lambda m, kind=kind, n=n: f"{kind} N={n}: {m}")

    def test_grids_are_buffers_that_move_with_the_module(self, composer, option):
        for kind, solver in solvers_for(composer, option).items():
            buffers = dict(solver.named_buffers())
            assert buffers["grid"] is solver.grid and buffers["grid_prev"] is solver.grid_prev
            assert "grid" not in solver.state_dict()  # rebuilt from the config, not checkpointed
            solver.half()  # a dtype cast keeps integer grids and float64 schedule tables
            assert solver.grid.dtype == torch.int64 and solver.schedule.alphas.dtype == torch.float64
            moved = solver.to("meta")
            assert moved.grid.device.type == moved.grid_prev.device.type == "meta", kind
            assert moved.schedule.alphas.device.type == "meta" and moved.schedule.alphas.dtype == torch.float64
