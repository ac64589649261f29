"""TDD's decoupled guidance (Wang et al. 2024, arXiv 2409.01347, sec. 3.3; TDD_SPEC section 4)."""

from __future__ import annotations

from tdd_lab.conditioner import condition_batch_size, select_condition
from tdd_lab.guidance.base import Guidance, GuidedBatch
from tdd_lab.guider import guider_for
from tdd_lab.utils.tensors import uniform
from tdd_lab.utils.validation import check_choice, check_range


class DecoupledGuidance(Guidance):
    """Replace a ``proportion_empty_prompts`` fraction of conditions by the one null condition.

    The replacement holds for student, teacher cond branch and target alike; since the teacher's
    uncond branch uses the same null condition, dropped samples get an exactly unguided teacher
    step (x_c == x_u), so the student also learns the unconditional trajectory and CFG can be
    re-tuned on the student after training. No w-embedding.

    ``dropped_caption="empty_prompt"`` is an ablation switch that reproduces the public SDXL script's defect
    (TDD_SPEC section 4): dropped captions become the text encoders' encoding of "" while the teacher's uncond
    branch keeps the null condition (all zeros for SDXL's ``force_zeros_for_empty_prompt``), so dropped samples
    are no longer exactly unguided. Text-conditioned teachers only; where the null condition *is* the encoded
    empty prompt (SD1.5, FLUX, SD3) the switch changes nothing.
    """

    DROPPED_CAPTIONS = ("null", "empty_prompt")

    def __init__(
        self,
        w: float = 3.5,                        # teacher guidance strength (guidance_scale = 1 + w)
        proportion_empty_prompts: float = 0.2,  # p: probability a sample's condition becomes null
        dropped_caption: str = "null",          # what a dropped caption becomes: null | empty_prompt (ablation)
    ):
        check_range("guidance.w", w, 0.0)
        check_range("guidance.proportion_empty_prompts", proportion_empty_prompts, 0.0, 1.0)
        check_choice("guidance.dropped_caption", dropped_caption, self.DROPPED_CAPTIONS)
        self.w, self.proportion_empty_prompts = w, proportion_empty_prompts
        self.dropped_caption = dropped_caption
        self._conditioner = None  # the teacher's conditioner (dropped_caption=empty_prompt), from bind()

    def bind(self, teacher):
        # label teachers are rejected by preflight; Conditioner.empty_prompt_like raises for them otherwise
        self._conditioner = teacher.conditioner
        return self

    @property
    def teacher_w(self) -> float:
        return float(self.w)

    def prepare(self, cond, null, generator=None):
        b, device = condition_batch_size(cond), self._device(cond)
        dropped = uniform((b,), generator, device) < self.proportion_empty_prompts
        if self.dropped_caption == "empty_prompt":
            if self._conditioner is None:
                raise RuntimeError("guidance.dropped_caption=empty_prompt: bind(teacher) was not called")
            replacement = self._conditioner.empty_prompt_like(cond)
        else:
            replacement = null
        return GuidedBatch(cond=select_condition(dropped, replacement, cond), uncond=null,
                           teacher_guider=guider_for(self.w), w_embedding=None, dropped=dropped)
