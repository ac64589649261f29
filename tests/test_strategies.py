"""Target-timestep strategies: the invariants of TDD_SPEC section 2, checked on large batches."""

import pytest
import torch
from hydra.errors import MissingConfigException

from tdd_lab.schedules import VPSchedule
from tdd_lab.solvers import DDIMSolver
from tdd_lab.strategies import LCMStrategy, PCMStrategy, TCDStrategy, TDDStrategy
from tdd_lab.timesteps import ddim_grid
from tdd_lab.validate import ConfigError
from tests.conftest import build_option

from .test_timesteps import SPEC_M

GRID = ddim_grid(1000, 250)


def all_t_prev(n_repeat=40):
    """Every previous grid point t' of the N = 250 grid, repeated: (250 * n_repeat,)."""
    solver = DDIMSolver(VPSchedule(), 250)
    return solver.grid_prev.repeat(n_repeat)


def test_tdd_targets_satisfy_spec_invariants(gen):
    """floor((1 - s_ratio) mu) <= s <= mu <= m <= t' for some mu in M with m - window <= mu."""
    strat = TDDStrategy(4, 8, window=260, mode="uniform", s_ratio=0.3)
    t_prev = all_t_prev()
    s = strat.sample(t_prev, GRID, gen)
    m_set = torch.tensor(SPEC_M)
    m = m_set[torch.searchsorted(m_set, t_prev, right=True) - 1]  # largest M element <= t'
    mu_lowest = m_set[torch.searchsorted(m_set, m - 260)]  # smallest candidate of the window
    assert (s >= 0).all() and (s <= m).all() and (m <= t_prev).all()
    assert (s >= torch.floor(0.7 * mu_lowest.float()).long()).all()
    # s lies in the offset band of some M element inside the window
    lo = torch.floor(0.7 * m_set.float()).long()
    in_band = (s[:, None] >= lo[None]) & (s[:, None] <= m_set[None]) & (m_set[None] >= (m - 260)[:, None])
    assert in_band.any(dim=1).all()


def test_tdd_mu_choice_with_zero_offset(gen):
    """With s_ratio = 0, s = mu exactly: check mu in M, mu <= m <= t', m - mu <= window, all candidates hit."""
    strat = TDDStrategy(4, 8, window=260, mode="uniform", s_ratio=0.0)
    t_prev = all_t_prev(200)
    mu = strat.sample(t_prev, GRID, gen)
    m_set = torch.tensor(SPEC_M)
    assert torch.isin(mu, m_set).all()
    m = m_set[torch.searchsorted(m_set, t_prev, right=True) - 1]
    assert (mu <= m).all() and (m <= t_prev).all() and (m - mu <= 260).all()
    assert (t_prev - m < 128).all()  # M's widest gap is 0 -> 127
    # every candidate of the window is drawn, roughly uniformly: t' = 995 -> m = 875, window [615, 875]
    sel = mu[t_prev == 995]
    cands = m_set[(m_set >= 615) & (m_set <= 875)]
    counts = torch.stack([(sel == c).sum() for c in cands]).float()
    assert (counts > 0).all()
    expected = sel.numel() / len(cands)
    assert ((counts - expected).abs() < 5 * expected**0.5).all()


def test_tdd_stochastic_offset_distribution(gen):
    strat = TDDStrategy(4, 8, mode="nearest", s_ratio=0.3)
    t_prev = torch.full((20000,), 875)
    s = strat.sample(t_prev, GRID, gen).float()
    assert s.min() >= int(0.7 * 875) and s.max() <= 875
    # s = floor((1 - 0.3 u) 875): mean ~ 875 (1 - 0.15) - 0.5
    assert s.mean().item() == pytest.approx(875 * 0.85 - 0.5, abs=2.0)


def test_tdd_nearest_mode_is_deterministic_largest_target():
    strat = TDDStrategy(4, 8, mode="nearest", s_ratio=0.0)
    t_prev = torch.tensor([0, 126, 127, 500, 995, 875, 874])
    assert strat.sample(t_prev, GRID).tolist() == [0, 0, 127, 499, 875, 875, 859]


def test_tdd_seeded_reproducible():
    strat = TDDStrategy()
    t_prev = all_t_prev(2)
    a = strat.sample(t_prev, GRID, torch.Generator().manual_seed(7))
    b = strat.sample(t_prev, GRID, torch.Generator().manual_seed(7))
    c = strat.sample(t_prev, GRID, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_tdd_matches_per_sample_reference_loop():
    """Vectorised draws equal a literal per-sample implementation of the spec fed the same uniforms."""
    strat = TDDStrategy(4, 8, window=260, s_ratio=0.3)
    t_prev = all_t_prev(4)
    gen = torch.Generator().manual_seed(3)
    s = strat.sample(t_prev, GRID, gen)
    gen = torch.Generator().manual_seed(3)
    u_pick, u_off = torch.rand(t_prev.shape, generator=gen), torch.rand(t_prev.shape, generator=gen)
    ref = []
    for i, tp in enumerate(t_prev.tolist()):
        m = max(x for x in SPEC_M if x <= tp)
        cands = [x for x in SPEC_M if m - 260 <= x <= m]
        mu = cands[int(u_pick[i] * len(cands))]
        ref.append(int(torch.floor((1 - u_off[i] * 0.3) * torch.tensor(mu))))
    assert s.tolist() == ref


def test_lcm_targets_and_boundary():
    strat = LCMStrategy()
    t_prev = torch.tensor([0, 19, 999])
    assert strat.sample(t_prev, GRID).tolist() == [0, 0, 0]
    x_t, x0 = torch.randn(3, 2), torch.randn(3, 2)
    out = strat.consistency(x_t, torch.tensor([0, 0, 999]), None, x0, None, VPSchedule())
    torch.testing.assert_close(out[:2], x_t[:2])  # c_skip(0) = 1, c_out(0) = 0
    torch.testing.assert_close(out[2], x0[2], rtol=1e-4, atol=1e-4)  # far from the boundary F ~ x0_hat


@pytest.mark.parametrize("phases,edges", [(4, [0, 251, 499, 751]), (2, [0, 499]), (1, [0])])
def test_pcm_targets_are_phase_edges(phases, edges):
    strat = PCMStrategy(num_phases=phases)
    assert strat.edges(GRID).tolist() == edges
    t_prev = all_t_prev(1)
    s = strat.sample(t_prev, GRID)
    assert torch.isin(s, torch.tensor(edges)).all() and (s <= t_prev).all()
    expected = torch.tensor(edges)[torch.searchsorted(torch.tensor(edges), t_prev, right=True) - 1]
    assert torch.equal(s, expected)


def test_tcd_targets_in_range_and_cover_it(gen):
    strat = TCDStrategy()
    t_prev = torch.full((20000,), 800)
    s = strat.sample(t_prev, GRID, gen)
    assert (s >= 0).all() and (s <= t_prev).all()
    assert s.float().mean().item() == pytest.approx(399.5, abs=8)  # ~uniform on [0, 800]
    narrow = TCDStrategy(gamma_min=0.2, gamma_max=0.3).sample(t_prev, GRID, gen)
    assert narrow.min() >= 559 and narrow.max() <= 640


def test_semi_linear_consistency_on_clean_prediction():
    """With the true (x0, eps) every semi-linear target reproduces the forward process at s."""
    sched = VPSchedule()
    x0, eps = torch.randn(4, 3), torch.randn(4, 3)
    s = torch.tensor([0, 100, 499, 875])
    out = TDDStrategy().consistency(None, None, s, x0, eps, sched)
    torch.testing.assert_close(out, sched.add_noise(x0, eps, s))


@pytest.mark.parametrize(
    "name,params,match",
    [
        ("tdd", dict(s_ratio=1.5), r"s_ratio must be in \[0, 1\]"),
        ("tdd", dict(s_ratio=-0.1), r"s_ratio must be in \[0, 1\]"),
        ("tdd", dict(num_inference_steps_min=8, num_inference_steps_max=4), "num_inference_steps_min must be <="),
        ("tdd", dict(mode="random"), "mode must be one of"),
        ("tdd", dict(window=-1), "window"),
        ("tdd", dict(s_raito=0.3), r"unknown parameter strategy.s_raito"),
        ("pcm", dict(num_phases=0), "num_phases"),
        ("tcd", dict(gamma_min=0.5, gamma_max=0.2), "gamma_min must be <="),
    ],
)
def test_bad_strategy_input(name, params, match):
    with pytest.raises(ConfigError, match=match):
        build_option("strategy", name, **params)


def test_unknown_strategy_option():
    with pytest.raises(MissingConfigException, match="ctm"):
        build_option("strategy", "ctm")


def test_tdd_steps_larger_than_grid():
    with pytest.raises(ValueError, match="num_inference_steps_max"):
        TDDStrategy(4, 8).sample(torch.tensor([10]), ddim_grid(1000, 5))
