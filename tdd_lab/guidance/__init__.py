"""Guidance modes during distillation: how the teacher is guided and what the student is conditioned on."""

from typing import Any

from tdd_lab.guidance.base import Guidance, GuidedBatch, cfg_combine, concat_conditions, select_condition
from tdd_lab.guidance.decoupled import DecoupledGuidance
from tdd_lab.guidance.fixed import FixedGuidance
from tdd_lab.guidance.lcm_w import LCMWGuidance, guidance_scale_embedding
from tdd_lab.utils.validation import build_from_registry

GUIDANCES = {"fixed": FixedGuidance, "lcm_w": LCMWGuidance, "decoupled": DecoupledGuidance}


def build_guidance(name: str, **params: Any) -> Guidance:
    """Instantiate a guidance mode by option name; unknown names/parameters raise ``ValueError``."""
    return build_from_registry("guidance", GUIDANCES, name, **params)


__all__ = [
    "GUIDANCES",
    "DecoupledGuidance",
    "FixedGuidance",
    "Guidance",
    "GuidedBatch",
    "LCMWGuidance",
    "build_guidance",
    "cfg_combine",
    "concat_conditions",
    "guidance_scale_embedding",
    "select_condition",
]
