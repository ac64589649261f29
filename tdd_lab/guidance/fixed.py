"""Fixed teacher guidance strength, no student embedding (the TDD/LCM-LoRA setting without prompt dropping)."""

from __future__ import annotations

import torch

from tdd_lab.conditioner import condition_batch_size
from tdd_lab.guidance.base import Guidance, GuidedBatch
from tdd_lab.guider import guider_for
from tdd_lab.utils.validation import check_range


class FixedGuidance(Guidance):
    """Teacher guided at a constant ``w``; every sample keeps its condition.

    ``w = 0`` (guidance-distilled teachers such as FLUX-dev, whose guidance is a network input): the
    teacher runs unguided, one forward per step.
    """

    def __init__(self, w: float = 3.5):  # teacher guidance strength, x_w = x_c + w (x_c - x_u)
        check_range("guidance.w", w, 0.0)
        self.w = w

    @property
    def teacher_w(self) -> float:
        return float(self.w)

    def prepare(self, cond, null, generator=None):
        b, device = condition_batch_size(cond), self._device(cond)
        return GuidedBatch(cond=cond, uncond=null, teacher_guider=guider_for(self.w), w_embedding=None,
                           dropped=torch.zeros(b, dtype=torch.bool, device=device))
