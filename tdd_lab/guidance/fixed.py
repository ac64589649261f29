"""Fixed teacher CFG scale, no student embedding (the TDD/LCM-LoRA setting without prompt dropping)."""

from __future__ import annotations

import torch

from tdd_lab.guidance.base import Guidance, GuidedBatch, condition_batch_size, expand_condition
from tdd_lab.utils.validation import check_range


class FixedGuidance(Guidance):
    """Teacher guided at a constant ``w`` ("w + 1" form); every sample keeps its condition."""

    def __init__(self, w: float = 3.5):  # teacher CFG scale, x_w = x_c + w (x_c - x_u)
        check_range("w", w, 0.0)
        self.w = w
        self.needs_uncond = w != 0  # w = 0 (e.g. FLUX-dev's embedded guidance): the teacher runs unguided

    def prepare(self, cond, null, generator=None):
        b, device = condition_batch_size(cond), self._device(cond)
        return GuidedBatch(
            cond=cond,
            uncond=expand_condition(null, b),
            w=torch.full((b,), self.w, device=device),
            w_embedding=None,
            dropped=torch.zeros(b, dtype=torch.bool, device=device),
        )
