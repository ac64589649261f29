"""Contract of every ``conf/loss`` option: a distance (0 iff equal, symmetric), its closed form, float32 output."""

import math

import pytest
import torch

from tdd_lab.losses import DistillationLoss, L2Loss, PseudoHuberLoss

from .conftest import option_params

# hand example: differences d = pred - target = (0, 1, 2, -2, 1e-5, -3e-4)
PRED = torch.tensor([[0.0, 1.0, 2.0], [-1.0, 1e-5, 0.5]])
TARGET = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.5003]])
DIFFS = [0.0, 1.0, 2.0, -2.0, 1e-5, float(torch.tensor(0.5) - torch.tensor(0.5003))]


def closed_form(loss, diffs=DIFFS) -> float:
    """The mean over elements of the loss's textbook formula, in float64 from the differences ``diffs``."""
    if isinstance(loss, PseudoHuberLoss):  # sqrt(d^2 + c^2) - c (Song & Dhariwal 2023)
        c = loss.huber_c
        terms = [d * d / (math.sqrt(d * d + c * c) + c) for d in diffs]  # = sqrt(d^2 + c^2) - c, no cancellation
        return sum(terms) / len(terms)
    if isinstance(loss, L2Loss):
        return sum(d * d for d in diffs) / len(diffs)
    pytest.fail(f"no closed form for {type(loss).__name__}: add it to test_loss_contract.closed_form")


@pytest.mark.parametrize("option", option_params("loss"))
class TestLossContract:
    @pytest.fixture
    def loss(self, composer, option):
        return composer.build("loss", option)

    def test_is_a_distillation_loss(self, loss):
        assert isinstance(loss, DistillationLoss)

    def test_zero_on_identical_inputs(self, loss):
        x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
        assert loss(x, x.clone()).item() == 0.0

    def test_positive_and_symmetric(self, loss):
        gen = torch.Generator().manual_seed(1)
        x, y = torch.randn(4, 3, 8, 8, generator=gen), torch.randn(4, 3, 8, 8, generator=gen)
        assert loss(x, y).item() > 0
        assert loss(x, y).item() == loss(y, x).item()
        # a single tiny difference is still seen (no float32 cancellation to 0)
        z = x.clone()
        z[0, 0, 0, 0] += 1e-4
        assert loss(x, z).item() > 0

    def test_matches_the_closed_form(self, loss):
        got = loss(PRED, TARGET)
        assert got.ndim == 0 and got.dtype == torch.float32
        assert math.isclose(got.item(), closed_form(loss), rel_tol=1e-5)
        # element-wise too: the tiny differences (|d| << c) are where a naive float32 Huber loses every digit
        for d in (1e-5, -3e-4, 1e-6):
            x = torch.tensor([d])
            assert math.isclose(loss(x, torch.zeros(1)).item(), closed_form(loss, [float(x)]), rel_tol=1e-4), d

    def test_half_precision_inputs_give_a_float32_loss(self, loss):
        got = loss(PRED.to(torch.bfloat16), TARGET.to(torch.bfloat16))
        assert got.dtype == torch.float32
