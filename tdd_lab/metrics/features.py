"""Image feature extraction for FID/KID: samples -> uint8 images -> clean-fid resize -> features.

Feature extractors are ``nn.Module``s mapping (B, 3, S, S) float images in [0, 255] to (B, D)
features (clean-fid's convention). Inception weights always come from a local file: a missing
file raises :class:`MissingWeightsError` naming it and the address clean-fid would download it
from; nothing is ever downloaded.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from torch import nn

# where clean-fid fetches its Inception weights (named in the missing-file error; never contacted)
CLEAN_INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
LEGACY_INCEPTION_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                        "pt_inception-2015-12-05-6726825d.pth")
MODES = ("clean", "legacy_pytorch")


class MissingWeightsError(FileNotFoundError):
    """A weights file that tdd_lab will not download is missing; the message names it."""


def require_file(path: str | Path | None, what: str, source: str) -> Path:
    """``path`` as a Path if it is an existing file, else :class:`MissingWeightsError`."""
    if path is None or not Path(str(path)).expanduser().is_file():
        raise MissingWeightsError(f"{what}: weights file {str(path)!r} not found. Provide it locally ({source}); "
                                  "tdd_lab never downloads weights")
    return Path(str(path)).expanduser()


def resolve_device(device: str) -> str:
    """``auto``: cuda when available, else cpu."""
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return mode


class CleanInception(nn.Module):
    """clean-fid's TorchScript Inception (``inception-2015-12-05.pt``) from a local file, without resizing
    inside: (B, 3, 299, 299) in [0, 255] -> (B, 2048), as ``cleanfid.inception_torchscript.InceptionV3W``."""

    num_features = 2048

    def __init__(self, path: str):
        super().__init__()
        file = require_file(path, "clean-fid Inception (mode 'clean')",
                            f"clean-fid downloads it from {CLEAN_INCEPTION_URL}")
        self.base = torch.jit.load(str(file), map_location="cpu").eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base.layers.forward((x - 128) / 128).flatten(1)


class LegacyInception(nn.Module):
    """pytorch-fid's FID Inception (``pt_inception-2015-12-05-6726825d.pth``) from a local file, as clean-fid's
    ``legacy_pytorch`` mode builds it: (B, 3, 299, 299) in [0, 255] -> (B, 2048)."""

    num_features = 2048

    def __init__(self, path: str):
        super().__init__()
        from cleanfid import inception_pytorch

        file = require_file(path, "pytorch-fid Inception (mode 'legacy_pytorch')",
                            f"clean-fid downloads it from {LEGACY_INCEPTION_URL}")
        state = torch.load(str(file), map_location="cpu", weights_only=True)
        # clean-fid's builder fetches the state dict from a URL; hand it the local one instead
        with mock.patch.object(inception_pytorch, "load_state_dict_from_url", lambda *a, **k: state):
            self.net = inception_pytorch.InceptionV3(output_blocks=[3], resize_input=False).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x / 255)[0].flatten(1)


def inception_for_mode(mode: str, path: str | None) -> nn.Module:
    """The Inception of a clean-fid ``mode`` loaded from ``path``."""
    return CleanInception(path) if check_mode(mode) == "clean" else LegacyInception(path)


CROPS = ("none", "center")  # before the resize: none (clean-fid: the whole image, squashed) | center square


def check_crop(crop: str) -> str:
    if crop not in CROPS:
        raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
    return crop


def center_crop(x: np.ndarray) -> np.ndarray:
    """(H, W, C) -> the centred (S, S, C) square, S = min(H, W) (torchvision's CenterCrop rounding)."""
    h, w = x.shape[:2]
    s = min(h, w)
    top, left = int(round((h - s) / 2.0)), int(round((w - s) / 2.0))
    return x[top : top + s, left : left + s]


def resizer(mode: str, size: int, crop: str = "none") -> Callable[[np.ndarray], np.ndarray]:
    """The one image -> Inception-input function of FID (samples, reference folders and the reference CLI alike):
    one (H, W, 3) image in [0, 255] -> optional ``crop`` -> clean-fid's resize per mode to (size, size, 3) float32
    (``cleanfid.resize.build_resizer`` at a configurable size)."""
    from cleanfid.resize import make_resizer

    check_crop(crop)
    if check_mode(mode) == "clean":
        resize = make_resizer("PIL", False, "bicubic", (size, size))
    else:
        resize = make_resizer("PyTorch", False, "bilinear", (size, size))
    return resize if crop == "none" else lambda x: resize(np.ascontiguousarray(center_crop(np.asarray(x))))


_decoded: dict = {}  # the last decoded sample set: the metrics of a suite share one VAE decode


def to_uint8_images(samples: torch.Tensor, teacher=None, batch_size: int = 16) -> torch.Tensor:
    """Samples -> (B, 3, H, W) uint8 images, quantised as a saved PNG would be.

    With a teacher, samples go through ``teacher.decode`` (latents -> (B, 3, H, W) in [-1, 1]; the identity for
    pixel teachers) ``batch_size`` at a time; without one they are images in [-1, 1]. One channel is repeated to RGB.
    """
    x = samples.detach()
    decode = None if teacher is None else teacher.decode
    if decode is not None:
        # the same tensor object (held here, so its memory is not reused), unmodified, and the same teacher
        if not (_decoded.get("samples") is samples and _decoded.get("version") == samples._version
                and _decoded.get("teacher") is teacher):
            with torch.no_grad():
                images = torch.cat([decode(x[i : i + batch_size]).float().cpu() for i in range(0, len(x), batch_size)])
            _decoded.clear()
            _decoded.update(samples=samples, version=samples._version, teacher=teacher, images=images)
        x = _decoded["images"]
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"image metrics need (B, 1 or 3, H, W) images in [-1, 1], got shape {tuple(x.shape)}; "
                         "a latent teacher decodes them (Teacher.decode)")
    x = ((x.float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.expand(-1, 3, -1, -1).contiguous() if x.shape[1] == 1 else x


class ResizedFeatures(nn.Module):
    """uint8 (B, 3, H, W) images -> optional centre crop -> clean-fid resize (per ``mode``) -> ``features`` -> (B, D)
    float64.

    The custom ``feature`` module torchmetrics' FID/KID take, and the extractor of the clean-fid metrics.
    """

    def __init__(self, features: nn.Module, mode: str = "clean", image_size: int = 299, device: str = "cpu",
                 crop: str = "none"):  # "none" | "center": crop to the centred square before the resize
        super().__init__()
        device = resolve_device(device)
        self.features, self.mode, self.image_size, self.device = features.eval(), check_mode(mode), image_size, device
        self.crop = check_crop(crop)
        self._resize = resizer(mode, image_size, crop)
        self.features.to(device)
        n = getattr(features, "num_features", None)
        if n is None:
            with torch.no_grad():
                n = self.features(torch.zeros(1, 3, image_size, image_size, device=device)).shape[-1]
        self.num_features = int(n)

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) uint8 -> (B, 3, S, S) float32 in [0, 255], image by image as clean-fid does (and as
        :func:`folder_features` does for a reference folder: the same function)."""
        arrays = [self._resize(img.permute(1, 2, 0).cpu().numpy()) for img in images]
        return torch.from_numpy(np.stack(arrays).astype(np.float32)).permute(0, 3, 1, 2)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(self.resize(images).to(self.device)).flatten(1).double().cpu()


def batched_features(extractor: ResizedFeatures, images: torch.Tensor, batch_size: int) -> np.ndarray:
    """(N, 3, H, W) uint8 -> (N, D) float64 numpy features."""
    return torch.cat([extractor(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]).numpy()


def folder_features(extractor: ResizedFeatures, folder: str | Path, batch_size: int,
                    limit: int | None = None) -> np.ndarray:
    """Features of the images below ``folder`` through clean-fid's own loader (``get_folder_features``)."""
    from cleanfid.fid import get_folder_features

    feats = get_folder_features(str(folder), model=extractor.features, num_workers=0, num=limit,
                                batch_size=batch_size, device=torch.device(extractor.device), mode=extractor.mode,
                                custom_fn_resize=extractor._resize, verbose=False)
    return feats.astype(np.float64)


def folder_images(folder: str | Path, limit: int | None = None) -> list[torch.Tensor]:
    """The images below ``folder`` (clean-fid's extensions, sorted) as (3, H, W) uint8 tensors."""
    from cleanfid.utils import EXTENSIONS
    from PIL import Image

    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lstrip(".") in EXTENSIONS and p.suffix != ".npy")
    files = files[:limit] if limit else files
    return [torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1) for f in files]


class DigitFeatures(nn.Module):
    """The 64-d penultimate features of tdd_lab's digit classifier on [0, 255] images (any size, RGB or grey),
    for the clean-fid/torchmetrics pipelines on the embedded digits experiment (use ``image_size=8``)."""

    num_features = 64

    def __init__(self, cache_dir: str | None = None, seed: int = 0, epochs: int = 30):
        super().__init__()
        from tdd_lab.metrics.classifier import load_digit_classifier

        self.classifier = load_digit_classifier(cache_dir, seed, epochs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().mean(1, keepdim=True) / 127.5 - 1  # (B, 1, H, W) in [-1, 1]
        if x.shape[-2:] != (8, 8):
            x = nn.functional.interpolate(x, size=(8, 8), mode="bilinear", antialias=True, align_corners=False)
        return self.classifier.features(x)
