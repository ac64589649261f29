"""What the adapters of diffusers' flow-matching transformers (FLUX, SD3) share: the model, the dtype, no w-embedding."""

from __future__ import annotations

import torch
from torch import nn

from tdd_lab.conditioner import Condition, map_condition
from tdd_lab.utils.validation import ConfigError


class FlowTransformerDenoiser(nn.Module):
    """``net(x (B, C, H, W), sigma * T (B,), cond, timestep_cond) -> velocity (B, C, H, W)`` over ``transformer``.

    The diffusers model lives under ``transformer`` (the pipeline attribute the exports write and load, and the
    prefix of its LoRA keys); inputs are cast to its dtype and the output back to the input's. These students take
    no LCM w-embedding: the transformers have no ``time_cond_proj`` input to add one to.
    """

    family = "flow-transformer"  # named in errors

    def __init__(self, transformer: nn.Module):
        super().__init__()
        self.transformer = transformer

    def with_time_cond(self, time_cond_dim: int) -> FlowTransformerDenoiser:
        """Refused: ``guidance=lcm_w`` needs a w-embedding input these transformers do not have."""
        raise ConfigError(f"guidance: {self.family} students take no w-embedding (guidance=lcm_w); "
                          "use guidance=decoupled, fixed or embedded")

    def model_inputs(self, x: torch.Tensor, cond: Condition, timestep_cond: torch.Tensor | None):
        """(x, cond) in the transformer's dtype; a w-embedding is an error (see :meth:`with_time_cond`)."""
        if timestep_cond is not None:
            raise ValueError(f"{self.family} students take no w-embedding (use guidance=fixed or decoupled)")
        dtype = self.transformer.dtype
        return x.to(dtype), map_condition(lambda c: c.to(dtype), cond)
