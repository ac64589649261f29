"""Few-step samplers: each wraps one diffusers scheduler behind one ``sample`` signature."""

from tdd_lab.samplers.base import Sampler
from tdd_lab.samplers.schedulers import DDIMSampler, DPMppSampler, LCMSampler, TCDSampler, TDDSampler

SAMPLERS = {"tdd": TDDSampler, "lcm": LCMSampler, "tcd": TCDSampler, "ddim": DDIMSampler, "dpmpp": DPMppSampler}

__all__ = ["SAMPLERS", "DDIMSampler", "DPMppSampler", "LCMSampler", "Sampler", "TCDSampler", "TDDSampler"]
