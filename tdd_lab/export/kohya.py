"""LoRA weights of a peft-injected network in the diffusers layout, and the kohya/A1111 layout with the real alpha."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def lora_state_dict(net: nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """The adapter weights of a peft-injected ``net`` in the peft/diffusers layout, without the adapter name.

    ``prefix`` is the wrapper attribute of the diffusers model ("unet." / "transformer.") which is stripped.
    """
    out = {}
    for name, p in net.named_parameters():
        if "lora_" not in name:
            continue
        name = name.replace(".default", "")
        out[name[len(prefix):] if name.startswith(prefix) else name] = p.detach().float().cpu().contiguous()
    if not out:
        raise ValueError("the student has no LoRA weights to export")
    return out


def write_kohya(state_dict: dict[str, torch.Tensor], alpha: float, model_prefix: str, path: Path) -> None:
    """A kohya/A1111-style LoRA file; ``.alpha`` entries hold the trained alpha.

    diffusers' ``convert_state_dict_to_kohya`` writes alpha = rank, which changes the function of any
    LoRA trained with alpha != rank (the public TDD FLUX LoRA is alpha 8 / rank 64), so we overwrite it.
    """
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya
    from safetensors.torch import save_file

    kohya = convert_state_dict_to_kohya({f"{model_prefix}.{k}": v for k, v in state_dict.items()})
    kohya = {k: (torch.tensor(float(alpha)) if k.endswith(".alpha") else v) for k, v in kohya.items()}
    save_file(kohya, str(path), metadata={"ss_network_alpha": str(alpha), "format": "kohya"})
