"""Teachers behind one denoiser contract (k-diffusion's ``external`` pattern)."""

from tdd_lab.teachers.base import Teacher
from tdd_lab.teachers.gmm import GaussianMixture, GMMTeacher, solve_pf_ode

__all__ = ["GMMTeacher", "GaussianMixture", "Teacher", "solve_pf_ode"]
