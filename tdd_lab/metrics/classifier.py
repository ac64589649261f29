"""A small digit classifier that tdd_lab trains itself: FID features and prompt alignment for digits."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from tdd_lab.data.digits import load_digit_tensors, split_indices
from tdd_lab.utils.cache import cached_dir, default_cache_dir

# code version of the cached classifier: bump when DigitClassifier or its training (_train) changes, so caches built
# by the old code (the classifier, and teacher numbers measured with it) are not reused
CLASSIFIER_VERSION = 1


class DigitClassifier(nn.Module):
    """CNN on (B, 1, 8, 8) images in [-1, 1]; ``features`` are the 64-d penultimate activations."""

    num_features = 64  # read by torchmetrics' custom-feature FID

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.SiLU(),
            nn.Conv2d(32, 64, 3, padding=1, stride=2), nn.SiLU(),
            nn.Conv2d(64, 64, 3, padding=1), nn.SiLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 64), nn.SiLU(),
        )
        self.head = nn.Linear(64, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 8, 8) in [-1, 1] -> (B, 64)."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class FIDFeatures(nn.Module):
    """torchmetrics feature extractor: takes images in [0, 1] (``normalize=True``), returns (B, 64) features."""

    def __init__(self, classifier: DigitClassifier):
        super().__init__()
        self.classifier = classifier
        self.num_features = classifier.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if x.shape[1] == 3:  # torchmetrics probes with RGB; our digits are grey
            x = x.mean(1, keepdim=True)
        return self.classifier.features(x * 2 - 1).double()


@torch.enable_grad()  # may be reached from no_grad evaluation code
def _train(out: Path, seed: int, epochs: int) -> None:
    torch.manual_seed(seed)
    images, labels = load_digit_tensors()
    train_idx, hold_idx = split_indices(len(images), 0.2, seed)
    model = DigitClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(epochs), desc="training digit classifier", mininterval=2.0):
        perm = train_idx[torch.randperm(len(train_idx), generator=gen)]
        for i in range(0, len(perm), 64):
            b = perm[i : i + 64]
            x = images[b]
            dx, dy = torch.randint(-1, 2, (2,), generator=gen).tolist()  # +-1 px shifts
            x = torch.roll(x, shifts=(dx, dy), dims=(2, 3))
            loss = nn.functional.cross_entropy(model(x), labels[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(images[hold_idx]).argmax(1) == labels[hold_idx]).float().mean().item()
    save_file(model.state_dict(), str(out / "classifier.safetensors"))
    (out / "classifier.json").write_text(json.dumps({"heldout_accuracy": acc, "epochs": epochs}))


def _train_fixed_threads(out: Path, seed: int, epochs: int) -> None:
    """The same classifier on any core count (see :mod:`tdd_lab.utils.threads`)."""
    from tdd_lab.utils.threads import fixed_threads

    with fixed_threads():
        _train(out, seed, epochs)


def load_digit_classifier(cache_dir: str | Path | None = None, seed: int = 0, epochs: int = 30) -> DigitClassifier:
    """The cached classifier (trained on first use); ``.heldout_accuracy`` reports its quality."""
    path = cached_dir(cache_dir or default_cache_dir(), "digit-classifier", {"seed": seed, "epochs": epochs, "v": CLASSIFIER_VERSION},
                      lambda out: _train_fixed_threads(out, seed, epochs))
    model = DigitClassifier()
    model.load_state_dict(load_file(str(path / "classifier.safetensors")))
    model.heldout_accuracy = json.loads((path / "classifier.json").read_text())["heldout_accuracy"]
    return model.eval().requires_grad_(False)
