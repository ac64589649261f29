"""Adapter of diffusers' ``UNet2DConditionModel`` to the denoiser call signature."""

from __future__ import annotations

import torch
from torch import nn


class UNetDenoiser(nn.Module):
    """``net(x, t, cond, timestep_cond)`` with ``cond`` the text embeddings (B, L, D) or a dict of UNet kwargs."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, x, t, cond, timestep_cond=None):
        kwargs = cond if isinstance(cond, dict) else {"encoder_hidden_states": cond}
        return self.unet(x, t, timestep_cond=timestep_cond, **kwargs).sample

    def with_time_cond(self, time_cond_dim: int) -> UNetDenoiser:
        """A copy whose UNet takes a w-embedding (``time_cond_proj_dim``), zero-initialised as in LCM."""
        from diffusers import UNet2DConditionModel

        unet = UNet2DConditionModel.from_config({**self.unet.config, "time_cond_proj_dim": time_cond_dim})
        missing, unexpected = unet.load_state_dict(self.unet.state_dict(), strict=False)
        assert not unexpected and all("cond_proj" in k for k in missing), (missing, unexpected)
        with torch.no_grad():
            unet.time_embedding.cond_proj.weight.zero_()
        return UNetDenoiser(unet.to(self.unet.device, self.unet.dtype))
