"""TDD's decoupled guidance (Wang et al. 2024, arXiv 2409.01347, sec. 3.3; TDD_SPEC section 4)."""

from __future__ import annotations

import torch

from tdd_lab.guidance.base import (
    Guidance,
    GuidedBatch,
    condition_batch_size,
    expand_condition,
    select_condition,
)
from tdd_lab.utils.tensors import uniform
from tdd_lab.utils.validation import check_range


class DecoupledGuidance(Guidance):
    """Replace a ``proportion_empty_prompts`` fraction of conditions by the one null condition.

    The replacement holds for student, teacher cond branch and target alike; since the teacher's
    uncond branch uses the same null condition, dropped samples get an exactly unguided teacher
    step (x_c == x_u), so the student also learns the unconditional trajectory and CFG can be
    re-tuned on the student after training. No w-embedding.
    """

    def __init__(
        self,
        w: float = 3.5,                        # teacher CFG scale, "w + 1" form
        proportion_empty_prompts: float = 0.2,  # p: probability a sample's condition becomes null
    ):
        check_range("w", w, 0.0)
        check_range("proportion_empty_prompts", proportion_empty_prompts, 0.0, 1.0)
        self.w, self.proportion_empty_prompts = w, proportion_empty_prompts

    def prepare(self, cond, null, generator=None):
        b, device = condition_batch_size(cond), self._device(cond)
        dropped = uniform((b,), generator, device) < self.proportion_empty_prompts
        uncond = expand_condition(null, b)
        return GuidedBatch(
            cond=select_condition(dropped, uncond, cond),
            uncond=uncond,
            w=torch.full((b,), self.w, device=device),
            w_embedding=None,
            dropped=dropped,
        )
