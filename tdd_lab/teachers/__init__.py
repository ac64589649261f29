"""Teachers behind one denoiser contract (k-diffusion's ``external`` pattern)."""

from tdd_lab.teachers.base import Teacher
from tdd_lab.teachers.gmm import GaussianMixture, GMMTeacher, solve_pf_ode
from tdd_lab.teachers.latent import FluxTeacher, StableDiffusionTeacher, StableDiffusionXLTeacher

__all__ = ["FluxTeacher", "GMMTeacher", "GaussianMixture", "StableDiffusionTeacher", "StableDiffusionXLTeacher",
           "Teacher", "solve_pf_ode"]
