"""The one denoiser contract: (network, schedule, prediction type) -> (x0_hat, eps_hat).

As in k-diffusion's ``external.py`` and EDM's preconditioning, a backbone is wrapped once; everything
downstream (the training step, the teacher, the target network, the samplers, the metrics' reference
ODE, exported students) calls a :class:`Denoiser` and never looks at a raw network output. This file
is the only place where raw outputs become ``(x0_hat, eps_hat)`` (through
:func:`tdd_lab.prediction.to_x0_eps`).

The schedule is a submodule (its tables are buffers), so ``denoiser.to(device)`` moves it too.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn

from tdd_lab.conditioner import Condition
from tdd_lab.prediction import PREDICTION_TYPES, to_x0_eps
from tdd_lab.schedules import NoiseSchedule
from tdd_lab.utils.validation import check_choice


class Denoiser(nn.Module):
    """``denoiser(x_t (B, ...), t (B,) int64, cond, timestep_cond=None) -> (x0_hat, eps_hat)``, each (B, ...).

    ``net(x, model_time, cond, timestep_cond) -> raw output`` of ``prediction_type`` (epsilon,
    v_prediction, sample or flow velocity). ``compute_dtype``: the dtype of the conversion (None: the
    dtype of ``x_t``; float64 for the exact Gaussian-mixture teacher); outputs come back in ``x_t``'s dtype.
    ``base_only``: run ``net`` with its peft adapters disabled (a teacher whose network carries the
    student's LoRA: one set of base weights serves teacher, student and target).
    """

    def __init__(
        self,
        net: nn.Module,                          # raw network: net(x, model_time, cond, timestep_cond)
        schedule: NoiseSchedule,                 # a_t, s_t tables and the network's time input
        prediction_type: str = "epsilon",        # epsilon | v_prediction | sample | flow
        compute_dtype: torch.dtype | None = None,  # dtype of the raw -> (x0, eps) conversion
    ):
        super().__init__()
        check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        self.net, self.schedule = net, schedule
        self.prediction_type, self.compute_dtype = prediction_type, compute_dtype
        self.base_only = False

    def raw(self, x_t: torch.Tensor, t: torch.Tensor, cond: Condition, timestep_cond: torch.Tensor | None = None):
        """The network's raw output at integer timesteps ``t``: (B, ...)."""
        with adapters_disabled(self.net) if self.base_only else nullcontext():
            return self.net(x_t, self.schedule.model_time(t), cond, timestep_cond)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Condition,
                timestep_cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        raw = self.raw(x_t, t, cond, timestep_cond)
        dtype = self.compute_dtype or x_t.dtype
        a, s = self.schedule.alpha_sigma(t, x_t.ndim, dtype)
        x0, eps = to_x0_eps(raw.to(dtype), x_t.to(dtype), a, s, self.prediction_type)
        return x0.to(x_t.dtype), eps.to(x_t.dtype)

    def extra_repr(self) -> str:
        return f"prediction_type={self.prediction_type!r}, base_only={self.base_only}"


class adapters_disabled:  # noqa: N801  (used as a context manager, like torch.no_grad)
    """Run ``net`` as its base model: every peft adapter layer off, then back on."""

    def __init__(self, net: nn.Module):
        self.net = net

    def __enter__(self):
        from peft.tuners.tuners_utils import BaseTunerLayer

        self.layers = [m for m in self.net.modules() if isinstance(m, BaseTunerLayer)]
        for m in self.layers:
            m.enable_adapters(False)
        return self.net

    def __exit__(self, *exc):
        for m in self.layers:
            m.enable_adapters(True)
        return False
