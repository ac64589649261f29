"""gmm2d metrics: distance to the exact teacher ODE endpoint, and a distribution distance."""

from __future__ import annotations

import torch

from tdd_lab.metrics.base import Metrics
from tdd_lab.utils.cache import config_key, tensor_fingerprint


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, num_projections: int = 256, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance between equal-size point sets (n, d) (Rabin et al. 2011)."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(x.shape[1], num_projections, generator=g, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    px, _ = torch.sort(x.double() @ dirs, dim=0)
    py, _ = torch.sort(y.double() @ dirs, dim=0)
    return float(((px - py) ** 2).mean().sqrt())


class GMMMetrics(Metrics):
    """``ode_error``: mean ||x - x_ode|| to the exact guided PF-ODE endpoint from the same noise (eta = 0 for
    both student and teacher); ``swd``: sliced Wasserstein distance to exact samples of the guided ODE.

    ``deterministic=False`` keeps the sampler's eta (stochastic samplers evaluated as designed): ``swd`` is then the
    fidelity measure (a distribution distance, valid for any sampler), while ``ode_error`` includes the re-noising
    draws and is no longer a per-sample distance to the ODE solution."""

    def __init__(self, ode_steps: int = 1000,  # RK4 steps of the exact reference solve
                 deterministic: bool = True):  # False: evaluate stochastic samplers at their own eta
        self.ode_steps = ode_steps
        self.deterministic = bool(deterministic)
        self._ref_key = None
        self._ref = None

    def reference(self, noise, labels, teacher, guider):
        """The exact guided ODE endpoints of ``noise`` (cached on the content of noise, labels, w and teacher)."""
        w = float(guider.w)
        key = tensor_fingerprint(noise, labels) + config_key({"w": w, "teacher": teacher.describe(), "n": self.ode_steps})
        if self._ref_key != key:
            t_max = teacher.schedule.num_train_timesteps - 1
            self._ref = teacher.ode_endpoint(noise.double().cpu(), t_max, labels.cpu(), w=w, num_steps=self.ode_steps)
            self._ref_key = key
        return self._ref

    def compute(self, samples, labels, noise, teacher, guider):
        ref = self.reference(noise, labels, teacher, guider)
        x = samples.detach().double().cpu()
        return {"ode_error": float((x - ref).norm(dim=1).mean()), "swd": sliced_wasserstein(x, ref)}
