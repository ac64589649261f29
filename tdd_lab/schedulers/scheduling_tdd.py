"""TDDScheduler: the TDD sampler as a diffusers scheduler (TDD_SPEC section 5).

Gamma/eta sampling in the style of TCD (Zheng et al. 2024, arXiv 2402.19159, sec. 3.3) on the
timestep grid the student was distilled on, with non-equidistant schedules and x0 clipping
limited to the first steps, as in TDD (Wang et al. 2024, arXiv 2409.01347, sec. 3.4).

Use it in any SD1.5/SDXL pipeline::

    pipe.scheduler = TDDScheduler.from_config(pipe.scheduler.config, tdd_train_step=250)
    image = pipe(prompt, num_inference_steps=4, guidance_scale=1.7, eta=0.2).images[0]

Pipelines pass their ``eta`` argument (default 0.0 there) to :meth:`TDDScheduler.step`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from tdd_lab.prediction import dynamic_threshold, to_x0_eps
from tdd_lab.schedules import make_betas
from tdd_lab.timesteps import (
    SPECIAL_JUMP_TABLES,
    check_grid_size,
    ddim_grid,
    equidistant_schedule,
    nonequidistant_schedule,
)
from tdd_lab.utils.validation import check_choice, check_range

TIMESTEP_SCHEDULES = ("equidistant", "nonequidistant")


@dataclass
class TDDSchedulerOutput(BaseOutput):
    """Output of :meth:`TDDScheduler.step`.

    Args:
        prev_sample (`torch.Tensor` of shape `(B, C, H, W)`): sample at the next timestep (x0 after the last step).
        denoised (`torch.Tensor` of shape `(B, C, H, W)`): the (clipped) x0 prediction of this step.
    """

    prev_sample: torch.Tensor
    denoised: torch.Tensor | None = None


class StepIndexMixin:
    """The diffusers scheduler protocol both TDD schedulers share: step/begin index, identity input scaling."""

    _step_index: int | None
    _begin_index: int | None

    @property
    def step_index(self) -> int | None:
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Index of the first timestep (img2img pipelines call this before denoising)."""
        self._begin_index = begin_index

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        return sample

    def __len__(self) -> int:
        return self.config.num_train_timesteps


class TDDScheduler(StepIndexMixin, SchedulerMixin, ConfigMixin):
    """Target-Driven Distillation sampler.

    Step i at t_i: x0_hat from the model output; optional dynamic thresholding of x0_hat for the
    first ``t_l + 1`` steps (``thresholding=True`` and ``t_l >= 0``); DDIM jump to s = floor((1 - eta) t_{i+1}) (to x0 itself after the
    last step); if eta > 0 and not last, re-noise s -> t_{i+1}:
    x = sqrt(abar_t/abar_s) x + sqrt(1 - abar_t/abar_s) z. With eta = 0 this is DDIM.

    Args:
        num_train_timesteps (`int`, defaults to 1000): T of the teacher.
        beta_start (`float`, defaults to 0.00085), beta_end (`float`, defaults to 0.012),
        beta_schedule (`str`, defaults to `"scaled_linear"`): the teacher's betas (as `DDPMScheduler`).
        trained_betas (`list[float]`, *optional*): explicit betas, overriding the three above.
        prediction_type (`str`, defaults to `"epsilon"`): `epsilon`, `v_prediction` or `sample`.
        rescale_betas_zero_snr (`bool`, defaults to `False`): zero terminal SNR rescaling.
        thresholding (`bool`, defaults to `False`): dynamic thresholding of x0_hat.
        dynamic_thresholding_ratio (`float`, defaults to 0.995), sample_max_value (`float`, defaults to 1.0):
            its percentile and its maximum threshold.
        tdd_train_step (`int`, defaults to 250): N, the grid size the student was distilled on
            (`num_ddim_timesteps` of training).
        special_jump (`bool`, defaults to `False`): use the published non-equidistant tables where they exist
            ((N, K) = (250, 5), (250, 6), (250, 7)); other (N, K) stay equidistant, as in the public scheduler.
        t_l (`int`, defaults to -1): thresholding applies to the first t_l + 1 steps (0..t_l) only, as the
            public scheduler; the default -1 clips no step, so set t_l >= 0 together with `thresholding`.
        timestep_schedule (`str`, defaults to `"equidistant"`): `"nonequidistant"` generates the dense-at-high-noise
            schedule by rule for any N and K (see `tdd_lab.timesteps.nonequidistant_schedule`).
    """

    _compatibles = [e.name for e in KarrasDiffusionSchedulers]
    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "scaled_linear",
        trained_betas: list[float] | None = None,
        prediction_type: str = "epsilon",
        rescale_betas_zero_snr: bool = False,
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        tdd_train_step: int = 250,
        special_jump: bool = False,
        t_l: int = -1,
        timestep_schedule: str = "equidistant",
    ):
        check_choice("prediction_type", prediction_type, ("epsilon", "v_prediction", "sample"))
        check_choice("timestep_schedule", timestep_schedule, TIMESTEP_SCHEDULES)
        check_grid_size(num_train_timesteps, tdd_train_step)
        check_range("dynamic_thresholding_ratio", dynamic_thresholding_ratio, 0.0, 1.0)
        if trained_betas is not None:
            self.betas = torch.tensor(trained_betas, dtype=torch.float32)
        else:
            self.betas = make_betas(num_train_timesteps, beta_start, beta_end, beta_schedule, rescale_betas_zero_snr)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)  # (T,) float32
        self.init_noise_sigma = 1.0
        self.num_inference_steps: int | None = None
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1, dtype=torch.long)
        self._step_index: int | None = None
        self._begin_index: int | None = None

    def inference_timesteps(self, num_inference_steps: int) -> torch.Tensor:
        """The K-step schedule on the N-point training grid: (K,) int64 descending."""
        grid = ddim_grid(self.config.num_train_timesteps, self.config.tdd_train_step)
        table = SPECIAL_JUMP_TABLES.get((self.config.tdd_train_step, num_inference_steps))
        if self.config.special_jump and table is not None:
            return torch.tensor(table, dtype=torch.long)
        if self.config.timestep_schedule == "nonequidistant":
            return nonequidistant_schedule(grid, num_inference_steps)
        return equidistant_schedule(grid, num_inference_steps)

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: list[int] | None = None,
    ) -> None:
        """Set the K sampling timesteps, either from the rule of the config or as explicit ``timesteps``."""
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("pass exactly one of `num_inference_steps` or `timesteps`")
        if timesteps is not None:
            ts = torch.as_tensor(list(timesteps), dtype=torch.long)
            if ts.numel() == 0 or (ts[1:] >= ts[:-1]).any():
                raise ValueError(f"`timesteps` must be non-empty and strictly descending, got {list(timesteps)}")
            if ts[0] >= self.config.num_train_timesteps or ts[-1] < 0:
                raise ValueError(f"`timesteps` must lie in [0, {self.config.num_train_timesteps - 1}]")
        else:
            ts = self.inference_timesteps(num_inference_steps)
        self.num_inference_steps = ts.numel()
        self.timesteps = ts.to(device=device)
        self._step_index = None
        self._begin_index = None

    def _init_step_index(self, timestep) -> None:
        if self._begin_index is not None:
            self._step_index = self._begin_index
            return
        t = int(timestep.item() if isinstance(timestep, torch.Tensor) else timestep)
        hits = (self.timesteps.cpu() == t).nonzero()
        if len(hits) == 0:
            raise ValueError(f"timestep {t} is not in the schedule {self.timesteps.tolist()}")
        self._step_index = int(hits[0])

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        eta: float = 0.2,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> TDDSchedulerOutput | tuple:
        """One TDD step from ``timestep`` to the next timestep of the schedule.

        Args:
            model_output (`torch.Tensor`): network output at (sample, timestep), of type `prediction_type`.
            timestep (`int`): current timestep t_i (an element of `self.timesteps`).
            sample (`torch.Tensor`): x_{t_i}.
            eta (`float`, defaults to 0.2): stochasticity gamma in [0, 1]; 0 is deterministic DDIM.
            generator (`torch.Generator`, *optional*): source of the re-noising noise.
            return_dict (`bool`, defaults to `True`): return a `TDDSchedulerOutput` instead of a tuple.
        """
        if self.num_inference_steps is None:
            raise ValueError("call `set_timesteps` before `step`")
        check_range("eta", eta, 0.0, 1.0)
        if self._step_index is None:
            self._init_step_index(timestep)
        i = self._step_index
        abar = self.alphas_cumprod.to(sample.device)
        t = int(self.timesteps[i])
        a_t, s_t = abar[t].sqrt(), (1 - abar[t]).sqrt()
        x0, eps = to_x0_eps(model_output, sample, a_t, s_t, self.config.prediction_type)
        if self.config.thresholding and i <= self.config.t_l:  # the first t_l + 1 steps (t_l = -1: none)
            x0 = dynamic_threshold(x0, self.config.dynamic_thresholding_ratio, self.config.sample_max_value)
            eps = (sample - a_t * x0) / s_t  # keep (x0, eps) consistent with x_t

        if i + 1 >= len(self.timesteps):
            prev_sample = x0  # last step: the clean sample itself
        else:
            t_next = self.timesteps[i + 1].cpu()
            s = int(torch.floor((1 - eta) * t_next))  # float32 rounding, as TCD
            prev_sample = abar[s].sqrt() * x0 + (1 - abar[s]).sqrt() * eps
            if eta > 0:
                ratio = abar[int(t_next)] / abar[s]
                noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                                     dtype=prev_sample.dtype)
                prev_sample = ratio.sqrt() * prev_sample + (1 - ratio).sqrt() * noise
        self._step_index += 1
        prev_sample = prev_sample.to(sample.dtype)
        if not return_dict:
            return (prev_sample, x0)
        return TDDSchedulerOutput(prev_sample=prev_sample, denoised=x0)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Forward process x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (img2img, training helpers)."""
        abar = self.alphas_cumprod.to(original_samples.device)[timesteps.to(original_samples.device)]
        abar = abar.to(original_samples.dtype).reshape(-1, *([1] * (original_samples.ndim - 1)))
        return abar.sqrt() * original_samples + (1 - abar).sqrt() * noise
