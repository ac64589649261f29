"""Base contract of a guidance mode (TDD_SPEC section 4): how the teacher is guided during distillation,
what the student is conditioned on, and how the student is sampled afterwards.

The combination of conditional and unconditional outputs itself is the guider's
(:mod:`tdd_lab.guider`, strength ``w``: out_c + w (out_c - out_u)); a guidance mode decides *which*
guider the teacher uses per batch and records the teacher's ``w`` once (``teacher_w``), which the
evaluation, the metrics' references and the export read from here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch

from tdd_lab.conditioner import Condition, first_leaf
from tdd_lab.guider import Guider, guider_for


@dataclass
class GuidedBatch:
    """What one training step needs from the guidance mode."""

    cond: Condition                      # (B, ...) condition of student, teacher cond branch and target
    uncond: Condition                    # (B, ...) the null condition (teacher uncond branch)
    teacher_guider: Guider               # how the teacher's step is guided (strength w, per sample or fixed)
    w_embedding: torch.Tensor | None     # (B, D) student guidance embedding (timestep_cond), or None
    dropped: torch.Tensor                # (B,) bool: condition replaced by the null condition


class Guidance(ABC):
    """Decides per batch the student/teacher conditions and the teacher's guider."""

    embedding_dim: int | None = None  # size of the student's w-embedding, None when it has none

    @property
    @abstractmethod
    def teacher_w(self) -> float:
        """The teacher's guidance strength w of the trajectory the student is evaluated against."""

    def bind(self, teacher) -> Guidance:
        """Called once by the training module with its teacher; the guidance modes that need the teacher's
        conditioner keep it here. Returns self."""
        return self

    @abstractmethod
    def prepare(self, cond: Condition, null: Condition, generator: torch.Generator | None = None) -> GuidedBatch:
        """Build the :class:`GuidedBatch` for conditions ``cond`` (B, ...) and the null condition (B, ...)."""

    def teacher_guider(self) -> Guider:
        """The teacher's guider at ``teacher_w`` (evaluation references, metrics)."""
        return guider_for(self.teacher_w)

    def student_sampling(self, guidance_scale: float = 1.0) -> tuple[Guider, Callable | None]:
        """How to sample the student: (guider, w-embedding fn ``(batch, device) -> (B, D)`` or None).

        Default (no w-embedding): the student distilled the guided trajectory, so it samples with
        ``guidance_scale`` (diffusers' convention, 1 = plain) on itself; > 1 is the post-tuning that
        decoupled guidance enables.
        """
        from tdd_lab.guider import ClassifierFreeGuidance

        return ClassifierFreeGuidance.from_scale(guidance_scale), None

    @staticmethod
    def _device(cond: Condition) -> torch.device:
        return first_leaf(cond).device
