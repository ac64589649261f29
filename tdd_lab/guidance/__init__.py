"""Guidance modes during distillation: how the teacher is guided and what the student is conditioned on."""

from tdd_lab.guidance.base import Guidance, GuidedBatch
from tdd_lab.guidance.decoupled import DecoupledGuidance
from tdd_lab.guidance.fixed import FixedGuidance
from tdd_lab.guidance.lcm_w import LCMWGuidance, guidance_scale_embedding

__all__ = ["DecoupledGuidance", "FixedGuidance", "Guidance", "GuidedBatch", "LCMWGuidance", "guidance_scale_embedding"]
