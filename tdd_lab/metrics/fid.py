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
    check_crop,
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


def folder_stats(extractor: ResizedFeatures, folder: str | Path, batch_size: int = 64,
                 limit: int | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """(mu (D,), sigma (D, D), number of images) of the images below ``folder`` through ``extractor`` (its crop and
    resize): the one path of a metric's folder reference and of ``python -m tdd_lab.metrics.reference``."""
    feats = folder_features(extractor, folder, batch_size, limit)  # (N, D)
    if len(feats) < 2:
        raise ValueError(f"FID reference {str(folder)!r} holds {len(feats)} image(s); statistics need at least 2")
    mu, sigma = gaussian_stats(feats)
    return mu, sigma, len(feats)


STATS_PROTOCOL = ("mode", "crop", "image_size")  # recorded in the reference CLI's .npz beside mu and sigma


def check_stats_protocol(path: str | Path, **expected) -> None:
    """An ``.npz`` that records how its images were prepared (``STATS_PROTOCOL``) must match the metric's settings
    (clean-fid's own ``.npz`` files record nothing and are taken as they are)."""
    with np.load(Path(str(path)).expanduser()) as stats:
        recorded = {k: stats[k].item() for k in STATS_PROTOCOL if k in stats}
    diff = {k: (v, expected[k]) for k, v in recorded.items() if k in expected and v != expected[k]}
    if diff:
        said = ", ".join(f"{k}={v!r} (the metric: {e!r})" for k, (v, e) in diff.items())
        raise ValueError(f"FID reference statistics {str(path)!r} were built with {said}; rebuild them with "
                         "`python -m tdd_lab.metrics.reference` at the metric's settings")


class _FeatureMetric(Metrics):
    """Shared plumbing: a feature extractor (given, or the mode's Inception from ``inception_path``) and a reference."""

    needs_teacher_samples = False
    weight_files = ("inception_path", "reference")  # Inception weights file; reference folder / .npz

    def __init__(self, reference: str, mode: str, features: nn.Module | None, inception_path: str | None,
                 image_size: int, batch_size: int, device: str, max_reference: int | None, name: str | None,
                 crop: str = "none"):
        self.reference, self.mode, self.inception_path = str(reference), check_mode(mode), inception_path
        self.image_size, self.batch_size, self.device, self.max_reference = image_size, batch_size, device, max_reference
        self.kind = reference_kind(self.reference)
        self.needs_teacher_samples = self.kind == TEACHER
        self.features = type(features).__name__ if features is not None else f"inception:{mode}"
        # weights are checked here (at instantiation, before any training or sampling) and loaded here
        self._extractor = ResizedFeatures(features if features is not None else inception_for_mode(mode, inception_path),
                                          mode, image_size, device, crop)
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
        if self._extractor.crop != "none":  # absent at the default, so the keys of existing settings stay
            out["crop"] = self._extractor.crop
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
        crop: str = "none",                 # before the resize: "none" (clean-fid) | "center" (centred square)
    ):
        super().__init__(reference, mode, features, inception_path, image_size, batch_size, device, max_reference, name,
                         crop)
        self._ref_stats = None
        if self.kind == "npz":
            check_stats_protocol(self.reference, mode=mode, crop=crop, image_size=image_size)

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
                self._ref_stats = folder_stats(self._extractor, self.reference, self.batch_size, self.max_reference)[:2]
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


def protocol_name(mode: str, prompts: str, num_samples: int, resolution: int, crop: str, image_size: int,
                  reference: str) -> str:
    """``fid_<mode>/<prompts>_<n>_<res>px_<crop><size>_vs_<ref>``: every setting of a text-to-image FID protocol
    in its name, so two protocols never share one; e.g. ``fid_clean/coco30k_30000_512px_center299_vs_val2014``."""
    kind = "clean" if mode == "clean" else "legacy"
    return f"fid_{kind}/{prompts}_{int(num_samples)}_{int(resolution)}px_{crop}{int(image_size)}_vs_{reference}"


class ProtocolFID(CleanFID):
    """FID of the text-to-image protocol the papers report (COCO-2014 val 30k captions, or any prompt file).

    Sample i is generated for prompt line i of ``prompt_file`` (the evaluator's ``prompt_file``, which is also the
    teacher's evaluation prompt file), at the teacher's ``resolution``; images are optionally centre-cropped and
    resized to ``image_size`` by clean-fid's resize (``mode``) before Inception; the reference is an image folder
    (same crop and resize), an ``.npz`` of ``python -m tdd_lab.metrics.reference`` (its recorded settings must
    match) or ``teacher``. Every setting is in the name (:func:`protocol_name`), and ``compute`` refuses samples
    that do not match the number and resolution the name states.
    """

    def __init__(
        self,
        reference: str,                     # image folder | stats .npz | "teacher"
        prompt_file: str,                   # one caption per line; sample i has prompt line i
        num_samples: int,                   # samples per FID (30000 for COCO-30k)
        resolution: int | None,             # generation resolution in pixels (the teacher's teacher.resolution)
        mode: str = "clean",                # "clean" (PIL bicubic) | "legacy_pytorch" (torch bilinear)
        crop: str = "center",               # before the resize: "center" (centred square) | "none" (squash)
        image_size: int = 299,              # resize target before feature extraction (Inception: 299)
        inception_path: str | None = None,  # local Inception weights of the mode (never downloaded)
        features: nn.Module | None = None,  # a custom extractor instead of Inception ([0, 255] -> (B, D))
        batch_size: int = 64,
        device: str = "auto",
        max_reference: int | None = None,   # use at most this many reference images
        name: str | None = None,            # default: protocol_name(...)
    ):
        from tdd_lab.teachers.latent import read_prompt_file

        n_prompts = len(read_prompt_file(prompt_file))  # a missing file first: FileNotFoundError naming it
        if resolution is None:
            raise ValueError("ProtocolFID needs the generation resolution (resolution: ${teacher.resolution}; "
                             "the diffusers teachers have one)")
        self.prompt_file, self.num_samples, self.resolution = str(prompt_file), int(num_samples), int(resolution)
        self.crop = check_crop(crop)
        if self.num_samples > n_prompts:
            raise ValueError(f"{self.prompt_file} holds {n_prompts} prompts, fewer than num_samples={self.num_samples} "
                             "(sample i has prompt line i)")
        self._prompts = Path(self.prompt_file).expanduser().stem
        super().__init__(reference, mode, inception_path, features, image_size, batch_size, device, max_reference, name,
                         crop)

    def default_name(self, ref: str) -> str:
        return protocol_name(self.mode, self._prompts, self.num_samples, self.resolution, self.crop, self.image_size,
                             ref)

    def sample_features(self, samples: torch.Tensor, teacher=None) -> np.ndarray:
        images = to_uint8_images(samples, teacher)  # (n, 3, H, W)
        if len(images) != self.num_samples or tuple(images.shape[-2:]) != (self.resolution, self.resolution):
            raise ValueError(f"{self.name}: the protocol is {self.num_samples} samples at {self.resolution} px, got "
                             f"{len(images)} at {tuple(images.shape[-2:])} (set metrics.num_samples / the teacher's "
                             "resolution, or the metric's num_samples / resolution)")
        return batched_features(self._extractor, images, self.batch_size)


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
