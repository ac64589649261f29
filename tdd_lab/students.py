"""Student forms: full fine-tuning or LoRA (peft) on a copy of the teacher's network."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

from tdd_lab.utils.validation import check_int, check_range


class StudentFactory(ABC):
    """Turns the student's initial network (from the teacher) into the trainable student."""

    shares_base: bool = False  # build on the teacher's own network (frozen base + adapters), not a copy

    @abstractmethod
    def build(self, init_net: nn.Module) -> nn.Module:
        """Return the student network; only its trainable parameters are optimised."""

    def export_network(self, student: nn.Module) -> nn.Module:
        """A plain network with the student's function (LoRA merged), for export."""
        return student

    def adapter_config(self, student: nn.Module) -> dict | None:
        """The adapter settings of a student built by this factory (rank, alpha, ...), None without adapters."""
        return None


class FullStudent(StudentFactory):
    """Every parameter of the network is trained."""

    def build(self, init_net):
        return init_net.requires_grad_(True).train()


class LoRAStudent(StudentFactory):
    """Low-rank adapters (Hu et al. 2021) via peft; base weights frozen, adapters trained.

    With ``share_base`` (default) the adapters go into the teacher's own network, which the teacher
    then calls with adapters disabled: one UNet/transformer in memory for teacher, student and target.
    """

    def __init__(
        self,
        rank: int = 16,                  # r
        alpha: float = 16.0,             # lora_alpha; the update is scaled by alpha / r (stored in exports)
        target_modules: list[str] | None = None,  # module-name patterns; None = every Linear/Conv2d (1x1, 3x3)
        dropout: float = 0.0,
        share_base: bool = True,         # adapters on the teacher's network itself (no second copy)
    ):
        check_int("student.rank", rank, 1)
        check_range("student.alpha", alpha, 0.0, low_inclusive=False)
        check_range("student.dropout", dropout, 0.0, 1.0, high_inclusive=False)
        self.rank, self.alpha, self.dropout, self.shares_base = rank, alpha, dropout, share_base
        self.target_modules = list(target_modules) if target_modules else None
        self._targets_used: list[str] | None = None  # the module names adapted by build()

    def _targets(self, net: nn.Module) -> list[str]:
        if self.target_modules:
            return self.target_modules
        names = [n for n, m in net.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        if not names:
            raise ValueError("LoRA student: the network has no Linear/Conv2d layers to adapt")
        return names

    def build(self, init_net):
        from peft import LoraConfig, inject_adapter_in_model

        targets = self._targets(init_net)
        cfg = LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout,
                         target_modules=targets, init_lora_weights=True)
        net = inject_adapter_in_model(cfg, init_net.requires_grad_(False))
        for name, p in net.named_parameters():
            p.requires_grad_("lora_" in name)
            if "lora_" in name:
                p.data = p.data.float()  # adapters train in float32 even on a bf16/fp16 base
        self._targets_used = targets
        return net.train()

    def adapter_config(self, student):
        return {"rank": self.rank, "alpha": self.alpha, "dropout": self.dropout,
                "target_modules": self._targets_used or self.target_modules}

    def export_network(self, student):
        import copy

        from peft.tuners.tuners_utils import BaseTunerLayer

        # merge in float32 on the CPU: small deltas would round away in a bf16/fp16 base
        net = copy.deepcopy(student).to("cpu", torch.float32)
        for name, module in list(net.named_modules()):
            if isinstance(module, BaseTunerLayer):
                module.merge()
                parent_name, _, child = name.rpartition(".")
                parent = net.get_submodule(parent_name) if parent_name else net
                setattr(parent, child, module.get_base_layer())
        return net.requires_grad_(False)


def trainable_parameters(net: nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in net.parameters() if p.requires_grad]
