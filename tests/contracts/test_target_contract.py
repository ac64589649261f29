"""Contract of every ``conf/target`` option: the target network computes the student's function without gradient,
and ``update`` after an optimizer step moves it to the student by exactly (1 - decay) (decay 0: the online student)."""

import pytest
import torch

from tdd_lab.denoiser import Denoiser
from tdd_lab.nets.mlp import MLPDenoiser
from tdd_lab.targets import TargetNetwork

from .conftest import option_params, vp_schedule


def student_denoiser():
    torch.manual_seed(0)
    return Denoiser(MLPDenoiser(dim=2, num_classes=4, hidden=16, depth=1), vp_schedule(), "epsilon").train()


def inputs():
    gen = torch.Generator().manual_seed(1)
    return torch.randn(6, 2, generator=gen), torch.tensor([0, 10, 200, 500, 900, 999]), torch.arange(6) % 4


def optimizer_step(student, seed=2):
    """A stand-in for an optimizer step: every trainable parameter moves."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))


@pytest.mark.parametrize("option", option_params("target"))
class TestTargetContract:
    @pytest.fixture
    def pair(self, composer, option):
        decay = float(composer.values("target", option).get("decay", 0.0))
        student = student_denoiser()
        return composer.build("target", option).bind(student), student, decay

    def test_outputs_are_the_students_without_grad(self, pair):
        target, student, _ = pair
        assert isinstance(target, TargetNetwork)
        x, t, c = inputs()
        x0, eps = target(x, t, c)
        assert not x0.requires_grad and not eps.requires_grad
        x0_s, eps_s = student(x, t, c)
        assert eps_s.requires_grad  # the student itself does carry gradients
        torch.testing.assert_close((x0, eps), (x0_s.detach(), eps_s.detach()), rtol=0, atol=0)
        assert not any(p.requires_grad for p in target.parameters()), "the target is never optimised"

    def test_update_moves_toward_the_student_by_one_minus_decay(self, pair):
        target, student, decay = pair
        x, t, c = inputs()
        before = {n: p.detach().clone() for n, p in student.named_parameters()}
        optimizer_step(student)
        target.update(student)
        # the target's function is the one of theta^- = decay * theta_before + (1 - decay) * theta_after
        expected = student_denoiser()
        with torch.no_grad():
            for n, p in expected.named_parameters():
                p.copy_(torch.lerp(before[n], dict(student.named_parameters())[n], 1 - decay))
        torch.testing.assert_close(target(x, t, c), expected(x, t, c), rtol=1e-6, atol=1e-6)
        if decay > 0:  # and it has indeed lagged behind the student
            assert not torch.allclose(target(x, t, c)[1], student(x, t, c)[1].detach())
        # exactly (1 - decay) per parameter, where the target holds its own copy
        own = dict(target.named_parameters())
        for n, p in student.named_parameters():
            mine = next((q for k, q in own.items() if k.endswith(n)), None)
            if mine is not None:
                torch.testing.assert_close(mine, torch.lerp(before[n], p.detach(), 1 - decay), rtol=0, atol=1e-7)
        assert bool(own) == (decay > 0), "an EMA keeps its own weights; the online target holds none (no 2nd copy)"

    def test_frozen_student_parameters_are_left_alone(self, pair):
        """LoRA students: only trainable weights are averaged; frozen base weights stay bit-identical."""
        target, student, _ = pair
        frozen = [p for n, p in student.named_parameters() if n.startswith("net.inp")]
        for p in frozen:
            p.requires_grad_(False)
        snapshot = [q.detach().clone() for n, q in target.named_parameters() if ".inp." in n]
        if not snapshot:
            pytest.skip("this target holds no weights of its own (it is the student)")
        optimizer_step(student)
        target.update(student)
        for old, (n, q) in zip(snapshot, [(n, q) for n, q in target.named_parameters() if ".inp." in n]):
            assert torch.equal(old, q), n
