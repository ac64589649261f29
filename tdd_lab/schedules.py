"""Noise schedules: variance-preserving (DDPM family) and flow matching (FLUX / SD3).

A schedule maps an integer training timestep ``t in [0, T)`` to a signal scale ``a_t`` and a
noise scale ``s_t`` with ``x_t = a_t x0 + s_t eps``. Everything downstream (solvers, the
consistency function, strategies) only sees ``(a_t, s_t)``, so the same code serves

* VP:   ``a_t = sqrt(abar_t)``, ``s_t = sqrt(1 - abar_t)`` (DDPM, Ho et al. 2020);
* flow: ``a_t = 1 - sigma_t``, ``s_t = sigma_t`` (rectified flow, Liu et al. 2022; Esser et al. 2024),
  on the ``sigma * T`` axis used by diffusers' ``FlowMatchEulerDiscreteScheduler``.

Betas reproduce diffusers' ``DDPMScheduler`` exactly (same float32 ops), so ``alphas_cumprod``
matches bit for bit; the ``(a, s)`` tables are then kept in float64.

A schedule is an ``nn.Module`` whose ``(a, s)`` tables are (non-persistent) buffers: it lives inside
the denoisers that use it, so one ``.to(device)`` of the LightningModule moves every table and no
step copies or checks devices.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import numpy as np
import torch
from torch import nn

from tdd_lab.utils.tensors import gather_per_sample
from tdd_lab.utils.validation import check_choice, check_int, check_range

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


def cosine_betas(num_train_timesteps: int, max_beta: float = 0.999) -> torch.Tensor:
    """Betas of the cosine schedule (Nichol & Dhariwal 2021, eq. 17): (T,) float32."""

    def alpha_bar(u: float) -> float:
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [
        min(1 - alpha_bar((i + 1) / num_train_timesteps) / alpha_bar(i / num_train_timesteps), max_beta)
        for i in range(num_train_timesteps)
    ]
    return torch.tensor(betas, dtype=torch.float32)


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Shift/scale sqrt(abar) so that the last step has zero SNR (Lin et al. 2023, Alg. 1): (T,) -> (T,)."""
    abar_sqrt = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = abar_sqrt[0].clone(), abar_sqrt[-1].clone()
    abar_sqrt = (abar_sqrt - last) * (first / (first - last))
    abar = abar_sqrt**2
    alphas = torch.cat([abar[0:1], abar[1:] / abar[:-1]])
    return 1 - alphas


def make_betas(
    num_train_timesteps: int = 1000,
    beta_start: float = 0.0001,
    beta_end: float = 0.02,
    beta_schedule: str = "linear",
    rescale_betas_zero_snr: bool = False,
) -> torch.Tensor:
    """Betas as diffusers' ``DDPMScheduler`` builds them: (T,) float32."""
    check_int("num_train_timesteps", num_train_timesteps, 2)
    check_choice("beta_schedule", beta_schedule, BETA_SCHEDULES)
    if beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    elif beta_schedule == "scaled_linear":  # latent diffusion (SD1.5, SDXL)
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
    else:
        betas = cosine_betas(num_train_timesteps)
    return rescale_zero_terminal_snr(betas) if rescale_betas_zero_snr else betas


def flow_shift(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """Static resolution shift of SD3 (Esser et al. 2024, eq. 23): sigma -> shift*sigma / (1 + (shift-1)*sigma)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def exponential_time_shift(sigmas: torch.Tensor, mu: float, power: float = 1.0) -> torch.Tensor:
    """FLUX's dynamic shift: sigma -> e^mu / (e^mu + (1/sigma - 1)^power)."""
    return math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1) ** power)


def calculate_shift(
    image_seq_len: int,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """FLUX's ``mu`` as a linear function of the number of latent tokens."""
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * slope + (base_shift - slope * base_seq_len)


class NoiseSchedule(nn.Module, ABC):
    """Per-timestep ``(a_t, s_t)`` tables of a forward process ``x_t = a_t x0 + s_t eps`` (buffers)."""

    kind: str  # "vp" or "flow"
    alphas: torch.Tensor  # (T,) float64 signal scales a_t (buffer)
    sigmas: torch.Tensor  # (T,) float64 noise scales s_t (buffer)

    def __init__(self, num_train_timesteps: int):
        super().__init__()
        self.num_train_timesteps = num_train_timesteps

    def _set_tables(self, alphas: torch.Tensor, sigmas: torch.Tensor) -> None:
        self.register_buffer("alphas", alphas.double(), persistent=False)
        self.register_buffer("sigmas", sigmas.double(), persistent=False)

    def _apply(self, fn, *args, **kwargs):
        """Moves keep the tables in float64 (a ``.half()`` of the surrounding model must not round them)."""
        alphas, sigmas = self.alphas, self.sigmas
        super()._apply(fn, *args, **kwargs)
        self.alphas, self.sigmas = alphas.to(self.alphas.device), sigmas.to(self.sigmas.device)
        return self

    def alpha_sigma(self, t: torch.Tensor, ndim: int, dtype: torch.dtype = torch.float32):
        """``(a_t, s_t)`` for integer timesteps ``t`` (B,), each shaped (B, 1, ..., 1) with ``ndim`` dims.

        ``t`` lives where the schedule lives (both are placed by the module that owns them).
        """
        a = gather_per_sample(self.alphas, t, ndim).to(dtype)
        s = gather_per_sample(self.sigmas, t, ndim).to(dtype)
        return a, s

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Forward process ``x_t = a_t x0 + s_t eps``: (B, ...) -> (B, ...)."""
        a, s = self.alpha_sigma(t, x0.ndim, x0.dtype)
        return a * x0 + s * eps

    @abstractmethod
    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """The timestep value a network of this family is called with (integer t, or sigma*T for flow)."""

    @abstractmethod
    def diffusers_config(self) -> dict:
        """The settings that rebuild this schedule (diffusers scheduler keys; cache keys and exports)."""

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.diffusers_config().items())


class VPSchedule(NoiseSchedule):
    """Variance-preserving DDPM schedule, ``alphas_cumprod`` identical to diffusers' ``DDPMScheduler``."""

    kind = "vp"

    def __init__(
        self,
        num_train_timesteps: int = 1000,   # T
        beta_start: float = 0.00085,       # SD1.5 / SDXL defaults
        beta_end: float = 0.012,
        beta_schedule: str = "scaled_linear",
        rescale_betas_zero_snr: bool = False,
    ):
        super().__init__(num_train_timesteps)
        check_range("beta_start", beta_start, 0.0, 1.0, low_inclusive=False)
        check_range("beta_end", beta_end, 0.0, 1.0, low_inclusive=False)
        self.beta_start, self.beta_end, self.beta_schedule = beta_start, beta_end, beta_schedule
        self.rescale_betas_zero_snr = rescale_betas_zero_snr
        self.betas = make_betas(num_train_timesteps, beta_start, beta_end, beta_schedule, rescale_betas_zero_snr)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)  # (T,) float32, as diffusers
        abar = self.alphas_cumprod.double()
        self._set_tables(abar.sqrt(), (1 - abar).sqrt())

    def diffusers_config(self) -> dict:
        """The keys a diffusers VP scheduler needs to reproduce this schedule (epsilon outputs)."""
        return dict(num_train_timesteps=self.num_train_timesteps, beta_start=self.beta_start,
                    beta_end=self.beta_end, beta_schedule=self.beta_schedule,
                    rescale_betas_zero_snr=self.rescale_betas_zero_snr, prediction_type="epsilon")

    @classmethod
    def from_diffusers_config(cls, config) -> VPSchedule:
        """Build from a diffusers scheduler config (dict or FrozenDict) of an SD1.5/SDXL checkpoint."""
        get = config.get if hasattr(config, "get") else lambda k, d=None: getattr(config, k, d)
        if get("trained_betas", None) is not None:
            raise ValueError("schedules with explicit trained_betas are not supported")
        return cls(
            num_train_timesteps=get("num_train_timesteps", 1000),
            beta_start=get("beta_start", 0.0001),
            beta_end=get("beta_end", 0.02),
            beta_schedule=get("beta_schedule", "linear"),
            rescale_betas_zero_snr=get("rescale_betas_zero_snr", False),
        )

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        return t


class FlowMatchSchedule(NoiseSchedule):
    """Rectified-flow schedule on the ``sigma * T`` axis: sigma_t = shift((t + 1) / T).

    Either a static ``shift`` (SD3: 3.0) or FLUX's dynamic exponential shift with ``mu``
    (see :func:`calculate_shift`); training and sampling must use the same one.
    """

    kind = "flow"

    def __init__(
        self,
        num_train_timesteps: int = 1000,  # T
        shift: float = 1.0,               # static shift (ignored when mu is given)
        mu: float | None = None,          # dynamic (FLUX) shift parameter
        dynamic_shift: dict | None = None,  # FLUX's mu rule (base_shift, max_shift, base/max_image_seq_len)
    ):
        super().__init__(num_train_timesteps)
        check_range("shift", shift, 0.0, low_inclusive=False)
        self.shift, self.mu = shift, mu
        self.dynamic_shift = dict(dynamic_shift or {})  # recorded so samplers at other resolutions recompute mu
        base = torch.from_numpy(np.linspace(1, num_train_timesteps, num_train_timesteps) / num_train_timesteps)
        sig = exponential_time_shift(base, mu) if mu is not None else flow_shift(base, shift)
        self._set_tables(1.0 - sig.double(), sig.double())

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        return (self.sigmas[t] * self.num_train_timesteps).float()

    def diffusers_config(self) -> dict:
        """What the flow samplers need to rebuild this schedule (``kind`` marks it as flow matching)."""
        return dict(kind="flow", num_train_timesteps=self.num_train_timesteps, shift=self.shift, mu=self.mu,
                    **self.dynamic_shift)


def schedule_from_config(config: dict) -> NoiseSchedule:
    """The schedule recorded by ``diffusers_config()`` (``kind: flow`` marks flow matching)."""
    cfg = dict(config)
    cfg.pop("prediction_type", None)
    if cfg.pop("kind", "vp") == "flow":
        t, shift, mu = cfg.pop("num_train_timesteps"), cfg.pop("shift", 1.0), cfg.pop("mu", None)
        return FlowMatchSchedule(t, shift=shift, mu=mu, dynamic_shift=cfg or None)
    return VPSchedule(**cfg)
