"""Base contract of a teacher: a conditioner, a frozen denoiser, and the student's initial network.

A teacher is an ``nn.Module`` so that one ``.to(device)`` moves its denoiser, text encoders and
tables; it is kept out of the LightningModule's state dict (frozen weights come back from the config).
Loading lives in the teacher classes; pretraining loops live in :mod:`tdd_lab.pretrain`, exports in
:mod:`tdd_lab.export`.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from pathlib import Path

import torch
from torch import nn

from tdd_lab.conditioner import Conditioner
from tdd_lab.denoiser import Denoiser
from tdd_lab.schedules import NoiseSchedule


class Teacher(nn.Module, ABC):
    """``conditioner`` (prompts/labels -> conditions), ``denoiser`` ((x_t, t, cond) -> (x0, eps)), ``sample_shape``.

    ``student_network()`` gives the student's initial raw network (the same call signature as the
    teacher's network, see :class:`~tdd_lab.denoiser.Denoiser`); ``exporter()`` says how a student of
    this teacher is written to and loaded from ``run_dir/student``.
    """

    conditioner: Conditioner
    denoiser: Denoiser
    sample_shape: tuple[int, ...]
    num_classes: int  # evaluation labels cycle over range(num_classes)
    path: Path | None = None  # where tdd_lab built and cached it (embedded teachers), else None
    export_formats: tuple[str, ...] = ("native", "fused")  # what export_<format>=true may ask for (native: merged)

    @property
    def schedule(self) -> NoiseSchedule:
        return self.denoiser.schedule

    @property
    def prediction_type(self) -> str:
        return self.denoiser.prediction_type

    @property
    def device(self) -> torch.device:
        return self.schedule.alphas.device

    def train(self, mode: bool = True):
        """A teacher is frozen: it stays in eval mode (a shared LoRA base is switched by the student)."""
        return super().train(False)

    # -- the student built from the teacher ----------------------------------------------------------
    def student_network(self, share_weights: bool = False) -> nn.Module:
        """The student's initial raw network.

        ``share_weights=False``: a trainable float32 copy of the teacher's network. ``share_weights=True``
        (LoRA students): the teacher's own network, frozen; adapters are injected into it in place and the
        teacher's denoiser runs it with them disabled, so one set of base weights serves teacher and student.
        """
        net = self.denoiser.net
        if share_weights:
            self.denoiser.base_only = True
            return net.requires_grad_(False)
        return copy.deepcopy(net).float().requires_grad_(True).train()

    def student_denoiser(self, net: nn.Module) -> Denoiser:
        """The student's denoiser over its raw network: the teacher's schedule and prediction type."""
        return Denoiser(net, self.schedule, self.prediction_type)

    @abstractmethod
    def exporter(self):
        """The :class:`tdd_lab.export.Exporter` that writes and loads students of this teacher."""

    def reference_sampler(self, num_ddim_timesteps: int):
        """The many-step reference sampler of the teacher's family: deterministic DDIM (VP schedules)."""
        from tdd_lab.samplers import DDIMSampler

        return DDIMSampler(eta=0.0, num_ddim_timesteps=num_ddim_timesteps)

    @abstractmethod
    def save_samples(self, samples: torch.Tensor, labels: torch.Tensor, path: Path) -> None:
        """Write a picture of ``samples`` (image grid, scatter plot, ...) to ``path`` (PNG)."""

    def decode(self, samples: torch.Tensor) -> torch.Tensor:
        """Samples -> images in [-1, 1] for image metrics (pixel teachers: the samples themselves)."""
        return samples

    @abstractmethod
    def describe(self) -> dict:
        """Everything that determines this teacher's function (cache keys, logs)."""
