"""Denoiser networks with one call signature: ``net(x_t, t, cond, timestep_cond=None) -> raw output``."""

from tdd_lab.nets.mlp import MLPDenoiser
from tdd_lab.nets.unet import UNetDenoiser

__all__ = ["MLPDenoiser", "UNetDenoiser"]
