"""Adapter of diffusers' ``SD3Transformer2DModel`` (SD3 / SD3.5 MMDiT) to the denoiser call signature."""

from __future__ import annotations

from tdd_lab.nets.transformer import FlowTransformerDenoiser


class SD3Denoiser(FlowTransformerDenoiser):
    """``net(x (B, C, H, W), sigma * T (B,), cond, timestep_cond=None) -> velocity (B, C, H, W)``.

    ``cond``: ``{"encoder_hidden_states" (B, 77 + L, D_T5) CLIP+T5, "pooled_projections" (B, P_L + P_G)}``
    (:class:`~tdd_lab.conditioner.SD3Conditioner`). The transformer patchifies internally, so latents go in
    unpacked; its timestep is sigma * T itself (``StableDiffusion3Pipeline`` feeds the scheduler's timesteps
    unscaled, in float32, where FLUX divides by 1000).
    """

    family = "SD3"

    def forward(self, x, t, cond, timestep_cond=None):
        x_in, cond = self.model_inputs(x, cond, timestep_cond)
        out = self.transformer(
            hidden_states=x_in,                                  # (B, C, H, W)
            timestep=t.float(),                                  # (B,) sigma * T
            encoder_hidden_states=cond["encoder_hidden_states"],
            pooled_projections=cond["pooled_projections"],
            return_dict=False,
        )[0]
        return out.to(x.dtype)
