"""Pure functions of the adversarial term: hinge losses and the forward jump s -> t_gan (no state, no RNG of their own).

Hinge GAN losses (Lim & Ye 2017), averaged over the discriminator's heads as in PCM (Wang et al. 2024):
``D: mean_h [relu(1 - D_h(real)) + relu(1 + D_h(fake))]``, ``G: mean_h relu(1 - D_h(fake))``; each head's
logits are averaged over batch and positions first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812

from tdd_lab.schedules import NoiseSchedule


def hinge_d_loss(real_logits: list[torch.Tensor], fake_logits: list[torch.Tensor]) -> torch.Tensor:
    """Discriminator hinge loss: one logit map per head, each (B, 1, h, w) -> scalar."""
    if len(real_logits) != len(fake_logits) or not real_logits:
        raise ValueError(f"one logit map per head for real and fake, got {len(real_logits)} and {len(fake_logits)}")
    per_head = [F.relu(1 - r).mean() + F.relu(1 + f).mean() for r, f in zip(real_logits, fake_logits)]
    return torch.stack(per_head).mean()


def hinge_g_loss(fake_logits: list[torch.Tensor]) -> torch.Tensor:
    """Generator hinge loss ``relu(1 - D(fake))``: one logit map per head, each (B, 1, h, w) -> scalar (unweighted)."""
    if not fake_logits:
        raise ValueError("one logit map per head, got none")
    return torch.stack([F.relu(1 - f).mean() for f in fake_logits]).mean()


def sample_t_gan(s: torch.Tensor, span: int, num_train_timesteps: int, u: torch.Tensor) -> torch.Tensor:
    """t_gan uniform on the integers of [s, s + span), clipped to T - 1: s (B,) int64, u (B,) in [0, 1) -> (B,) int64."""
    jump = torch.floor(u * span).long()                                  # (B,) in [0, span)
    return torch.clamp(s + jump, max=num_train_timesteps - 1)


def forward_jump(x_s: torch.Tensor, s: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule,
                 z: torch.Tensor) -> torch.Tensor:
    """Re-noise a sample at s to the later noise level t >= s with fresh noise z: (B, ...) -> (B, ...).

    The Gaussian transition between two marginals ``x_u = a_u x0 + s_u eps`` of one schedule:
    ``x_t = r x_s + sqrt(s_t^2 - r^2 s_s^2) z`` with ``r = a_t / a_s``. For VP schedules (``a = sqrt(abar)``)
    that is ``sqrt(abar_t / abar_s) x_s + sqrt(1 - abar_t / abar_s) z``; for rectified flow
    (``a = 1 - sigma``, ``s = sigma``) the analogous jump ``(1 - sigma_t)/(1 - sigma_s) x_s + ...``.
    ``t == s`` returns ``x_s`` exactly. Computed in float64 from the schedule's tables, returned in ``x_s``'s dtype.
    """
    a_s, s_s = schedule.alpha_sigma(s, x_s.ndim, torch.float64)          # (B, 1, ..., 1)
    a_t, s_t = schedule.alpha_sigma(t, x_s.ndim, torch.float64)          # (B, 1, ..., 1)
    same = (t == s).view(a_s.shape)                                      # no jump (also a_s = 0: flow's t = T - 1)
    r = torch.where(same, torch.ones_like(a_t), a_t / torch.where(same, torch.ones_like(a_s), a_s))
    std = torch.where(same, torch.zeros_like(s_t), (s_t**2 - (r * s_s) ** 2).clamp_min(0).sqrt())
    return (r.to(x_s.dtype) * x_s + std.to(x_s.dtype) * z).to(x_s.dtype)
