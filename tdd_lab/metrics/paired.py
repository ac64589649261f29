"""Paired fidelity to the teacher: each sample against the teacher's own sample from the same noise and label.

FID compares two distributions and forgives a student that draws a different (but plausible) sample from the
teacher's noise; a distillation run asks how close the few-step student lands to the trajectory it distils.
``teacher_rmse`` answers that per sample: the root-mean-square difference to the teacher's reference sample
(``Evaluator.teacher_reference``: 50-step DDIM guided at the run's ``teacher_w``), averaged over the samples.
"""

from __future__ import annotations

import torch

from tdd_lab.metrics.base import Metrics


def paired_rmse(samples: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean over samples of the per-sample RMSE over all sample dims, in float64.

    ``samples`` and ``reference`` are (N, ...) of the same shape; row i of each comes from the same noise and label.
    """
    if samples.shape != reference.shape:
        raise ValueError(f"paired_rmse: samples {tuple(samples.shape)} and teacher reference "
                         f"{tuple(reference.shape)} differ; they must come from the same evaluation noise")
    diff = samples.detach().cpu().double().flatten(1) - reference.detach().cpu().double().flatten(1)  # (N, D)
    per_sample = diff.pow(2).mean(dim=1).sqrt()                                                     # (N,)
    return float(per_sample.mean())


class TeacherDistance(Metrics):
    """``teacher_rmse``: :func:`paired_rmse` of the samples to the teacher's reference samples (lower is closer).

    Measured on the raw samples (pixels in [-1, 1] for pixel teachers, latents for latent teachers), so it needs no
    feature network and no decoding; zero for the teacher's own reference run.
    """

    needs_teacher_samples = True

    def __init__(self, name: str = "teacher_rmse"):  # the metric's key: eval/<name>@K
        self.name = name
        self._reference: torch.Tensor | None = None

    def set_teacher_samples(self, samples: torch.Tensor, teacher=None) -> None:
        """The teacher's reference samples (N, ...) from the evaluation noise and labels."""
        self._reference = samples.detach().cpu()

    def compute(self, samples, labels, noise, teacher, guider) -> dict[str, float]:
        if self._reference is None:
            raise RuntimeError(f"{self.name}: needs the teacher's reference samples (set_teacher_samples; the "
                               "Evaluator does this)")
        return {self.name: paired_rmse(samples, self._reference)}
