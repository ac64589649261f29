"""Adapter of diffusers' ``UNet2DConditionModel`` to the denoiser call signature."""

from __future__ import annotations

import torch
from torch import nn

from tdd_lab.conditioner import map_condition


class UNetDenoiser(nn.Module):
    """``net(x, t, cond, timestep_cond)`` with ``cond`` the text embeddings (B, L, D) or a dict of UNet kwargs."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, x, t, cond, timestep_cond=None):
        """x (B, C, H, W), t (B,), cond -> raw output (B, C, H, W) in x's dtype (inputs cast to the UNet's)."""
        dtype = self.unet.dtype
        kwargs = cond if isinstance(cond, dict) else {"encoder_hidden_states": cond}
        kwargs = map_condition(lambda c: c.to(dtype) if c.is_floating_point() else c, kwargs)
        tc = None if timestep_cond is None else timestep_cond.to(dtype)
        return self.unet(x.to(dtype), t, timestep_cond=tc, **kwargs).sample.to(x.dtype)

    def with_time_cond(self, time_cond_dim: int) -> UNetDenoiser:
        """A copy whose UNet takes a w-embedding (``time_cond_proj_dim``), zero-initialised as in LCM."""
        from diffusers import UNet2DConditionModel

        unet = UNet2DConditionModel.from_config({**self.unet.config, "time_cond_proj_dim": time_cond_dim})
        missing, unexpected = unet.load_state_dict(self.unet.state_dict(), strict=False)
        assert not unexpected and all("cond_proj" in k for k in missing), (missing, unexpected)
        with torch.no_grad():
            unet.time_embedding.cond_proj.weight.zero_()
        return UNetDenoiser(unet.to(self.unet.device, self.unet.dtype))
