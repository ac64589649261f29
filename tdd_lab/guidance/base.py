"""Base contract of a guidance mode (TDD_SPEC section 4) and condition helpers.

A condition is a tensor with a leading batch dim or a (nested) dict of such tensors
(e.g. SDXL: ``{"encoder_hidden_states", "text_embeds", "time_ids"}``). The null condition
has batch size 1 and is broadcast.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from tdd_lab.utils.tensors import append_dims

Condition = Any  # torch.Tensor | dict[str, "Condition"]


def map_condition(fn: Callable[..., torch.Tensor], *conds: Condition) -> Condition:
    """Apply ``fn`` leaf-wise to tensors of identically structured conditions."""
    first = conds[0]
    if isinstance(first, dict):
        return {k: map_condition(fn, *(c[k] for c in conds)) for k in first}
    if isinstance(first, (list, tuple)):
        return type(first)(map_condition(fn, *items) for items in zip(*conds))
    return fn(*conds)


def first_leaf(cond: Condition) -> torch.Tensor:
    """The first tensor of a (nested) condition."""
    while isinstance(cond, (dict, list, tuple)):
        cond = next(iter(cond.values())) if isinstance(cond, dict) else cond[0]
    return cond


def condition_batch_size(cond: Condition) -> int:
    """Leading dim of the first tensor leaf."""
    return first_leaf(cond).shape[0]


def expand_condition(cond: Condition, batch_size: int) -> Condition:
    """Broadcast a batch-1 condition to ``batch_size``: (1, ...) -> (B, ...)."""
    return map_condition(lambda x: x.expand(batch_size, *x.shape[1:]), cond)


def select_condition(mask: torch.Tensor, null: Condition, cond: Condition) -> Condition:
    """Per sample: the null condition where ``mask`` (B,) is True, else ``cond``."""
    return map_condition(lambda n, c: torch.where(append_dims(mask.to(c.device), c.ndim), n.to(c.dtype), c), null, cond)


def concat_conditions(a: Condition, b: Condition) -> Condition:
    """Stack two batches for one batched forward: (B, ...), (B, ...) -> (2B, ...)."""
    return map_condition(lambda x, y: torch.cat([x, y]), a, b)


def cfg_combine(out_cond: torch.Tensor, out_uncond: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance in the LCM "w + 1" form: out_c + w (out_c - out_u); w (B,) broadcast."""
    w = append_dims(w.to(out_cond.dtype), out_cond.ndim)
    return out_cond + w * (out_cond - out_uncond)


@dataclass
class GuidedBatch:
    """What one training step needs from the guidance mode."""

    cond: Condition                      # (B, ...) condition of student, teacher cond branch and target
    uncond: Condition                    # (B, ...) the null condition (teacher uncond branch)
    w: torch.Tensor                      # (B,) teacher CFG scale, "w + 1" form
    w_embedding: torch.Tensor | None     # (B, D) student guidance embedding (timestep_cond), or None
    dropped: torch.Tensor                # (B,) bool: condition replaced by the null condition


class Guidance(ABC):
    """Decides per batch the student/teacher conditions and the teacher's CFG scale."""

    embedding_dim: int | None = None  # size of the student's w-embedding, None when it has none
    needs_uncond: bool = True         # False when w = 0 always (guidance-distilled teachers): no uncond forward

    @abstractmethod
    def prepare(self, cond: Condition, null: Condition, generator: torch.Generator | None = None) -> GuidedBatch:
        """Build the :class:`GuidedBatch` for conditions ``cond`` (B, ...) and the null condition (1, ...)."""

    def student_sampling(self, w: float, guidance_scale: float = 1.0):
        """How to sample the student to follow the teacher guided at ``w``: (CFG scale, w-embedding fn or None).

        Default (no w-embedding): the student distilled the guided trajectory, so it samples with
        ``guidance_scale`` on itself (1 = plain; > 1 is the post-tuning that decoupled guidance enables).
        """
        return guidance_scale, None

    @staticmethod
    def _device(cond: Condition) -> torch.device:
        return first_leaf(cond).device
