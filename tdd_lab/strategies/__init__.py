"""Target-timestep strategies: map the teacher's previous grid point t' to a target s <= t'."""

from tdd_lab.strategies.base import TargetStrategy
from tdd_lab.strategies.lcm import LCMStrategy
from tdd_lab.strategies.pcm import PCMStrategy
from tdd_lab.strategies.tcd import TCDStrategy
from tdd_lab.strategies.tdd import TDDStrategy

__all__ = ["LCMStrategy", "PCMStrategy", "TCDStrategy", "TDDStrategy", "TargetStrategy"]
