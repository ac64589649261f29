"""FID and KID for image teachers: clean-fid (modes ``clean``, ``legacy_pytorch``) and torchmetrics.

The reference is real images (a folder, or for clean-fid a precomputed ``.npz`` with ``mu`` and
``sigma``) or ``"teacher"``: the teacher's own samples from the same noise and prompts (50-step DDIM
with CFG, see ``Evaluator.teacher_reference``), i.e. distillation fidelity. Names say what a number is:
``fid_clean/<ref>``, ``fid_legacy/<ref>``, ``fid_torchmetrics/<ref>``, ``kid/<ref>`` and ``fid_teacher``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from tdd_lab.metrics.base import Metrics
from tdd_lab.metrics.features import (
    ResizedFeatures,
    batched_features,
    check_mode,
    folder_features,
    folder_images,
    inception_for_mode,
    to_uint8_images,
)

TEACHER = "teacher"


def reference_kind(reference: str) -> str:
    """``teacher``, ``npz`` or ``folder``; a missing path raises FileNotFoundError naming it."""
    if reference == TEACHER:
        return TEACHER
    path = Path(str(reference)).expanduser()
    if path.suffix == ".npz":
        if not path.is_file():
            raise FileNotFoundError(f"FID reference statistics {str(path)!r} not found (an .npz with mu and sigma)")
        return "npz"
    if not path.is_dir():
        raise FileNotFoundError(f"FID reference {str(path)!r} is neither 'teacher', an .npz nor an image folder")
    return "folder"


def reference_name(reference: str) -> str:
    """``teacher``, or the folder/file stem: ``/data/coco2k`` -> ``coco2k``."""
    return TEACHER if reference == TEACHER else Path(str(reference)).expanduser().resolve().stem


def gaussian_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) -> mean (D,), covariance (D, D), as clean-fid's ``fid_from_feats``."""
    return np.mean(feats, axis=0), np.cov(feats, rowvar=False)


class _FeatureMetric(Metrics):
    """Shared plumbing: a feature extractor (given, or the mode's Inception from ``inception_path``) and a reference."""

    needs_teacher_samples = False
    weight_files = ("inception_path", "reference")  # Inception weights file; reference folder / .npz

    def __init__(self, reference: str, mode: str, features: nn.Module | None, inception_path: str | None,
                 image_size: int, batch_size: int, device: str, max_reference: int | None, name: str | None):
        self.reference, self.mode, self.inception_path = str(reference), check_mode(mode), inception_path
        self.image_size, self.batch_size, self.device, self.max_reference = image_size, batch_size, device, max_reference
        self.kind = reference_kind(self.reference)
        self.needs_teacher_samples = self.kind == TEACHER
        self.features = type(features).__name__ if features is not None else f"inception:{mode}"
        # weights are checked here (at instantiation, before any training or sampling) and loaded here
        self._extractor = ResizedFeatures(features if features is not None else inception_for_mode(mode, inception_path),
                                          mode, image_size, device)
        self.name = name or self.default_name(reference_name(self.reference))
        self._teacher_samples = None

    def default_name(self, ref: str) -> str:
        raise NotImplementedError

    def describe(self) -> dict:
        """Settings, the fingerprints of ``weight_files`` and, for a custom feature module (e.g. the digit classifier's
        features), a hash of its weights: the cache keys of teacher numbers change with the features."""
        from tdd_lab.metrics.features import CleanInception, LegacyInception
        from tdd_lab.utils.cache import tensor_fingerprint

        inner = self._extractor.features
        custom = not isinstance(inner, (CleanInception, LegacyInception))  # Inception: its file is fingerprinted
        out = {**super().describe(),
               "features_weights": tensor_fingerprint(*inner.state_dict().values()) if custom else None}
        if self.kind == TEACHER:  # the teacher's samples: keyed by the teacher itself, not a path
            out["fingerprints"]["reference"] = None
        return out

    def set_teacher_samples(self, samples: torch.Tensor, teacher=None) -> None:
        """The teacher's reference samples (N, ...) for ``reference: teacher``."""
        self._teacher_samples = to_uint8_images(samples, teacher)
        self._teacher_changed()

    def _teacher_changed(self) -> None:
        pass

    def _require_teacher_samples(self) -> torch.Tensor:
        if self._teacher_samples is None:
            raise RuntimeError(f"{self.name}: reference 'teacher' needs set_teacher_samples() first "
                               "(the Evaluator does this)")
        return self._teacher_samples


class CleanFID(_FeatureMetric):
    """FID through clean-fid's pipeline: clean-fid resize per mode, its Inception (local weights), its
    ``frechet_distance``. ``reference``: an image folder, an ``.npz`` (mu, sigma) or ``teacher``."""

    def __init__(
        self,
        reference: str,                     # image folder | stats .npz | "teacher"
        mode: str = "clean",                # "clean" (PIL bicubic) | "legacy_pytorch" (torch bilinear)
        inception_path: str | None = None,  # local Inception weights of the mode (never downloaded)
        features: nn.Module | None = None,  # a custom extractor instead of Inception ([0, 255] -> (B, D))
        image_size: int = 299,              # resize target (Inception: 299)
        batch_size: int = 64,
        device: str = "cpu",
        max_reference: int | None = None,   # use at most this many reference images
        name: str | None = None,            # default fid_clean/<ref>, fid_legacy/<ref>; teacher: fid_teacher
    ):
        super().__init__(reference, mode, features, inception_path, image_size, batch_size, device, max_reference, name)
        self._ref_stats = None

    def default_name(self, ref: str) -> str:
        if ref == TEACHER and self.mode == "clean":
            return "fid_teacher"
        return f"fid_{'clean' if self.mode == 'clean' else 'legacy'}/{ref}"

    def _teacher_changed(self) -> None:
        self._ref_stats = None

    def reference_stats(self) -> tuple[np.ndarray, np.ndarray]:
        if self._ref_stats is None:
            if self.kind == "npz":
                stats = np.load(Path(self.reference).expanduser())
                if "mu" not in stats or "sigma" not in stats:
                    raise ValueError(f"{self.reference}: an FID statistics .npz needs arrays 'mu' and 'sigma'")
                self._ref_stats = stats["mu"], stats["sigma"]
            elif self.kind == "folder":
                self._ref_stats = gaussian_stats(folder_features(self._extractor, self.reference, self.batch_size,
                                                                 self.max_reference))
            else:
                self._ref_stats = gaussian_stats(batched_features(self._extractor, self._require_teacher_samples(),
                                                                  self.batch_size))
        return self._ref_stats

    def sample_features(self, samples: torch.Tensor, teacher=None) -> np.ndarray:
        return batched_features(self._extractor, to_uint8_images(samples, teacher), self.batch_size)

    @torch.no_grad()
    def compute(self, samples, labels, noise, teacher, guider):
        from cleanfid.fid import frechet_distance

        mu, sigma = gaussian_stats(self.sample_features(samples, teacher))
        ref_mu, ref_sigma = self.reference_stats()
        if mu.shape != ref_mu.shape:
            raise ValueError(f"{self.name}: sample features have {mu.shape[0]} dims, the reference {ref_mu.shape[0]}")
        return {self.name: float(frechet_distance(mu, sigma, ref_mu, ref_sigma))}


class _TorchmetricsMetric(_FeatureMetric):
    """torchmetrics FID/KID with ``ResizedFeatures`` as the custom ``feature`` module; reference features kept."""

    def __init__(self, reference, mode, features, inception_path, image_size, batch_size, device, max_reference, name):
        super().__init__(reference, mode, features, inception_path, image_size, batch_size, device, max_reference, name)
        if self.kind == "npz":
            raise ValueError(f"{type(self).__name__}: torchmetrics needs reference images (a folder or 'teacher'), "
                             "not .npz statistics; use CleanFID for those")
        self._metric, self._metric_n = None, 0

    def _teacher_changed(self) -> None:
        self._metric = None

    def _make_metric(self, n_fake: int, n_real: int):
        raise NotImplementedError

    def _ready_metric(self, n_fake: int):
        if self._metric is None or self._metric_n != n_fake:
            if self.kind == "folder":
                ref = folder_images(self.reference, self.max_reference)
                batches = [r[None] for r in ref]  # one image at a time: folders may mix sizes
            else:
                ref = self._require_teacher_samples()
                batches = [ref[i : i + self.batch_size] for i in range(0, len(ref), self.batch_size)]
            self._metric, self._metric_n = self._make_metric(n_fake, len(ref)), n_fake
            for batch in batches:
                self._metric.update(batch, real=True)
        self._metric.reset()  # keeps the reference features (reset_real_features=False)
        return self._metric

    @torch.no_grad()
    def compute(self, samples, labels, noise, teacher, guider):
        images = to_uint8_images(samples, teacher)
        metric = self._ready_metric(len(images))
        for i in range(0, len(images), self.batch_size):
            metric.update(images[i : i + self.batch_size], real=False)
        with torch.random.fork_rng():  # KID draws random subsets: fixed seed, caller's RNG untouched
            torch.manual_seed(0)
            value = metric.compute()
        return {self.name: float(value[0] if isinstance(value, tuple) else value)}


class TorchmetricsFID(_TorchmetricsMetric):
    """``torchmetrics.image.fid.FrechetInceptionDistance`` with a local-weights (or custom) feature module."""

    def __init__(self, reference: str, mode: str = "legacy_pytorch", inception_path: str | None = None,
                 features: nn.Module | None = None, image_size: int = 299, batch_size: int = 64, device: str = "cpu",
                 max_reference: int | None = None, name: str | None = None):
        super().__init__(reference, mode, features, inception_path, image_size, batch_size, device, max_reference, name)

    def default_name(self, ref: str) -> str:
        return f"fid_torchmetrics/{ref}"

    def _make_metric(self, n_fake, n_real):
        from torchmetrics.image.fid import FrechetInceptionDistance

        return FrechetInceptionDistance(feature=self._extractor, reset_real_features=False)


class TorchmetricsKID(_TorchmetricsMetric):
    """``torchmetrics.image.kid.KernelInceptionDistance`` (unbiased MMD, cubic kernel; the mean over subsets)."""

    def __init__(self, reference: str, mode: str = "legacy_pytorch", inception_path: str | None = None,
                 features: nn.Module | None = None, image_size: int = 299, batch_size: int = 64, device: str = "cpu",
                 max_reference: int | None = None, name: str | None = None,
                 subsets: int = 100,        # random subsets averaged
                 subset_size: int = 1000):  # capped at the number of samples
        self.subsets, self.subset_size = subsets, subset_size
        super().__init__(reference, mode, features, inception_path, image_size, batch_size, device, max_reference, name)

    def default_name(self, ref: str) -> str:
        return f"kid/{ref}"

    def _make_metric(self, n_fake, n_real):
        from torchmetrics.image.kid import KernelInceptionDistance

        return KernelInceptionDistance(feature=self._extractor, subsets=self.subsets, reset_real_features=False,
                                       subset_size=max(2, min(self.subset_size, n_fake, n_real)))
