"""Lightning data modules of the embedded experiments."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from tdd_lab.data.digits import load_digit_tensors


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

    def __init__(self, batch_size: int = 64, num_workers: int = 0, teacher=None):
        super().__init__()
        self.batch_size, self.num_workers = batch_size, num_workers

    def setup(self, stage: str | None = None) -> None:
        images, labels = load_digit_tensors()
        self.train_set = TensorPairs(images, labels)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, drop_last=True,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)


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
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, drop_last=True,
                          num_workers=self.num_workers)
