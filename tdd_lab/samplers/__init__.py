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

SAMPLERS = {"tdd": TDDSampler, "lcm": LCMSampler, "tcd": TCDSampler, "ddim": DDIMSampler, "dpmpp": DPMppSampler,
            "flow_tdd": FlowTDDSampler}

__all__ = ["SAMPLERS", "DDIMSampler", "DPMppSampler", "FlowTDDSampler", "LCMSampler", "Sampler", "TCDSampler", "TDDSampler"]
