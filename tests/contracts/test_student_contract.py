"""Contract of every ``conf/student`` option: a trainable student from a tiny network, its adapter settings, and an
exported plain network with exactly the student's function (the base function while untrained)."""

import copy

import pytest
import torch
from torch import nn

from tdd_lab.nets.mlp import MLPDenoiser
from tdd_lab.students import StudentFactory

from .conftest import option_params


class NamedLeaves(nn.Module):
    """A tiny net with a ``Linear`` at every dotted module path of ``names`` (an option's ``target_modules``),
    applied in sequence: ``net(x, t, cond, tc) -> x + sum of residual updates``."""

    def __init__(self, names: list[str], width: int = 8):
        super().__init__()
        self.paths = list(names)
        for path in self.paths:
            parent = self
            *heads, leaf = path.split(".")
            for head in heads:
                if not hasattr(parent, head):
                    parent.add_module(head, nn.Module())
                parent = getattr(parent, head)
            parent.add_module(leaf, nn.Linear(width, width))

    def forward(self, x, t, cond, timestep_cond=None):
        h = x
        for path in self.paths:
            h = h + torch.tanh(self.get_submodule(path)(h))
        return h


def tiny_net(factory_values: dict) -> tuple[nn.Module, torch.Tensor]:
    """A tiny network the option can adapt, and an input for it."""
    torch.manual_seed(0)
    targets = factory_values.get("target_modules")
    if targets:
        return NamedLeaves(targets), torch.randn(5, 8)
    return MLPDenoiser(dim=2, num_classes=4, hidden=16, depth=1), torch.randn(5, 2)


def call(net, x):
    return net(x, torch.arange(len(x)) * 100, torch.arange(len(x)) % 4)


def lora_params(net):
    return {n: p for n, p in net.named_parameters() if "lora_" in n}


@pytest.mark.parametrize("option", option_params("student"))
class TestStudentContract:
    @pytest.fixture
    def setup(self, composer, option):
        values = composer.values("student", option)
        factory = composer.build("student", option)
        net, x = tiny_net(values)
        base = copy.deepcopy(net).eval()  # the teacher's function (LoRA with share_base adapts `net` in place)
        student = factory.build(net)
        return values, factory, base, student, x

    def test_builds_a_trainable_student(self, setup):
        values, factory, base, student, _ = setup
        assert isinstance(factory, StudentFactory)
        trainable = {n for n, p in student.named_parameters() if p.requires_grad}
        assert trainable and student.training
        adapters = lora_params(student)
        if adapters:  # LoRA: exactly the adapters train, the base stays frozen
            assert trainable == set(adapters)
            assert all(p.dtype == torch.float32 for p in adapters.values())
            linears = [n for n, m in base.named_modules() if isinstance(m, nn.Linear)]
            targets = values.get("target_modules") or linears
            assert len(adapters) == 2 * len(targets), "one (A, B) pair per target module"
        else:
            assert trainable == {n for n, _ in student.named_parameters()}

    def test_adapter_config(self, setup):
        values, factory, _, student, _ = setup
        cfg = factory.adapter_config(student)
        if not lora_params(student):
            assert cfg is None
            return
        assert cfg["rank"] == values["rank"] and cfg["alpha"] == values["alpha"]
        assert cfg["dropout"] == values["dropout"]
        if values.get("target_modules"):
            assert list(cfg["target_modules"]) == list(values["target_modules"])
        first = next(iter(lora_params(student).values()))
        assert values["rank"] in first.shape, "the adapters have the configured rank"

    def test_untrained_export_equals_the_base_function(self, setup):
        _, factory, base, student, x = setup
        with torch.no_grad():
            ref = call(base, x)
            exported = factory.export_network(student)
            assert not lora_params(exported), "the export is a plain network"
            torch.testing.assert_close(call(exported.eval(), x), ref, rtol=0, atol=0)
            torch.testing.assert_close(call(student.eval(), x), ref, rtol=0, atol=0)

    def test_trained_export_equals_the_student_function(self, setup):
        """After training steps the merged export computes the student (LoRA: W + alpha/r B A), not the base."""
        _, factory, base, student, x = setup
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in student.parameters():
                if p.requires_grad:
                    p.add_(0.1 * torch.randn(p.shape, generator=gen))
            want = call(student.eval(), x)
            assert not torch.allclose(want, call(base, x)), "the simulated training must change the function"
            exported = factory.export_network(student)
            torch.testing.assert_close(call(exported.eval(), x), want, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(call(student, x), want, rtol=0, atol=0)  # the student is left as it was
