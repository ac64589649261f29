"""Base contract of a teacher: a frozen conditional denoiser on a noise schedule."""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tdd_lab.guidance.base import Condition, expand_condition
from tdd_lab.schedules import NoiseSchedule


class Teacher(ABC):
    """``denoise(x_t, t, cond) -> (x0_hat, eps_hat)`` at integer timesteps t (B,) of ``schedule``.

    Besides the denoiser, a teacher knows how to turn a data batch into (x0, condition), gives
    the student its initial network (``net(x_t, model_time, cond, timestep_cond) -> raw output``
    of ``prediction_type``), and saves/loads a student for ``tdd_lab.sample``.
    """

    schedule: NoiseSchedule
    prediction_type: str = "epsilon"
    sample_shape: tuple[int, ...]
    num_classes: int

    @abstractmethod
    def null_condition(self, device: torch.device | str = "cpu") -> Condition:
        """The one unconditional condition (batch size 1), used for CFG and prompt dropping alike."""

    def null_like(self, cond: Condition) -> Condition:
        """The null condition for the samples of ``cond`` (B, ...).

        Default: the batch-1 null condition broadcast. Teachers whose conditions carry per-sample
        metadata that is not text (SDXL's micro-conditioning ``time_ids``) keep it from ``cond``, as
        the stock pipelines do for their negative branch.
        """
        from tdd_lab.guidance.base import condition_batch_size, first_leaf

        return expand_condition(self.null_condition(first_leaf(cond).device), condition_batch_size(cond))

    @abstractmethod
    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, cond: Condition) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, ...), (B,), cond -> (x0_hat, eps_hat), each (B, ...)."""

    @abstractmethod
    def conditions(self, labels: torch.Tensor) -> Condition:
        """Conditions for class labels (B,); label -1 is the null condition."""

    def prepare_batch(self, batch: dict[str, Any]) -> tuple[torch.Tensor, Condition]:
        """A data batch ``{"x0", "label"}`` -> (x0 (B, ...), condition)."""
        return batch["x0"], self.conditions(batch["label"])

    # -- the teacher network and the student built from it ------------------------------------------
    net: nn.Module | None = None   # the teacher's network (``net(x, model_time, cond, timestep_cond)``), if any
    shares_weights: bool = False   # True once the student was built on ``net`` itself (LoRA; adapters off for us)

    def student_network(self, share_weights: bool = False) -> nn.Module:
        """The student's initial network.

        ``share_weights=False``: a trainable float32 copy of the teacher's network. ``share_weights=True``
        (LoRA students): the teacher's own network, frozen; adapters are injected into it in place and
        :meth:`teacher_forward` disables them, so one set of base weights serves teacher and student.
        """
        if self.net is None:
            raise NotImplementedError(f"{type(self).__name__} has no network to build a student from")
        if share_weights:
            self.shares_weights = True
            return self.net.requires_grad_(False)
        return copy.deepcopy(self.net).float().requires_grad_(True).train()

    def teacher_forward(self, x: torch.Tensor, model_time: torch.Tensor, cond: Condition) -> torch.Tensor:
        """The teacher network's raw output, with the student's adapters disabled when weights are shared."""
        with adapters_disabled(self.net) if self.shares_weights else nullcontext():
            return self.net(x, model_time, cond)

    @abstractmethod
    def save_student(self, net: nn.Module, directory: Path) -> None:
        """Write a student network (LoRA merged) and what sampling needs into ``directory``."""

    def export(self, student: nn.Module, factory: Any, directory: Path, kohya: bool = False, fused: bool = False) -> None:
        """Write the trained ``student`` (built by ``factory``) into ``directory``.

        Default: the merged network through :meth:`save_student`. Teachers with a stock pipeline
        write adapters in the pipeline's own format instead (``kohya``/``fused`` select extra files).
        """
        self.save_student(factory.export_network(student), directory)

    def reference_sampler(self):
        """The many-step reference sampler of the teacher's family: deterministic DDIM (VP schedules)."""
        from tdd_lab.samplers import DDIMSampler

        return DDIMSampler(eta=0.0)

    def sampling_scheduler(self, num_ddim_timesteps: int, sampler=None):
        """The diffusers scheduler that samples the student (saved as ``student/scheduler``).

        The evaluated sampler's own scheduler (TDD with its timestep schedule and clipping, LCM, TCD, ...)
        set to the network's prediction type, so a stock pipeline samples as the metrics were measured.
        """
        config = {**self.schedule.diffusers_config(), "prediction_type": self.prediction_type}
        if sampler is not None:
            return sampler.make_scheduler(config, num_ddim_timesteps)
        from tdd_lab.schedulers import TDDScheduler

        return TDDScheduler(**config, tdd_train_step=num_ddim_timesteps)

    @abstractmethod
    def save_samples(self, samples: torch.Tensor, labels: torch.Tensor, path: Path) -> None:
        """Write a picture of ``samples`` (image grid, scatter plot, ...) to ``path`` (PNG)."""

    def to(self, device: torch.device | str) -> Teacher:
        return self


@contextmanager
def adapters_disabled(net: nn.Module):
    """Run ``net`` as its base model: every peft adapter layer off, then back on (trainability restored)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in net.modules() if isinstance(m, BaseTunerLayer)]
    for m in layers:
        m.enable_adapters(False)
    try:
        yield net
    finally:
        for m in layers:
            m.enable_adapters(True)
