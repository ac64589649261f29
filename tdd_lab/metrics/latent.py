"""Distillation fidelity of latent students (SD1.5 / SDXL / FLUX) without any external weights.

``ode_rmse``: root-mean-square latent distance between a sample and the teacher's guided ODE
endpoint from the same noise and prompt, the reference solved with ``ode_steps`` projection
steps x_{t'} = a_{t'} x0_hat + s_{t'} eps_hat (DDIM on VP schedules, Euler on flow schedules).
It is the latent analogue of gmm2d's ``ode_error``; FID/CLIP on real models come from the
clean-fid / open_clip metrics with local weights.
"""

from __future__ import annotations

import torch

from tdd_lab.guider import Guider
from tdd_lab.metrics.base import Metrics
from tdd_lab.prediction import consistency_function
from tdd_lab.utils.cache import config_key, tensor_fingerprint


@torch.no_grad()
def teacher_ode_endpoint(teacher, guider: Guider, noise: torch.Tensor, labels: torch.Tensor, num_steps: int,
                         batch_size: int = 16) -> torch.Tensor:
    """Guided teacher ODE from x_T = noise (n, C, H, W) to t = 0 on ``num_steps`` equidistant steps."""
    sched = teacher.schedule
    t_max = sched.num_train_timesteps - 1
    ts = torch.linspace(t_max, 0, num_steps + 1).round().long()          # (num_steps + 1,)
    device = teacher.device
    out = []
    for i in range(0, len(noise), batch_size):
        x = noise[i : i + batch_size].to(device).float()
        b = len(x)
        cond = teacher.conditioner.conditions(labels[i : i + batch_size].to(device))
        uncond = teacher.conditioner.null_like(cond)
        for t, t_next in zip(ts[:-1].tolist(), ts[1:].tolist()):
            tb = torch.full((b,), t, device=device, dtype=torch.long)
            x0_w, eps_w = guider(teacher.denoiser, x, tb, cond, uncond)
            if t_next == 0 and t == ts[-2].item():
                x = x0_w
            else:
                a, s = sched.alpha_sigma(torch.full((b,), t_next, device=device, dtype=torch.long), x.ndim)
                x = consistency_function(x0_w, eps_w, a, s)
        out.append(x.cpu())
    return torch.cat(out)


class LatentODEMetrics(Metrics):
    """``ode_rmse`` to the teacher's guided ODE endpoint (deterministic samplers, eta = 0)."""

    deterministic = True

    def __init__(self, ode_steps: int = 50, batch_size: int = 16):
        self.ode_steps, self.batch_size = ode_steps, batch_size
        self._ref_key = None
        self._ref = None

    def reference(self, noise, labels, teacher, guider) -> torch.Tensor:
        """Cached on the content of noise and labels, the guider's strength and the teacher's description."""
        key = tensor_fingerprint(noise, labels) + config_key({"guider": repr(guider), "teacher": teacher.describe(),
                                                              "steps": self.ode_steps})
        if self._ref_key != key:
            self._ref = teacher_ode_endpoint(teacher, guider, noise, labels, self.ode_steps, self.batch_size)
            self._ref_key = key
        return self._ref

    def compute(self, samples, labels, noise, teacher, guider):
        ref = self.reference(noise, labels, teacher, guider)
        d = (samples.detach().float().cpu() - ref).flatten(1)
        return {"ode_rmse": float(d.pow(2).mean(1).sqrt().mean())}
