"""Contract of every ``conf/strategy`` option (TDD_SPEC section 2): targets 0 <= s <= t' on every grid, seeded,
and a consistency function F that keeps x_t where it must."""

import pytest
import torch

from tdd_lab.solvers import DDIMSolver
from tdd_lab.strategies.base import TargetStrategy
from tdd_lab.timesteps import ddim_grid

from .conftest import option_params, vp_schedule

GRID_SIZES = (50, 250)
REPEATS = 64  # draws per grid point


def grids(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(tau, t') of the N-point teacher grid: tau from ddim_grid, t' from the DDIM solver (what training feeds)."""
    solver = DDIMSolver(vp_schedule(), n)
    assert torch.equal(solver.grid, ddim_grid(1000, n))
    return solver.grid, solver.grid_prev


def is_projection(strategy) -> bool:
    """F is the base class's DDIM projection a_s x0_hat + s_s eps_hat (not overridden)."""
    return type(strategy).consistency is TargetStrategy.consistency


def consistent_prediction(schedule, t, gen, shape=(3, 4)):
    """x_t with the exact (x0, eps) it was made from, float64: (B, *shape) each."""
    x0 = torch.randn(len(t), *shape, generator=gen, dtype=torch.float64)
    eps = torch.randn(len(t), *shape, generator=gen, dtype=torch.float64)
    return schedule.add_noise(x0, eps, t), x0, eps


@pytest.mark.parametrize("option", option_params("strategy"))
class TestStrategyContract:
    @pytest.fixture
    def strategy(self, composer, option):
        return composer.build("strategy", option)

    def test_is_a_target_strategy(self, strategy):
        assert isinstance(strategy, TargetStrategy)

    def test_targets_lie_in_zero_to_t_prev_on_every_grid(self, strategy):
        # one object over both grids and back: a target set cached per grid must not go stale
        for n in (*GRID_SIZES, GRID_SIZES[0]):
            grid, grid_prev = grids(n)
            t_prev = grid_prev.repeat_interleave(REPEATS)  # every t' of the grid, 0 included
            s = strategy.sample(t_prev, grid, torch.Generator().manual_seed(0))
            assert s.dtype == torch.int64 and s.shape == t_prev.shape, (n, s.dtype, s.shape)
            assert (s >= 0).all(), (n, s.min())
            bad = s > t_prev
            assert not bad.any(), f"N={n}: s > t' at t'={t_prev[bad][:5].tolist()}, s={s[bad][:5].tolist()}"

    def test_deterministic_under_a_seeded_generator(self, strategy):
        for n in GRID_SIZES:
            grid, grid_prev = grids(n)
            t_prev = grid_prev.repeat_interleave(8)
            torch.manual_seed(1)  # the global RNG differs between the two draws: only the generator may matter
            a = strategy.sample(t_prev, grid, torch.Generator().manual_seed(7))
            torch.manual_seed(2)
            b = strategy.sample(t_prev, grid, torch.Generator().manual_seed(7))
            assert torch.equal(a, b), n

    def test_consistency_at_s_equal_t_keeps_x_t(self, strategy):
        """Projection F: F(x_t, t -> t) = x_t for an exact prediction, and F(t -> s) = a_s x0 + s_s eps for any s.
        Any F: the boundary F(x_0, 0 -> 0) = x_0."""
        schedule, gen = vp_schedule(), torch.Generator().manual_seed(0)
        if is_projection(strategy):
            t = torch.tensor([0, 1, 19, 250, 500, 999])
            x_t, x0, eps = consistent_prediction(schedule, t, gen)
            torch.testing.assert_close(strategy.consistency(x_t, t, t, x0, eps, schedule), x_t, rtol=0, atol=1e-12)
            s = torch.tensor([0, 0, 3, 127, 499, 0])
            a_s, s_s = schedule.alpha_sigma(s, x0.ndim, x0.dtype)
            torch.testing.assert_close(strategy.consistency(x_t, t, s, x0, eps, schedule), a_s * x0 + s_s * eps,
                                       rtol=0, atol=1e-12)
        zero = torch.zeros(4, dtype=torch.long)
        x_t, x0, eps = consistent_prediction(schedule, zero, gen)
        out = strategy.consistency(x_t, zero, zero, x0, eps, schedule)
        torch.testing.assert_close(out, x_t, rtol=0, atol=1e-12)

    def test_boundary_function_is_identity_at_t0_for_any_prediction(self, strategy):
        """A consistency function with its own boundary parameterisation (LCM's c_skip/c_out) is the identity at
        t = 0 whatever the network predicts; F then also depends on the prediction away from t = 0."""
        if is_projection(strategy):
            pytest.skip("F is the DDIM projection: its boundary condition is checked with an exact prediction")
        schedule, gen = vp_schedule(), torch.Generator().manual_seed(0)
        x = torch.randn(4, 3, generator=gen, dtype=torch.float64)
        junk_x0 = 100 * torch.randn(4, 3, generator=gen, dtype=torch.float64)  # no relation to x
        junk_eps = torch.randn(4, 3, generator=gen, dtype=torch.float64)
        zero = torch.zeros(4, dtype=torch.long)
        torch.testing.assert_close(strategy.consistency(x, zero, zero, junk_x0, junk_eps, schedule), x, rtol=0, atol=0)
        t = torch.full((4,), 500)
        s = strategy.sample(t, ddim_grid(1000, 50))
        out = strategy.consistency(x, t, s, junk_x0, junk_eps, schedule)
        assert not torch.allclose(out, x), "away from t = 0 F must use the prediction"
