"""TDD's decoupled guidance (Wang et al. 2024, arXiv 2409.01347, sec. 3.3; TDD_SPEC section 4)."""

from __future__ import annotations

from tdd_lab.conditioner import condition_batch_size, select_condition
from tdd_lab.guidance.base import Guidance, GuidedBatch
from tdd_lab.guider import guider_for
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
        w: float = 3.5,                        # teacher guidance strength (guidance_scale = 1 + w)
        proportion_empty_prompts: float = 0.2,  # p: probability a sample's condition becomes null
    ):
        check_range("guidance.w", w, 0.0)
        check_range("guidance.proportion_empty_prompts", proportion_empty_prompts, 0.0, 1.0)
        self.w, self.proportion_empty_prompts = w, proportion_empty_prompts

    @property
    def teacher_w(self) -> float:
        return float(self.w)

    def prepare(self, cond, null, generator=None):
        b, device = condition_batch_size(cond), self._device(cond)
        dropped = uniform((b,), generator, device) < self.proportion_empty_prompts
        return GuidedBatch(cond=select_condition(dropped, null, cond), uncond=null, teacher_guider=guider_for(self.w),
                           w_embedding=None, dropped=dropped)
