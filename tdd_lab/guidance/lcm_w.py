"""LCM guidance: w ~ U[w_min, w_max] and a w-embedding for the student (Luo et al. 2023, sec. 4.2)."""

from __future__ import annotations

import math

import torch

from tdd_lab.conditioner import condition_batch_size
from tdd_lab.guidance.base import Guidance, GuidedBatch
from tdd_lab.guider import ClassifierFreeGuidance, NoGuidance
from tdd_lab.utils.tensors import uniform
from tdd_lab.utils.validation import check_int, check_range


def guidance_scale_embedding(w: torch.Tensor, embedding_dim: int = 256) -> torch.Tensor:
    """Sinusoidal embedding of 1000 w (VDM appendix; diffusers' LCM ``timestep_cond``): (B,) -> (B, D)."""
    w = w.float() * 1000.0
    half = embedding_dim // 2
    freqs = torch.exp(-math.log(10000.0) / (half - 1) * torch.arange(half, dtype=torch.float32, device=w.device))
    emb = w[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)
    if embedding_dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


class LCMWGuidance(Guidance):
    """Per-sample w ~ U[w_min, w_max]; the student receives ``guidance_scale_embedding(w)``.

    ``eval_w`` is the w the student is evaluated, exported and sampled at (its embedding input, and the
    teacher reference's guidance); it must lie in [w_min, w_max].
    """

    def __init__(
        self,
        w_min: float = 3.0,        # smallest teacher guidance strength
        w_max: float = 15.0,       # largest teacher guidance strength
        embedding_dim: int = 256,  # student's time_cond_proj_dim
        eval_w: float = 3.5,       # the w of evaluation and sampling (embedding input; teacher reference)
    ):
        check_range("guidance.w_min", w_min, 0.0)
        check_range("guidance.w_max", w_max, 0.0)
        if w_min > w_max:
            raise ValueError(f"guidance.w_min must be <= guidance.w_max, got {w_min} > {w_max}")
        check_range("guidance.eval_w", eval_w, w_min, w_max)
        check_int("guidance.embedding_dim", embedding_dim, 2)
        self.w_min, self.w_max, self.embedding_dim, self.eval_w = w_min, w_max, embedding_dim, eval_w

    @property
    def teacher_w(self) -> float:
        return float(self.eval_w)

    def student_sampling(self, guidance_scale: float = 1.0):
        """The student takes w = ``eval_w`` through its embedding; no CFG on the student."""
        if guidance_scale != 1.0:
            raise ValueError("guidance_scale: students with a w-embedding (guidance=lcm_w) take w through the "
                             "embedding, not CFG; sample them with guidance_scale=1")
        return NoGuidance(), lambda b, device: guidance_scale_embedding(
            torch.full((b,), float(self.eval_w), device=device), self.embedding_dim)

    def prepare(self, cond, null, generator=None):
        b, device = condition_batch_size(cond), self._device(cond)
        w = self.w_min + (self.w_max - self.w_min) * uniform((b,), generator, device)
        return GuidedBatch(cond=cond, uncond=null, teacher_guider=ClassifierFreeGuidance(w),
                           w_embedding=guidance_scale_embedding(w, self.embedding_dim),
                           dropped=torch.zeros(b, dtype=torch.bool, device=device))
