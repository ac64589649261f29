"""Losses against closed forms."""

import pytest
import torch
from hydra.errors import MissingConfigException

from tdd_lab.losses import L2Loss, PseudoHuberLoss
from tdd_lab.validate import ConfigError
from tests.conftest import build_option


def test_l2():
    pred, target = torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.zeros(2, 2)
    assert L2Loss()(pred, target).item() == pytest.approx((1 + 4 + 9 + 16) / 4)


def test_pseudo_huber_closed_form_and_limits():
    c = 1e-3
    loss = PseudoHuberLoss(huber_c=c)
    d = torch.tensor([0.0, 3e-3, 4.0])
    expected = torch.sqrt(d**2 + c**2) - c
    torch.testing.assert_close(loss.elementwise(d, torch.zeros(3)), expected)
    assert loss(torch.zeros(5), torch.zeros(5)).item() == 0.0
    small = torch.full((10,), 1e-5)
    assert loss(small, torch.zeros(10)).item() == pytest.approx(1e-10 / (2 * c), rel=1e-3)  # quadratic regime
    big = torch.full((10,), 2.0)
    assert loss(big, torch.zeros(10)).item() == pytest.approx(2.0 - c, rel=1e-5)  # linear regime


def test_losses_compute_in_float32():
    pred = torch.randn(4, 4).to(torch.bfloat16)
    assert PseudoHuberLoss()(pred, torch.zeros_like(pred)).dtype == torch.float32


@pytest.mark.parametrize("c", [0.0, -1e-3])
def test_bad_huber_c(c):
    with pytest.raises(ConfigError, match=r"loss: huber_c must be in \(0"):
        build_option("loss", "huber", huber_c=c)


def test_unknown_loss():
    with pytest.raises(MissingConfigException, match="l1"):
        build_option("loss", "l1")
