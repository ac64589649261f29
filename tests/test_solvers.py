"""Teacher solvers: grid bookkeeping, DDIM and flow-Euler steps."""

import pytest
import torch

from tdd_lab.prediction import consistency_function
from tdd_lab.schedules import FlowMatchSchedule, VPSchedule
from tdd_lab.solvers import DDIMSolver, FlowEulerSolver


def test_grid_and_previous_points():
    solver = DDIMSolver(VPSchedule(), 250)
    assert solver.step_ratio == 4
    assert solver.grid[:2].tolist() == [3, 7] and solver.grid_prev[:3].tolist() == [0, 3, 7]
    t, t_prev = solver.sample_start(10000, torch.Generator().manual_seed(0))
    assert torch.isin(t, solver.grid).all()
    assert torch.equal(t_prev, torch.clamp(t - 4, min=0))
    assert len(torch.unique(t)) == 250  # every grid point is drawn
    t2, _ = solver.sample_start(10000, torch.Generator().manual_seed(0))
    assert torch.equal(t, t2)


def test_ddim_step_moves_exact_prediction_along_forward_process():
    sched = VPSchedule()
    solver = DDIMSolver(sched, 50)
    x0, eps = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    t, t_prev = solver.sample_start(4, torch.Generator().manual_seed(1))
    out = solver.step(sched.add_noise(x0, eps, t), t, t_prev, x0, eps)
    torch.testing.assert_close(out, sched.add_noise(x0, eps, t_prev))


def test_flow_euler_step_equals_projection():
    sched = FlowMatchSchedule(shift=3.0)
    solver = FlowEulerSolver(sched, 50)
    x0, eps = torch.randn(6, 16), torch.randn(6, 16)
    t, t_prev = solver.sample_start(6, torch.Generator().manual_seed(2))
    x_t = sched.add_noise(x0, eps, t)
    a_p, s_p = sched.alpha_sigma(t_prev, 2)
    torch.testing.assert_close(solver.step(x_t, t, t_prev, x0, eps), consistency_function(x0, eps, a_p, s_p),
                               rtol=1e-5, atol=1e-5)


def test_solver_schedule_mismatch_and_bad_grid():
    with pytest.raises(ValueError, match="needs a VP schedule"):
        DDIMSolver(FlowMatchSchedule())
    with pytest.raises(ValueError, match="needs a flow-matching schedule"):
        FlowEulerSolver(VPSchedule())
    with pytest.raises(ValueError, match="num_ddim_timesteps must divide"):
        DDIMSolver(VPSchedule(), 300)
    with pytest.raises(ValueError, match="num_ddim_timesteps"):
        DDIMSolver(VPSchedule(), -5)


def test_solver_grids_are_buffers_outside_the_state_dict():
    solver = DDIMSolver(VPSchedule(), 50)
    assert {n for n, _ in solver.named_buffers()} >= {"grid", "grid_prev", "schedule.alphas", "schedule.sigmas"}
    assert solver.state_dict() == {}  # nothing in checkpoints: rebuilt from the config
    assert solver.double().schedule.alphas.dtype == torch.float64 and solver.grid.dtype == torch.int64
