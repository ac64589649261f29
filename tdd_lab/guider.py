"""Classifier-free guidance (Ho & Salimans 2022) as one component, in one convention.

Convention (LCM / TDD, TDD_SPEC section 4): guidance *strength* ``w``,

    out_w = out_c + w (out_c - out_u)          ==  out_u + (1 + w) (out_c - out_u),

so ``w = 0`` is the plain conditional model and diffusers' ``guidance_scale`` is ``1 + w``
(:meth:`ClassifierFreeGuidance.from_scale`). Training (teacher w = 3.5, i.e. scale 4.5), the
samplers (teacher references, CFG post-tuning of the student), the metrics' reference ODEs and the
model cards all guide through a :class:`Guider`; nothing else combines a conditional and an
unconditional output. The cond and uncond branches run as one batched 2B forward.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from tdd_lab.conditioner import Condition, concat_conditions
from tdd_lab.utils.tensors import append_dims


def cfg_combine(out_cond: torch.Tensor, out_uncond: torch.Tensor, w: torch.Tensor | float) -> torch.Tensor:
    """out_c + w (out_c - out_u): (B, ...), (B, ...), w scalar or (B,) -> (B, ...)."""
    if isinstance(w, torch.Tensor):
        w = append_dims(w.to(out_cond.dtype), out_cond.ndim)
    return out_cond + w * (out_cond - out_uncond)


class Guider(ABC):
    """``guider(denoiser, x_t, t, cond, uncond, timestep_cond=None) -> (x0_hat, eps_hat)`` of the guided model."""

    w: float | torch.Tensor  # guidance strength (0: the conditional model alone)

    @abstractmethod
    def __call__(self, denoiser, x_t: torch.Tensor, t: torch.Tensor, cond: Condition, uncond: Condition,
                 timestep_cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x_t (B, ...), t (B,), cond/uncond (B, ...) -> (x0_hat, eps_hat) (B, ...)."""

    @property
    def guidance_scale(self) -> float:
        """diffusers' ``guidance_scale`` of this guider (1 = off)."""
        return 1.0


class NoGuidance(Guider):
    """The conditional model alone (w = 0): one forward, the null condition is not used."""

    w = 0.0

    def __call__(self, denoiser, x_t, t, cond, uncond, timestep_cond=None):
        return denoiser(x_t, t, cond, timestep_cond)

    def __repr__(self) -> str:
        return "NoGuidance()"


class ClassifierFreeGuidance(Guider):
    """CFG with strength ``w`` (a float, or per sample (B,)): out_c + w (out_c - out_u) on x0 and eps alike."""

    def __init__(self, w: float | torch.Tensor):  # guidance strength; guidance_scale = 1 + w
        self.w = w

    @classmethod
    def from_scale(cls, guidance_scale: float) -> Guider:
        """From diffusers' ``guidance_scale`` (1 + w); scale 1 gives :class:`NoGuidance` (one forward)."""
        return NoGuidance() if float(guidance_scale) == 1.0 else cls(float(guidance_scale) - 1.0)

    @property
    def guidance_scale(self) -> float:
        return 1.0 + float(self.w) if not isinstance(self.w, torch.Tensor) else float("nan")

    def __call__(self, denoiser, x_t, t, cond, uncond, timestep_cond=None):
        b = x_t.shape[0]
        tc = None if timestep_cond is None else torch.cat([timestep_cond, timestep_cond])
        x0, eps = denoiser(torch.cat([x_t, x_t]), torch.cat([t, t]), concat_conditions(cond, uncond), tc)
        return cfg_combine(x0[:b], x0[b:], self.w), cfg_combine(eps[:b], eps[b:], self.w)

    def __repr__(self) -> str:
        return f"ClassifierFreeGuidance(w={self.w})"


def guider_for(w: float | torch.Tensor) -> Guider:
    """The guider of strength ``w``: :class:`NoGuidance` for a scalar 0 (one forward), else CFG."""
    if not isinstance(w, torch.Tensor) and float(w) == 0.0:
        return NoGuidance()
    return ClassifierFreeGuidance(w)
