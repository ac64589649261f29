"""A shuffling sampler whose stream is a pure function of (seed, step), so a resumed run continues
with exactly the batches the interrupted one would have drawn next."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ResumableRandomSampler(Sampler[int]):
    """Epoch e is ``randperm(n)`` seeded with ``seed + e``, cut into ``n // batch_size`` full batches.

    ``start_step`` (the trainer's global step on resume) skips the batches already consumed; each new
    iterator continues with the next epoch.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int = 0, start_step: int = 0):
        if num_items < batch_size:
            raise ValueError(f"data has {num_items} items, fewer than batch_size={batch_size}")
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.batches_per_epoch = num_items // batch_size
        self.step = start_step  # position in batches

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.step % self.batches_per_epoch) * self.batch_size

    def __iter__(self) -> Iterator[int]:
        epoch, offset = divmod(self.step, self.batches_per_epoch)
        perm = torch.randperm(self.num_items, generator=torch.Generator().manual_seed(self.seed + epoch))
        items = perm[offset * self.batch_size : self.batches_per_epoch * self.batch_size].tolist()
        self.step = (epoch + 1) * self.batches_per_epoch  # the next iterator starts the next epoch
        yield from items
