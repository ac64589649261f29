"""Teacher ODE solvers: one guided teacher step t -> t' along the ``num_ddim_timesteps`` grid."""

from tdd_lab.solvers.base import TeacherSolver
from tdd_lab.solvers.ddim import DDIMSolver
from tdd_lab.solvers.euler import FlowEulerSolver

__all__ = ["DDIMSolver", "FlowEulerSolver", "TeacherSolver"]
