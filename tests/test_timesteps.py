"""The teacher grid, the K-step schedules, TDD's target set and the non-equidistant rule."""

import pytest
import torch

from tdd_lab.timesteps import (
    SPECIAL_JUMP_TABLES,
    ddim_grid,
    equidistant_schedule,
    multistep_target_set,
    nonequidistant_schedule,
)

SPEC_M = [0, 127, 143, 167, 199, 251, 287, 335, 375, 399, 431, 499, 571, 599, 627, 667, 715, 751, 799, 835, 859, 875]


def test_grid():
    g = ddim_grid(1000, 250)
    assert g[:3].tolist() == [3, 7, 11] and g[-1].item() == 999 and g.numel() == 250
    assert ddim_grid(1000, 50)[:2].tolist() == [19, 39]


def test_tdd_target_set_equals_spec():
    assert multistep_target_set(ddim_grid(1000, 250), range(4, 9)).tolist() == SPEC_M


@pytest.mark.parametrize(
    "k,expected",
    [(4, [999, 751, 499, 251]), (8, [999, 875, 751, 627, 499, 375, 251, 127]), (1, [999])],
)
def test_equidistant_schedule(k, expected):
    assert equidistant_schedule(ddim_grid(1000, 250), k).tolist() == expected


@pytest.mark.parametrize("key", sorted(SPECIAL_JUMP_TABLES))
def test_nonequidistant_rule_reproduces_published_tables(key):
    n, k = key
    assert nonequidistant_schedule(ddim_grid(1000, n), k).tolist() == SPECIAL_JUMP_TABLES[key]


@pytest.mark.parametrize("n", [50, 100, 250, 1000])
@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 6, 7, 8, 12, 16])
def test_nonequidistant_rule_general(n, k):
    grid = ddim_grid(1000, n)
    sched = nonequidistant_schedule(grid, k)
    assert sched.numel() == k and sched[0] == 999
    assert (sched.diff() < 0).all()  # strictly descending
    assert torch.isin(sched, grid).all()  # on the grid the student was trained on
    if k & (k - 1) == 0:  # powers of two: equidistant
        assert torch.equal(sched, equidistant_schedule(grid, k))
    else:  # denser at high noise: the first gap is no wider than the last
        gaps = -sched.diff()
        assert gaps[0] <= gaps[-1]


def test_grid_size_must_divide():
    with pytest.raises(ValueError, match="num_ddim_timesteps"):
        ddim_grid(1000, 300)
    with pytest.raises(ValueError, match="num_ddim_timesteps"):
        ddim_grid(1000, 0)
