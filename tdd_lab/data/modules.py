"""Lightning data modules of the embedded experiments."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from tdd_lab.data.digits import load_digit_tensors
from tdd_lab.data.sampler import ResumableRandomSampler


def resumable_loader(module: pl.LightningDataModule, dataset, batch_size: int, seed: int, num_workers: int = 0,
                     collate_fn=None):
    """A shuffled, drop-last loader that continues at the trainer's global step (exact resume).

    It shards over ranks itself, so trainers run with ``use_distributed_sampler=False``.
    """
    trainer = getattr(module, "trainer", None)
    start, rank, world = 0, 0, 1
    if trainer is not None:
        # batches consumed so far: adversarial=pcm counts its own (its alternation spends a discriminator-only batch
        # per student step, and a run stopped right after one has consumed 2 * global_step + 1)
        consumed = getattr(trainer.lightning_module, "batches_consumed", None)
        start = consumed if consumed is not None else trainer.global_step * max(1, trainer.accumulate_grad_batches)
        rank, world = trainer.global_rank, trainer.world_size
    sampler = ResumableRandomSampler(len(dataset), batch_size, seed, start, rank, world)
    # its own generator: creating an iterator must not draw from the global RNG (restored on resume)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True, num_workers=num_workers,
                      persistent_workers=num_workers > 0, collate_fn=collate_fn, generator=torch.Generator().manual_seed(seed + start))


class TensorPairs(Dataset):
    """(x0, label) pairs as dict samples."""

    def __init__(self, x0: torch.Tensor, labels: torch.Tensor):
        self.x0, self.labels = x0, labels

    def __len__(self) -> int:
        return len(self.x0)

    def __getitem__(self, i):
        return {"x0": self.x0[i], "label": self.labels[i]}


class DigitsDataModule(pl.LightningDataModule):
    """The 1,797 sklearn digits in [-1, 1] with their labels (prompts are made by the teacher)."""

    def __init__(self, batch_size: int = 64, num_workers: int = 0, seed: int = 0, teacher=None):
        super().__init__()
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed

    def setup(self, stage: str | None = None) -> None:
        images, labels = load_digit_tensors()
        self.train_set = TensorPairs(images, labels)

    def train_dataloader(self) -> DataLoader:
        return resumable_loader(self, self.train_set, self.batch_size, self.seed, self.num_workers)


class GMMDataModule(pl.LightningDataModule):
    """Exact samples of the teacher's Gaussian mixture (a fixed, seeded pool)."""

    def __init__(self, teacher, batch_size: int = 256, num_samples: int = 100_000, seed: int = 0, num_workers: int = 0):
        super().__init__()
        self.mixture = teacher.mixture
        self.batch_size, self.num_samples, self.seed, self.num_workers = batch_size, num_samples, seed, num_workers

    def setup(self, stage: str | None = None) -> None:
        x0, labels = self.mixture.sample(self.num_samples, generator=torch.Generator().manual_seed(self.seed))
        self.train_set = TensorPairs(x0.float(), labels)

    def train_dataloader(self) -> DataLoader:
        return resumable_loader(self, self.train_set, self.batch_size, self.seed, self.num_workers)
