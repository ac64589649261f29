"""Adapter of diffusers' ``FluxTransformer2DModel`` to the denoiser call signature on unpacked latents."""

from __future__ import annotations

import torch

from tdd_lab.nets.transformer import FlowTransformerDenoiser


def pack_latents(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/2 * W/2, 4C): 2x2 patches as tokens (``FluxPipeline._pack_latents``)."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, H/2 * W/2, 4C) -> (B, C, H, W), the inverse of :func:`pack_latents`."""
    b, _, d = tokens.shape
    c = d // 4
    return tokens.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def latent_image_ids(h: int, w: int, device, dtype) -> torch.Tensor:
    """Positional ids (H/2 * W/2, 3) = (0, row, col) of the packed tokens."""
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] += torch.arange(h // 2)[:, None]
    ids[..., 2] += torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


class FluxDenoiser(FlowTransformerDenoiser):
    """``net(x (B, C, H, W), sigma * T (B,), cond, timestep_cond) -> velocity (B, C, H, W)``.

    ``cond``: ``{"encoder_hidden_states" (B, L, D) T5, "pooled_projections" (B, P) CLIP}``. The
    embedded guidance value (FLUX-dev) is fixed at construction: teacher and student see the same.
    """

    family = "FLUX"

    def __init__(self, transformer, embedded_guidance: float | None = None, num_train_timesteps: int = 1000):
        super().__init__(transformer)
        self.embedded_guidance = embedded_guidance
        self.num_train_timesteps = num_train_timesteps

    @staticmethod
    def to_scheduler_layout(x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> the packed (B, H/2 * W/2, 4C) latents ``FluxPipeline`` hands its scheduler. Samplers step
        the scheduler in this layout, so its re-noising draws land where the stock pipeline's do (same seed, same
        samples at eta > 0)."""
        return pack_latents(x)

    @staticmethod
    def from_scheduler_layout(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return unpack_latents(x, h, w)

    def forward(self, x, t, cond, timestep_cond=None):
        x_in, cond = self.model_inputs(x, cond, timestep_cond)
        b, _, h, w = x.shape
        dtype = x_in.dtype
        guidance = None
        if self.embedded_guidance is not None:
            guidance = torch.full((b,), self.embedded_guidance, device=x.device, dtype=torch.float32)
        txt_len = cond["encoder_hidden_states"].shape[1]
        out = self.transformer(
            hidden_states=pack_latents(x_in),
            timestep=(t.float() / self.num_train_timesteps).to(dtype),
            guidance=guidance,
            pooled_projections=cond["pooled_projections"],
            encoder_hidden_states=cond["encoder_hidden_states"],
            txt_ids=torch.zeros(txt_len, 3, device=x.device, dtype=dtype),
            img_ids=latent_image_ids(h, w, x.device, dtype),
            return_dict=False,
        )[0]
        return unpack_latents(out, h, w).to(x.dtype)
