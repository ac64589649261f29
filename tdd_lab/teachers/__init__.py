"""Teachers behind one denoiser contract (k-diffusion's ``external`` pattern)."""

from tdd_lab.teachers.base import Teacher
from tdd_lab.teachers.gmm import GaussianMixture, GMMTeacher, solve_pf_ode
from tdd_lab.teachers.latent import (
    FlowTeacher,
    FluxTeacher,
    SD3Teacher,
    StableDiffusionTeacher,
    StableDiffusionXLTeacher,
)

__all__ = ["FlowTeacher", "FluxTeacher", "GMMTeacher", "GaussianMixture", "SD3Teacher", "StableDiffusionTeacher",
           "StableDiffusionXLTeacher", "Teacher", "solve_pf_ode"]
