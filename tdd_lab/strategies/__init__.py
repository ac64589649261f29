"""Target-timestep strategies: map the teacher's previous grid point t' to a target s <= t'."""

from typing import Any

from tdd_lab.strategies.base import TargetStrategy
from tdd_lab.strategies.lcm import LCMStrategy
from tdd_lab.strategies.pcm import PCMStrategy
from tdd_lab.strategies.tcd import TCDStrategy
from tdd_lab.strategies.tdd import TDDStrategy
from tdd_lab.utils.validation import build_from_registry

STRATEGIES = {"tdd": TDDStrategy, "lcm": LCMStrategy, "pcm": PCMStrategy, "tcd": TCDStrategy}


def build_strategy(name: str, **params: Any) -> TargetStrategy:
    """Instantiate a strategy by option name; unknown names/parameters raise ``ValueError``."""
    return build_from_registry("strategy", STRATEGIES, name, **params)


__all__ = ["STRATEGIES", "LCMStrategy", "PCMStrategy", "TCDStrategy", "TDDStrategy", "TargetStrategy", "build_strategy"]
