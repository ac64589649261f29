"""Base contract of the adversarial term, and ``none`` (no discriminator: the plain consistency distillation)."""

from __future__ import annotations

import torch
from torch import nn

from tdd_lab.conditioner import Condition


class Adversarial(nn.Module):
    """A discriminator on the teacher's features and its losses; a submodule of the LightningModule.

    ``trains``: whether there is a discriminator to train. When it is false (``none``) the LightningModule keeps
    Lightning's automatic optimization and never calls the other methods; when true it switches to manual
    optimization with a second optimizer (:meth:`make_optimizer`). ``updates()`` says which of (discriminator,
    student) this batch updates; ``advance()`` moves the schedule on, once per training batch (its position is part
    of the state dict, so a resumed run continues the same alternation).
    """

    trains: bool = False
    adv_weight: float = 0.0  # weight of the generator term added to the consistency loss

    def bind(self, teacher) -> Adversarial:
        """Build what depends on the teacher (heads sized to its feature maps); returns self."""
        return self

    def make_optimizer(self) -> torch.optim.Optimizer:
        raise NotImplementedError(f"{type(self).__name__} has no discriminator to optimize")

    def updates(self) -> tuple[bool, bool]:
        """(update the discriminator, update the student) for the current batch."""
        return False, True

    def advance(self) -> None:
        """Called once per training batch, after its updates."""

    def batches_consumed(self) -> int | None:
        """Training batches this schedule has counted (None: it counts none; the data position is then the
        trainer's global step). A run stopped between a discriminator-only batch and the next student batch resumes
        at the next unseen batch only if its loader starts here, not at twice the global step."""
        return None

    def discriminator_loss(self, real: torch.Tensor, fake: torch.Tensor, s: torch.Tensor,
                           cond: Condition) -> torch.Tensor:
        """Loss of the discriminator on real/fake samples at s (B, ...) (both detached inside): scalar."""
        raise NotImplementedError(f"{type(self).__name__} has no discriminator")

    def generator_loss(self, fake: torch.Tensor, s: torch.Tensor, cond: Condition) -> torch.Tensor:
        """Unweighted generator loss of the student's samples at s (B, ...); reaches the student, never the heads."""
        raise NotImplementedError(f"{type(self).__name__} has no discriminator")


class NoAdversarial(Adversarial):
    """``adversarial=none``: no discriminator; training is exactly the consistency distillation."""
