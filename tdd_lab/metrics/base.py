"""Base contract of a metric set."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from tdd_lab.guider import Guider
from tdd_lab.teachers.base import Teacher


class Metrics(ABC):
    """``compute(samples, labels, noise, teacher, guider)`` -> {metric name: value} for one sample set."""

    deterministic: bool = False          # True: evaluate with eta = 0 samplers (ODE-error style metrics)
    needs_teacher_samples: bool = False  # True: compares against the teacher's own samples (set_teacher_samples)
    weight_files: tuple[str, ...] = ()   # attributes holding local weights/reference paths, fingerprinted in describe

    @abstractmethod
    def compute(
        self, samples: torch.Tensor, labels: torch.Tensor, noise: torch.Tensor, teacher: Teacher, guider: Guider
    ) -> dict[str, float]:
        """Metrics of ``samples`` (n, ...) generated from ``noise`` (n, ...) for class ``labels`` (n,).

        ``guider`` is the teacher's guider (strength ``guider.w``) that defines the reference trajectory.
        """

    def set_teacher_samples(self, samples: torch.Tensor, teacher: Teacher | None = None) -> None:
        """The teacher's own samples from the evaluation noise (metrics with ``needs_teacher_samples``)."""
        return None

    def describe(self) -> dict:
        """Settings (public attributes) and a fingerprint of each file named in ``weight_files``: the cached teacher
        numbers of these metrics are keyed on it, so new weights or reference images at the same path are new keys."""
        from tdd_lab.utils.cache import weights_fingerprint

        files = {name: weights_fingerprint(getattr(self, name, None)) for name in self.weight_files}
        return {"class": type(self).__name__, **{k: v for k, v in vars(self).items() if not k.startswith("_")},
                **({"fingerprints": files} if files else {})}
