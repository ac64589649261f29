"""Hugging Face hub ids and local pipeline folders, checked before anything is loaded; dtypes by name."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from tdd_lab.utils.validation import ConfigError, check_choice

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
          "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def resolve_dtype(name: str) -> torch.dtype:
    check_choice("teacher.dtype", name, tuple(DTYPES))
    return DTYPES[name]


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` is set: hub ids must resolve from the local cache."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def check_pretrained(value: str, key: str = "teacher.pretrained") -> None:
    """A local folder must exist and hold a diffusers layout; a hub id must be in the local cache when offline."""
    looks_local = value.startswith((".", "/", "~")) or os.path.exists(os.path.expanduser(value))
    if looks_local:
        path = Path(value).expanduser()
        if not path.is_dir():
            raise ConfigError(f"{key}: folder {str(path)!r} does not exist")
        if not any(path.iterdir()):
            raise ConfigError(f"{key}: folder {str(path)!r} is empty")
        if not (path / "model_index.json").exists() and not (path / "config.json").exists():
            raise ConfigError(f"{key}: folder {str(path)!r} is incomplete: no model_index.json (a diffusers pipeline) "
                              "or config.json (a single model)")
        return
    if hub_offline():
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(value, "model_index.json")
        if not isinstance(hit, str):
            raise ConfigError(f"{key}: hub id {value!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE "
                              "is set; download it first or pass a local folder")
