"""Digits metrics: FID on features of tdd_lab's own digit classifier (torchmetrics' custom-feature path)
and prompt alignment ``class_acc`` (the classifier's accuracy on the prompted digit)."""

from __future__ import annotations

import torch

from tdd_lab.data.digits import load_digit_tensors
from tdd_lab.metrics.base import Metrics
from tdd_lab.metrics.classifier import CLASSIFIER_VERSION, FIDFeatures, load_digit_classifier


class DigitsMetrics(Metrics):
    """``fid`` against all 1,797 real digits, and ``class_acc``."""

    def __init__(self, cache_dir: str | None = None, classifier_seed: int = 0, classifier_epochs: int = 30):
        self.cache_dir, self.classifier_seed, self.classifier_epochs = cache_dir, classifier_seed, classifier_epochs
        self._classifier = None

    def _setup(self):
        if self._classifier is None:
            self._classifier = load_digit_classifier(self.cache_dir, self.classifier_seed, self.classifier_epochs)

    @torch.no_grad()
    def compute(self, samples, labels, noise, teacher, guider):
        from torchmetrics.image.fid import FrechetInceptionDistance

        self._setup()
        clf = self._classifier.to("cpu")
        samples = samples.detach().float().cpu().clamp(-1, 1)
        fid = FrechetInceptionDistance(feature=FIDFeatures(clf), normalize=True, input_img_size=(1, 8, 8))
        real, _ = load_digit_tensors()
        fid.update((real + 1) / 2, real=True)
        fid.update((samples + 1) / 2, real=False)
        acc = (clf(samples).argmax(1) == labels.cpu()).float().mean()
        return {"fid": float(fid.compute()), "class_acc": float(acc)}

    def describe(self) -> dict:
        """Settings and the classifier's code version (cache keys of teacher numbers)."""
        return {**super().describe(), "classifier_version": CLASSIFIER_VERSION}
