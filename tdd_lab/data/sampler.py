"""A shuffling, rank-aware sampler whose stream is a pure function of (seed, step), so a resumed
run (single process or DDP) continues with exactly the batches the interrupted one would have drawn."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ResumableRandomSampler(Sampler[int]):
    """Epoch e is ``randperm(n)`` seeded with ``seed + e``, cut into global batches of
    ``batch_size * world_size`` items; rank r takes the r-th ``batch_size`` slice of each.

    ``start_step`` (micro-batches already consumed per rank, i.e. the trainer's global step times the
    accumulation) skips the consumed global batches; each new iterator continues with the next epoch.
    ``len`` is always a full epoch, so Lightning's restored batch counter lines up with the skipped offset.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int = 0, start_step: int = 0, rank: int = 0,
                 world_size: int = 1):
        per_step = batch_size * world_size
        if num_items < per_step:
            raise ValueError(f"data has {num_items} items, fewer than batch_size x world_size = {per_step}")
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.batches_per_epoch = num_items // per_step
        self.step = start_step  # position in (global) batches

    def __len__(self) -> int:
        return self.batches_per_epoch * self.batch_size

    def __iter__(self) -> Iterator[int]:
        epoch, offset = divmod(self.step, self.batches_per_epoch)
        perm = torch.randperm(self.num_items, generator=torch.Generator().manual_seed(self.seed + epoch))
        grid = perm[: self.batches_per_epoch * self.batch_size * self.world_size]
        grid = grid.view(self.batches_per_epoch, self.world_size, self.batch_size)  # (steps, ranks, batch)
        self.step = (epoch + 1) * self.batches_per_epoch  # the next iterator starts the next epoch
        yield from grid[offset:, self.rank].flatten().tolist()
