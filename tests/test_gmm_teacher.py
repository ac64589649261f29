"""The analytic Gaussian-mixture teacher: exact denoiser, exact ODE, DDIM convergence."""

import math

import numpy as np
import pytest
import torch

from tdd_lab.schedules import VPSchedule
from tdd_lab.solvers import DDIMSolver
from tdd_lab.solvers.ddim import ddim_step
from tdd_lab.teachers.gmm import NULL_LABEL, GaussianMixture, GMMTeacher, solve_pf_ode, vp_alpha_sigma


def log_marginal(mix: GaussianMixture, x, a, s, label=None):
    """log p_t(x) written independently: sum_k pi_k N(x; a mu_k, (a^2 sigma_k^2 + s^2) I)."""
    v = a**2 * mix.stds**2 + s**2  # (C,)
    logn = -0.5 * ((x[:, None, :] - a * mix.means[None]) ** 2).sum(-1) / v - 0.5 * mix.dim * torch.log(2 * math.pi * v)
    logw = mix.weights.log().clone()
    if label is not None:
        logw[mix.component_class != label] = -math.inf
        logw = logw - torch.logsumexp(logw, 0)
    return torch.logsumexp(logw + logn, dim=1)


@pytest.mark.parametrize("label", [None, 0, 2])
@pytest.mark.parametrize("rho", [0.05, 0.5, 3.0, 40.0])
def test_denoiser_equals_tweedie(label, rho):
    """E[x0 | x_t] = (x_t + s^2 grad log p_t(x_t)) / a  (Tweedie's formula), in 5-D."""
    mix = GaussianMixture.random(dim=5, num_components=6, num_classes=3, generator=torch.Generator().manual_seed(0))
    a, s = vp_alpha_sigma(torch.tensor(rho, dtype=torch.float64))
    x = (a * mix.sample(64, generator=torch.Generator().manual_seed(1))[0] + s * torch.randn(64, 5, dtype=torch.float64)).requires_grad_()
    score = torch.autograd.grad(log_marginal(mix, x, a, s, label).sum(), x)[0]
    tweedie = (x + s**2 * score) / a
    labels = None if label is None else torch.full((64,), label)
    torch.testing.assert_close(mix.denoise(x.detach(), a, s, labels), tweedie.detach(), rtol=1e-9, atol=1e-9)


def test_null_label_equals_unconditional():
    mix = GaussianMixture.ring()
    x = torch.randn(10, 2, dtype=torch.float64)
    torch.testing.assert_close(mix.denoise(x, 0.6, 0.8, torch.full((10,), NULL_LABEL)), mix.denoise(x, 0.6, 0.8))


def test_rk4_matches_scipy_reference():
    from scipy.integrate import solve_ivp

    teacher = GMMTeacher()
    x = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 1, NULL_LABEL])
    eps_fn = teacher.guided_eps_fn(labels, w=1.5)
    rho0, rho1 = 14.0, 0.05
    ours = solve_pf_ode(eps_fn, x, rho0, rho1, num_steps=2000)

    def rhs(rho, yflat):
        y = torch.from_numpy(yflat).reshape(3, 2)
        a, s = vp_alpha_sigma(torch.tensor(rho, dtype=torch.float64))
        return eps_fn(a * y, a, s).reshape(-1).numpy()

    a0, _ = vp_alpha_sigma(torch.tensor(rho0, dtype=torch.float64))
    sol = solve_ivp(rhs, (rho0, rho1), (x / a0).reshape(-1).numpy(), method="DOP853", rtol=1e-12, atol=1e-12)
    a1, _ = vp_alpha_sigma(torch.tensor(rho1, dtype=torch.float64))
    ref = a1 * torch.from_numpy(sol.y[:, -1]).reshape(3, 2)
    torch.testing.assert_close(ours, ref, rtol=1e-8, atol=1e-8)


def test_ode_is_reversible():
    teacher = GMMTeacher()
    x_t = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    mid = teacher.ode_endpoint(x_t, 999, t_end=300)
    back = teacher.ode_endpoint(mid, 300, t_end=999)
    torch.testing.assert_close(back, x_t, rtol=1e-7, atol=1e-7)


def test_conditional_ode_lands_on_its_class():
    mix = GaussianMixture.ring(num_components=8, num_classes=4, std=0.05)
    teacher = GMMTeacher(mix)
    labels = torch.arange(4).repeat(25)
    x_T = torch.randn(100, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    x0 = teacher.ode_endpoint(x_T, 999, labels, w=0.0, num_steps=1000)
    nearest = ((x0[:, None] - mix.means[None]) ** 2).sum(-1).argmin(1)
    assert (mix.component_class[nearest] == labels).float().mean() == 1.0
    assert ((x0 - mix.means[nearest]).norm(dim=1) < 0.3).all()


def ddim_on_rho_grid(teacher, x_T, labels, w, n, rho_max, rho_min):
    """n DDIM steps on a Karras-style rho grid (rho^(1/7) uniform), then the final hop to rho = 0."""
    grid = (rho_max ** (1 / 7) + torch.linspace(0, 1, n, dtype=torch.float64) * (rho_min ** (1 / 7) - rho_max ** (1 / 7))) ** 7
    grid = torch.cat([grid, torch.zeros(1, dtype=torch.float64)])
    eps_fn = teacher.guided_eps_fn(labels, w)
    a, s = vp_alpha_sigma(grid[0])
    x = x_T
    for i in range(n):
        eps = eps_fn(x, a, s)
        x0 = (x - s * eps) / a
        a_next, s_next = vp_alpha_sigma(grid[i + 1])
        x = ddim_step(x0, eps, a_next, s_next)
        a, s = a_next, s_next
    return x


@pytest.mark.parametrize("w", [0.0, 2.0])
def test_ddim_converges_linearly_to_exact_ode(w):
    teacher = GMMTeacher()
    sched = teacher.schedule
    rho_max = (sched.sigmas[999] / sched.alphas[999]).item()
    labels = torch.arange(64) % 4
    x_T = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    exact = teacher.ode_endpoint(x_T, 999, labels, w=w, num_steps=4000)
    ns = [16, 32, 64, 128, 256]
    errs = [(ddim_on_rho_grid(teacher, x_T, labels, w, n, rho_max, 0.002) - exact).norm(dim=1).mean().item() for n in ns]
    assert all(e1 > e2 for e1, e2 in zip(errs, errs[1:]))
    slope = np.polyfit(np.log(ns), np.log(errs), 1)[0]
    assert -1.3 < slope < -0.7, (slope, errs)  # first order: error ~ step size
    ratios = [e1 / e2 for e1, e2 in zip(errs, errs[1:])]
    assert 1.6 < ratios[-1] < 2.5, ratios


def test_discrete_ddim_solver_converges_on_teacher_grid():
    """Sampling with DDIMSolver on the teacher's own grid gets closer to the exact endpoint as N grows."""
    teacher = GMMTeacher()
    labels = torch.arange(32) % 4
    x_T = torch.randn(32, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    exact = teacher.ode_endpoint(x_T, 999, labels)
    errs = []
    for n in (10, 50, 250):
        solver = DDIMSolver(teacher.schedule, n)
        x = x_T
        for i in reversed(range(n)):
            t = solver.grid[i].expand(32)
            x0, eps = teacher.denoiser(x, t, labels)
            x = solver.step(x, t, solver.grid_prev[i].expand(32), x0, eps) if i > 0 else x0
        errs.append((x - exact).norm(dim=1).mean().item())
    assert errs[0] > errs[1] > errs[2] and errs[2] < 0.03, errs


def test_teacher_samples_and_denoise_shapes():
    teacher = GMMTeacher(schedule=VPSchedule())
    x0, cls = teacher.mixture.sample(1000, generator=torch.Generator().manual_seed(0))
    assert x0.shape == (1000, 2) and set(cls.tolist()) == {0, 1, 2, 3}
    assert x0.norm(dim=1).mean().item() == pytest.approx(1.0, abs=0.02)
    t = torch.full((4,), 500)
    x0_hat, eps_hat = teacher.denoiser(torch.randn(4, 2), t, torch.tensor([0, 1, 2, NULL_LABEL]))
    assert x0_hat.shape == eps_hat.shape == (4, 2) and x0_hat.dtype == torch.float32
