"""Analytic Gaussian-mixture teacher: exact denoiser and exact probability-flow ODE.

Data: p(x0) = sum_k pi_k N(mu_k, sigma_k^2 I) in d dims; each component belongs to a class
(the "prompt"), so class-conditional and unconditional denoisers exist and CFG is defined.
Under x_t = a x0 + s eps (any schedule), component k has marginal N(a mu_k, v_k I) with
v_k = a^2 sigma_k^2 + s^2, posterior mean mu_k + (a sigma_k^2 / v_k)(x_t - a mu_k), and
E[x0 | x_t] is their responsibility-weighted sum (Karras et al. 2022, app. B.1 style).

PF-ODE in scale-free variables y = x / a, rho = s / a: dy/drho = E[eps | x_t], the same for
every schedule (the DDIM ODE, Song et al. 2021, eq. 14); we solve it with RK4 in log rho.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from safetensors.torch import load_file
from torch import nn

from tdd_lab.conditioner import LabelConditioner
from tdd_lab.denoiser import Denoiser
from tdd_lab.guider import cfg_combine
from tdd_lab.nets.mlp import MLPDenoiser
from tdd_lab.schedules import NoiseSchedule, VPSchedule
from tdd_lab.teachers.base import Teacher
from tdd_lab.utils.cache import cached_dir, default_cache_dir
from tdd_lab.utils.images import save_scatter
from tdd_lab.utils.tensors import append_dims

NULL_LABEL = -1  # the unconditional "prompt"
# code version of the cached student init: bump when tdd_lab.pretrain.fit_gmm_student_init or MLPDenoiser changes
STUDENT_INIT_VERSION = 1


class GaussianMixture:
    """Isotropic Gaussian mixture with class labels per component; all math in float64."""

    def __init__(
        self,
        means: torch.Tensor,            # (C, d) component means mu_k
        stds: torch.Tensor,             # (C,) component std sigma_k
        weights: torch.Tensor,          # (C,) mixture weights pi_k (normalised here)
        component_class: torch.Tensor,  # (C,) int64 class of each component
    ):
        if means.ndim != 2:
            raise ValueError(f"means must be (C, d), got shape {tuple(means.shape)}")
        c = means.shape[0]
        for name, v in (("stds", stds), ("weights", weights), ("component_class", component_class)):
            if v.shape != (c,):
                raise ValueError(f"{name} must have shape ({c},), got {tuple(v.shape)}")
        if (stds <= 0).any() or (weights <= 0).any():
            raise ValueError("stds and weights must be positive")
        self.means = means.double()
        self.stds = stds.double()
        self.weights = weights.double() / weights.double().sum()
        self.component_class = component_class.long()
        self.num_classes = int(self.component_class.max()) + 1

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @classmethod
    def ring(
        cls, num_components: int = 8, num_classes: int = 4, radius: float = 1.0, std: float = 0.08
    ) -> GaussianMixture:
        """2-D mixture on a circle; class c owns ``num_components // num_classes`` adjacent components."""
        if num_components % num_classes:
            raise ValueError("num_components must be a multiple of num_classes")
        angle = torch.arange(num_components, dtype=torch.float64) * (2 * math.pi / num_components)
        means = radius * torch.stack([angle.cos(), angle.sin()], dim=1)
        per = num_components // num_classes
        return cls(
            means,
            torch.full((num_components,), std),
            torch.ones(num_components),
            torch.arange(num_components) // per,
        )

    @classmethod
    def random(
        cls, dim: int, num_components: int, num_classes: int, generator: torch.Generator | None = None
    ) -> GaussianMixture:
        """Random n-D mixture (for tests): means ~ N(0, 1), stds in [0.05, 0.3], weights in [0.5, 1.5]."""
        g = generator
        return cls(
            torch.randn(num_components, dim, generator=g, dtype=torch.float64),
            0.05 + 0.25 * torch.rand(num_components, generator=g, dtype=torch.float64),
            0.5 + torch.rand(num_components, generator=g, dtype=torch.float64),
            torch.arange(num_components) % num_classes,
        )

    def _log_weights(self, labels: torch.Tensor | None, batch: int, device) -> torch.Tensor:
        """(B, C) log pi_k restricted to each sample's class (all components for NULL_LABEL)."""
        logw = self.weights.to(device).log().expand(batch, -1)
        if labels is None:
            return logw
        labels = labels.to(device).reshape(-1, 1)
        keep = (self.component_class.to(device)[None, :] == labels) | (labels == NULL_LABEL)
        return logw.masked_fill(~keep, -math.inf)

    def denoise(
        self, x: torch.Tensor, a: torch.Tensor, s: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Exact E[x0 | x_t = x, class]: x (B, d), a/s broadcastable to (B, 1), labels (B,) -> (B, d)."""
        dtype, device = x.dtype, x.device
        x = x.double()
        a = torch.as_tensor(a, dtype=torch.float64, device=device).reshape(-1, 1)  # (B or 1, 1)
        s = torch.as_tensor(s, dtype=torch.float64, device=device).reshape(-1, 1)
        mu, var = self.means.to(device), self.stds.to(device) ** 2           # (C, d), (C,)
        v = a**2 * var[None, :] + s**2                                        # (B, C)
        diff = x[:, None, :] - a[:, :, None] * mu[None]                      # (B, C, d)
        log_n = -0.5 * (diff**2).sum(-1) / v - 0.5 * self.dim * torch.log(2 * math.pi * v)
        r = torch.softmax(self._log_weights(labels, x.shape[0], device) + log_n, dim=1)  # (B, C)
        post = mu[None] + (a * var[None, :] / v)[..., None] * diff          # (B, C, d)
        return (r[..., None] * post).sum(1).to(dtype)

    def sample(
        self, n: int, labels: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact samples x0 (n, d) float64 and their classes (n,); restricted to ``labels`` when given."""
        logw = self._log_weights(labels, n, "cpu")
        comp = torch.multinomial(logw.exp(), 1, generator=generator).squeeze(1)
        x = self.means[comp] + self.stds[comp, None] * torch.randn(n, self.dim, generator=generator,
                                                                     dtype=torch.float64)
        return x, self.component_class[comp]


def vp_alpha_sigma(rho: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """VP scales for rho = s/a: a = 1/sqrt(1 + rho^2), s = rho a."""
    a = 1 / torch.sqrt(1 + rho**2)
    return a, rho * a


def solve_pf_ode(
    eps_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    rho_start: torch.Tensor | float,
    rho_end: torch.Tensor | float = 0.0,
    num_steps: int = 2000,
    rho_min: float = 1e-5,
) -> torch.Tensor:
    """High-accuracy PF-ODE solve in float64: x at rho_start -> x at rho_end, expressed on the VP scale.

    ``eps_fn(x_t, a, s)`` is the (possibly guided) E[eps | x_t]. Integrates dy/du = rho eps with
    u = log rho by classic RK4 (``num_steps`` steps); rho_end = 0 ends with one exact-limit hop
    from ``rho_min``. Returns x = a_end y (x0 itself when rho_end = 0). Shapes (B, d) -> (B, d).
    """
    x = x.double()
    rho_start = torch.as_tensor(rho_start, dtype=torch.float64).reshape(-1, 1).expand(x.shape[0], 1)
    rho_end = torch.as_tensor(rho_end, dtype=torch.float64).reshape(-1, 1).expand(x.shape[0], 1)
    to_zero = rho_end <= 0
    rho_stop = torch.where(to_zero, torch.full_like(rho_end, rho_min), rho_end)
    a0, _ = vp_alpha_sigma(rho_start)
    y = x / a0

    def f(u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        rho = u.exp()
        a, s = vp_alpha_sigma(rho)
        return rho * eps_fn(a * y, a, s).double()

    u0, u1 = rho_start.log(), rho_stop.log()
    h = (u1 - u0) / num_steps
    u = u0
    for _ in range(num_steps):
        k1 = f(u, y)
        k2 = f(u + h / 2, y + h / 2 * k1)
        k3 = f(u + h / 2, y + h / 2 * k2)
        k4 = f(u + h, y + h * k3)
        y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        u = u + h
    # final hop rho_min -> 0 (DDIM step; its error is O(rho_min^2))
    a, s = vp_alpha_sigma(rho_stop)
    y_zero = y - rho_stop * eps_fn(a * y, a, s).double()
    y = torch.where(to_zero, y_zero, y)
    a_end, _ = vp_alpha_sigma(torch.where(to_zero, torch.zeros_like(rho_end), rho_end))
    return a_end * y


class ExactMixtureNet(nn.Module):
    """Holds the mixture and the schedule of the exact denoiser (a module, so ``.to()`` reaches the schedule)."""

    def __init__(self, mixture: GaussianMixture, schedule: NoiseSchedule):
        super().__init__()
        self.mixture, self.schedule = mixture, schedule

    def posterior_mean(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """E[x0 | x_t, class] at integer timesteps t (B,) of any schedule (VP or flow): (B, d)."""
        a, s = self.schedule.alpha_sigma(t, x_t.ndim, torch.float64)
        return self.mixture.denoise(x_t, a, s, cond)


class ExactMixtureDenoiser(Denoiser):
    """The exact teacher: its "raw output" is the posterior mean itself (``sample`` prediction, float64 conversion)."""

    def __init__(self, mixture: GaussianMixture, schedule: NoiseSchedule):
        super().__init__(ExactMixtureNet(mixture, schedule), schedule, "sample", compute_dtype=torch.float64)

    def raw(self, x_t, t, cond, timestep_cond=None):
        return self.net.posterior_mean(x_t, t, cond)


class GMMTeacher(Teacher):
    """The Gaussian mixture as a prompt-conditional teacher on a discrete schedule.

    Conditions are class labels (B,) int64; the null condition is ``NULL_LABEL``. The student
    starts from an MLP regressed onto the exact denoiser (the analogue of copying a network
    teacher's weights), fitted once and cached (:func:`tdd_lab.pretrain.fit_gmm_student_init`).
    """

    def __init__(
        self,
        mixture: GaussianMixture | None = None,  # default: GaussianMixture.ring(...) with the settings below
        schedule: NoiseSchedule | None = None,   # default: VPSchedule() (SD-style scaled_linear)
        num_components: int = 8,
        num_classes: int = 4,
        radius: float = 1.0,
        std: float = 0.08,
        cache_dir: str | None = None,            # where the fitted student init is cached
        init_steps: int = 3000,                  # optimizer steps of the student-init regression
        hidden: int = 256,                       # student MLP width
        depth: int = 4,                          # student MLP residual blocks
        seed: int = 0,
    ):
        super().__init__()
        self.mixture = mixture if mixture is not None else GaussianMixture.ring(num_components, num_classes, radius, std)
        schedule = schedule if schedule is not None else VPSchedule()
        self.num_classes = self.mixture.num_classes
        self.sample_shape = (self.mixture.dim,)
        self.conditioner = LabelConditioner(self.num_classes, NULL_LABEL)
        self.denoiser = ExactMixtureDenoiser(self.mixture, schedule)
        self.cache_dir, self.init_steps, self.seed = cache_dir, init_steps, seed
        self.net_config = dict(dim=self.mixture.dim, num_classes=self.num_classes, hidden=hidden, depth=depth)

    def save_samples(self, samples, labels, path):
        save_scatter(samples, labels, path)

    def describe(self) -> dict:
        """Everything that determines this teacher (cache keys)."""
        m = self.mixture
        return {"kind": "gmm", "means": m.means.tolist(), "stds": m.stds.tolist(), "weights": m.weights.tolist(),
                "component_class": m.component_class.tolist(), "schedule": self.schedule.diffusers_config()}

    def student_network(self, share_weights: bool = False) -> nn.Module:
        """An MLP fitted to the exact (conditional and null) epsilon, loaded from the cache when present.

        The exact teacher has no network, so there are no weights to share (``share_weights`` is ignored).
        """
        from tdd_lab.pretrain import fit_gmm_student_init

        key = {**self.describe(), "net": self.net_config, "steps": self.init_steps, "seed": self.seed,
               "v": STUDENT_INIT_VERSION}
        path = cached_dir(self.cache_dir or default_cache_dir(), "gmm-student-init", key,
                          lambda out: fit_gmm_student_init(out, self, self.net_config, self.init_steps, self.seed))
        net = MLPDenoiser(**self.net_config)
        net.load_state_dict(load_file(str(path / "mlp.safetensors")))
        return net.to(self.device).train()

    def student_denoiser(self, net: nn.Module) -> Denoiser:
        """The MLP student predicts epsilon (the teacher itself is exact: x0 outputs in float64)."""
        return Denoiser(net, self.schedule, "epsilon")

    def exporter(self):
        from tdd_lab.export.native import MLPExporter

        return MLPExporter(self.describe())

    def guided_eps_fn(self, labels: torch.Tensor | None, w: float = 0.0):
        """eps(x, a, s) of the CFG-guided teacher at continuous scales (a, s), the guider's convention:
        eps_c + w (eps_c - eps_u) (:func:`tdd_lab.guider.cfg_combine`)."""

        def eps_fn(x, a, s):
            e_c = (x - a * self.mixture.denoise(x, a, s, labels)) / s
            if w == 0.0:
                return e_c
            e_u = (x - a * self.mixture.denoise(x, a, s, None)) / s
            return cfg_combine(e_c, e_u, w)

        return eps_fn

    def ode_endpoint(
        self,
        x_t: torch.Tensor,
        t_start: torch.Tensor | int,
        labels: torch.Tensor | None = None,
        w: float = 0.0,
        t_end: torch.Tensor | int | None = None,
        num_steps: int = 2000,
    ) -> torch.Tensor:
        """Exact (RK4, float64, on the CPU) PF-ODE solution from x_t at t_start to t_end (None: to clean data x0)."""
        alphas, sigmas = self.schedule.alphas.cpu(), self.schedule.sigmas.cpu()

        def rho(t):
            t = torch.as_tensor(t, dtype=torch.long).reshape(-1).cpu()
            return (sigmas[t] / alphas[t]).reshape(-1, 1)  # (B or 1, 1)

        r_end = 0.0 if t_end is None else rho(t_end)
        a_start = append_dims(alphas[torch.as_tensor(t_start).reshape(-1).cpu()], 2)
        x_vp = x_t.double().cpu() / a_start * vp_alpha_sigma(rho(t_start))[0]  # same y, on the VP scale
        labels = None if labels is None else labels.cpu()
        out = solve_pf_ode(self.guided_eps_fn(labels, w), x_vp, rho(t_start), r_end, num_steps)
        if t_end is None:
            return out
        a_end = append_dims(alphas[torch.as_tensor(t_end).reshape(-1).cpu()], 2)
        return out / vp_alpha_sigma(rho(t_end))[0] * a_end
