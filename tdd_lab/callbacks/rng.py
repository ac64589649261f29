"""Save every RNG state in checkpoints and restore it on resume, so a resumed run draws what an
uninterrupted run would have drawn (noise, timesteps, targets, dropped prompts)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch


class RNGStateCallback(pl.Callback):
    """Checkpoints the torch (CPU and CUDA), numpy and Python RNG states; re-applies them at train start."""

    def __init__(self):
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        """This rank's states, gathered from every rank under DDP (each resumes with its own)."""
        own = self._local_state()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            states = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(states, own)
            return {"per_rank": states}
        return {"per_rank": [own]}

    @staticmethod
    def _local_state() -> dict[str, Any]:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        # tensors and plain Python values only, so checkpoints load with torch.load(weights_only=True)
        state = {"torch": torch.get_rng_state(), "python": random.getstate(),
                 "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                           "has_gauss": int(has_gauss), "gauss": float(gauss)}}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    def on_train_start(self, trainer, pl_module) -> None:
        if self._pending is None:
            return
        states, self._pending = self._pending["per_rank"], None
        if len(states) != trainer.world_size:
            # a different number of processes than at save time: reseed deterministically per rank and step
            pl.seed_everything(pl_module.seed + trainer.global_rank + 1_000_003 * trainer.global_step, verbose=False)
            return
        s = states[trainer.global_rank]
        torch.set_rng_state(s["torch"])
        n = s["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
        random.setstate(s["python"])
        if "cuda" in s and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(s["cuda"])
