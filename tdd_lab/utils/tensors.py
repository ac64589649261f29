"""Tensor helpers shared by the math modules."""

from __future__ import annotations

import torch


def append_dims(x: torch.Tensor, ndim: int) -> torch.Tensor:
    """Right-pad ``x`` with singleton dims up to ``ndim`` dims: (B,) -> (B, 1, ..., 1)."""
    if x.ndim > ndim:
        raise ValueError(f"input has {x.ndim} dims but target has {ndim}")
    return x.reshape(*x.shape, *([1] * (ndim - x.ndim)))


def gather_per_sample(table: torch.Tensor, index: torch.Tensor, ndim: int) -> torch.Tensor:
    """``table[index]`` broadcastable against a tensor with ``ndim`` dims: (T,), (B,) -> (B, 1, ..., 1)."""
    return append_dims(table.to(index.device)[index], ndim)


def uniform(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    """U[0, 1) float32 drawn on the generator's device (seeded), returned on ``device``."""
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device)
