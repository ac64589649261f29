"""Few-step samplers: each wraps one diffusers scheduler behind one ``sample`` signature."""

from tdd_lab.samplers.base import Sampler
from tdd_lab.samplers.schedulers import (
    DDIMSampler,
    DPMppSampler,
    FlowTDDSampler,
    LCMSampler,
    TCDSampler,
    TDDSampler,
)

__all__ = ["DDIMSampler", "DPMppSampler", "FlowTDDSampler", "LCMSampler", "Sampler", "TCDSampler", "TDDSampler"]
