"""A small class-conditional MLP denoiser for low-dimensional data (the gmm2d student)."""

from __future__ import annotations

import math

import torch
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding (Vaswani et al. 2017; DDPM): (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class MLPDenoiser(nn.Module):
    """Residual MLP on [x, emb(t), emb(class)]; class ``-1`` is the null condition."""

    def __init__(
        self,
        dim: int = 2,                   # data dimension
        num_classes: int = 4,           # conditioning classes (plus one null class)
        hidden: int = 256,              # width
        depth: int = 4,                 # residual blocks
        time_embed_dim: int = 64,       # sinusoidal timestep features
        time_cond_dim: int | None = None,  # size of an optional w-embedding (LCM guidance), zero-initialised
    ):
        super().__init__()
        self.config = dict(dim=dim, num_classes=num_classes, hidden=hidden, depth=depth,
                           time_embed_dim=time_embed_dim, time_cond_dim=time_cond_dim)
        self.time_embed_dim = time_embed_dim
        self.inp = nn.Linear(dim, hidden)
        self.time = nn.Sequential(nn.Linear(time_embed_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.label = nn.Embedding(num_classes + 1, hidden)
        self.cond_proj = None
        if time_cond_dim:
            self.cond_proj = nn.Linear(time_cond_dim, hidden, bias=False)
            nn.init.zeros_(self.cond_proj.weight)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
            for _ in range(depth)
        )
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, dim))

    def forward(self, x, t, cond, timestep_cond=None):
        """x (B, d), t (B,) model time, cond (B,) labels in [-1, C) -> (B, d)."""
        emb = self.time(timestep_embedding(t, self.time_embed_dim)) + self.label(cond.long() + 1)
        if self.cond_proj is not None and timestep_cond is not None:
            emb = emb + self.cond_proj(timestep_cond)
        h = self.inp(x) + emb
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)

    def with_time_cond(self, time_cond_dim: int) -> MLPDenoiser:
        """A copy with a zero-initialised w-embedding input (same function until trained)."""
        net = MLPDenoiser(**{**self.config, "time_cond_dim": time_cond_dim})
        net.load_state_dict(self.state_dict(), strict=False)
        return net
