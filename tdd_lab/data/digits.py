"""sklearn's 8x8 handwritten digits (1,797 images, ships with scikit-learn), as [-1, 1] tensors."""

from __future__ import annotations

import torch

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def digit_prompt(label: int) -> str:
    return f"a handwritten digit {DIGIT_WORDS[int(label)]}"


def load_digit_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """Images (1797, 1, 8, 8) float32 in [-1, 1] and labels (1797,) int64."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.from_numpy(d.images).float().div(16.0).mul(2).sub(1).unsqueeze(1)
    return images, torch.from_numpy(d.target).long()


def split_indices(n: int, holdout: float = 0.2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded train/held-out split: (n_train,), (n_holdout,) indices."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    k = int(round(n * holdout))
    return perm[k:], perm[:k]
