"""FlowTDDScheduler: TDD sampling for flow-matching models (FLUX, SD3) as a diffusers scheduler.

The flow analogue of :class:`TDDScheduler` (TDD_SPEC sections 1 and 5). The model output is the
velocity v = eps - x0 at sigma_t, so x0_hat = x - sigma_t v and eps_hat = x + (1 - sigma_t) v.
Step i: jump to s = floor((1 - eta) t_{i+1}) with x_s = (1 - sigma_s) x0_hat + sigma_s eps_hat (the
Euler jump), then, if eta > 0, re-noise s -> t_{i+1}:
x = a_t/a_s x_s + sqrt(sigma_t^2 - (a_t sigma_s / a_s)^2) z with a = 1 - sigma. The last step returns x0_hat.

Timesteps live on the integer training axis t in [0, T) whose sigmas are
sigma_t = shift((t + 1) / T), shifted exactly like training (:class:`tdd_lab.schedules.FlowMatchSchedule`):
FLUX's dynamic shift with ``mu`` (``FluxPipeline`` computes it from the image size and passes it to
``set_timesteps``) or a static ``shift``. ``timesteps`` holds sigma * T (what the pipelines feed the
transformer, divided by 1000); ``grid_timesteps`` the integer grid points. Drop-in for ``FluxPipeline``::

    pipe.scheduler = FlowTDDScheduler.from_pretrained("run/student/scheduler")
    image = pipe(prompt, num_inference_steps=4, guidance_scale=3.5).images[0]

``FluxPipeline`` also passes its own linear ``sigmas``; only their count is used: TDD samples on
the grid the student was distilled on. ``eta`` is a config value (the FLUX pipeline has no ``eta``),
and since ``FluxPipeline`` does not hand its generator to ``step``, set ``pipe.scheduler.generator``
(a seeded ``torch.Generator``) for reproducible re-noising when eta > 0.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from tdd_lab.schedulers.scheduling_tdd import StepIndexMixin, TDDSchedulerOutput
from tdd_lab.schedules import exponential_time_shift, flow_shift
from tdd_lab.timesteps import check_grid_size, ddim_grid, equidistant_schedule, nonequidistant_schedule
from tdd_lab.utils.validation import check_choice, check_range


def flow_sigma_table(num_train_timesteps: int, shift: float = 1.0, mu: float | None = None) -> torch.Tensor:
    """sigma_t for t = 0..T-1: shift((t + 1)/T), dynamic (``mu``) or static: (T,) float64."""
    base = torch.from_numpy(np.linspace(1, num_train_timesteps, num_train_timesteps) / num_train_timesteps)
    return exponential_time_shift(base, mu) if mu is not None else flow_shift(base, shift)


class FlowTDDScheduler(StepIndexMixin, SchedulerMixin, ConfigMixin):
    """Target-Driven Distillation sampler for rectified-flow models (velocity outputs)."""

    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        shift: float = 1.0,                  # static shift (SD3: 3.0) when not dynamic
        use_dynamic_shifting: bool = False,  # FLUX: mu from the image token count (the pipeline passes it)
        base_shift: float = 0.5,
        max_shift: float = 1.15,
        base_image_seq_len: int = 256,
        max_image_seq_len: int = 4096,
        mu: float | None = None,             # the mu of training, used when the caller passes none
        tdd_train_step: int = 250,           # N of the distillation grid
        eta: float = 0.2,                    # gamma of the jumps; 0 = deterministic Euler/DDIM projection
        timestep_schedule: str = "equidistant",
    ):
        check_grid_size(num_train_timesteps, tdd_train_step)
        check_range("eta", eta, 0.0, 1.0)
        check_choice("timestep_schedule", timestep_schedule, ("equidistant", "nonequidistant"))
        self.init_noise_sigma = 1.0
        self.num_inference_steps: int | None = None
        self._mu = mu
        self.sigma_table = flow_sigma_table(num_train_timesteps, shift, mu if use_dynamic_shifting else None)
        self.grid_timesteps = torch.arange(num_train_timesteps - 1, -1, -1, dtype=torch.long)
        self.timesteps = (self.sigma_table.flip(0) * num_train_timesteps).float()
        self._step_index: int | None = None
        self._begin_index: int | None = None
        self.generator: torch.Generator | None = None  # re-noising source when step() gets none

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        sigmas: list[float] | np.ndarray | None = None,   # only their count is used (see module doc)
        mu: float | None = None,                          # FLUX's dynamic shift for this image size
        timesteps: list[int] | None = None,               # explicit grid timesteps (descending ints)
    ) -> None:
        cfg = self.config
        if num_inference_steps is None and sigmas is not None:
            num_inference_steps = len(sigmas)
        mu = mu if mu is not None else self._mu
        if cfg.use_dynamic_shifting:
            if mu is None:
                raise ValueError("use_dynamic_shifting=True needs `mu` (FluxPipeline passes it) or config.mu")
            self.sigma_table = flow_sigma_table(cfg.num_train_timesteps, mu=mu)
        if timesteps is not None:
            ts = torch.as_tensor(list(timesteps), dtype=torch.long)
            if ts.numel() == 0 or (ts[1:] >= ts[:-1]).any() or ts[0] >= cfg.num_train_timesteps or ts[-1] < 0:
                raise ValueError(f"`timesteps` must be strictly descending in [0, {cfg.num_train_timesteps - 1}]")
        elif num_inference_steps is not None:
            grid = ddim_grid(cfg.num_train_timesteps, cfg.tdd_train_step)
            rule = nonequidistant_schedule if cfg.timestep_schedule == "nonequidistant" else equidistant_schedule
            ts = rule(grid, int(num_inference_steps))
        else:
            raise ValueError("pass `num_inference_steps`, `sigmas` or `timesteps`")
        self.num_inference_steps = ts.numel()
        self.grid_timesteps = ts
        self.sigmas = self.sigma_table[ts].float()
        self.timesteps = (self.sigmas * cfg.num_train_timesteps).to(device=device)
        self._step_index = None
        self._begin_index = None

    def _init_step_index(self, timestep) -> None:
        if self._begin_index is not None:
            self._step_index = self._begin_index
            return
        t = float(timestep.flatten()[0].item() if isinstance(timestep, torch.Tensor) else timestep)
        hits = (self.timesteps.cpu() - t).abs() < 1e-3 * max(1.0, abs(t))
        if not hits.any():
            raise ValueError(f"timestep {t} is not in the schedule {self.timesteps.tolist()}")
        self._step_index = int(hits.nonzero()[0])

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
        eta: float | None = None,
    ) -> TDDSchedulerOutput | tuple:
        """One TDD step; ``model_output`` is the velocity v = eps - x0 at (sample, timestep)."""
        if self.num_inference_steps is None:
            raise ValueError("call `set_timesteps` before `step`")
        eta = self.config.eta if eta is None else eta
        check_range("eta", eta, 0.0, 1.0)
        if self._step_index is None:
            self._init_step_index(timestep)
        i = self._step_index
        table = self.sigma_table
        x, v = sample.float(), model_output.float()
        sig = float(table[int(self.grid_timesteps[i])])
        x0, eps = x - sig * v, x + (1 - sig) * v                      # (B, ...) each
        if i + 1 >= len(self.grid_timesteps):
            prev = x0
        else:
            t_next = int(self.grid_timesteps[i + 1])
            s = int(math.floor((1 - eta) * t_next))
            sig_s, sig_t = float(table[s]), float(table[t_next])
            prev = (1 - sig_s) * x0 + sig_s * eps
            if eta > 0 and s != t_next:
                ratio = (1 - sig_t) / (1 - sig_s)
                gen = generator if generator is not None else self.generator
                noise = randn_tensor(x.shape, generator=gen, device=x.device, dtype=x.dtype)
                prev = ratio * prev + math.sqrt(max(sig_t**2 - (ratio * sig_s) ** 2, 0.0)) * noise
        self._step_index += 1
        prev = prev.to(sample.dtype)
        if not return_dict:
            return (prev, x0.to(sample.dtype))
        return TDDSchedulerOutput(prev_sample=prev, denoised=x0.to(sample.dtype))

    def scale_noise(self, sample: torch.Tensor, timestep: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Forward process at sigma = timestep / T: (1 - sigma) x0 + sigma eps (img2img helpers)."""
        sigma = (timestep.float() / self.config.num_train_timesteps).to(sample.device)
        sigma = sigma.reshape(-1, *([1] * (sample.ndim - 1)))
        return (1 - sigma) * sample + sigma * noise
