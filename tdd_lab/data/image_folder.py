"""Images with captions from a folder: ``a.png`` + ``a.txt``, or a ``captions.csv`` / ``captions.jsonl``.

Caption files name the image in a ``file_name`` column (or ``filename``, ``file``, ``image``, ``image_path``,
``path``) and its caption in ``text`` (or ``caption``, ``prompt``); a malformed line is reported with its
file and 1-based line number. A folder where no image has a caption is refused unless
``allow_uncaptioned`` (it would train unconditionally); some uncaptioned images are a logged warning.

Samples are resized (shorter side), cropped (center or random) and scaled to [-1, 1]; the crop
offset and the original size are kept (SDXL's micro-conditioning needs them). An unreadable image
is skipped: ``__getitem__`` returns None and :func:`collate_skipping` counts it in the batch.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import random
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import Dataset

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


FILE_COLUMNS = ("file_name", "filename", "file", "image", "image_path", "path")
TEXT_COLUMNS = ("text", "caption", "prompt")
log = logging.getLogger(__name__)


def caption_columns(columns, where: str) -> tuple[str, str]:
    """(file column, caption column) among ``columns`` (first alias present, case-insensitive); a clear
    ``ValueError`` naming ``where`` and the accepted names otherwise."""
    by_lower = {str(c).strip().lower(): c for c in columns}
    found = [next((by_lower[a] for a in names if a in by_lower), None) for names in (FILE_COLUMNS, TEXT_COLUMNS)]
    if None in found:
        raise ValueError(f"{where}: columns {sorted(map(str, columns))} name no "
                         f"{'image file' if found[0] is None else 'caption'}; expected one of "
                         f"{', '.join(FILE_COLUMNS)} for the image file and one of {', '.join(TEXT_COLUMNS)} "
                         "for its caption")
    return found[0], found[1]


def read_jsonl_captions(path: Path) -> dict[str, str]:
    """{file name: caption} from a JSON-lines file; errors name the file and the 1-based line."""
    captions = {}
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {lineno}: malformed JSON ({e.msg}, column {e.colno})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}: line {lineno}: expected a JSON object, got {type(row).__name__}")
        file_col, text_col = caption_columns(row, f"{path}: line {lineno}")
        captions[str(row[file_col])] = str(row[text_col])
    return captions


def read_csv_captions(path: Path) -> dict[str, str]:
    """{file name: caption} from a CSV file with a header row (column aliases: :data:`FILE_COLUMNS`,
    :data:`TEXT_COLUMNS`)."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        file_col, text_col = caption_columns(reader.fieldnames or [], f"{path}: header")
        return {r[file_col]: r[text_col] or "" for r in reader if r.get(file_col)}


def read_captions(root: Path) -> dict[str, str]:
    """{file name: caption} from ``captions.jsonl`` or ``captions.csv`` in ``root`` (empty when neither exists)."""
    if (root / "captions.jsonl").exists():
        return read_jsonl_captions(root / "captions.jsonl")
    if (root / "captions.csv").exists():
        return read_csv_captions(root / "captions.csv")
    return {}


class ImageFolderDataset(Dataset):
    """``{"pixel_values" (3, R, R), "prompt", "original_size" (2,), "crop_top_left" (2,)}`` per image."""

    def __init__(self, root: str | Path, resolution: int = 64, center_crop: bool = True, random_flip: bool = False,
                 allow_uncaptioned: bool = False):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"data.root {str(self.root)!r} is not a directory")
        self.files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
        if not self.files:
            raise ValueError(f"data.root {str(self.root)!r} holds no image ({', '.join(sorted(IMAGE_EXTS))})")
        self.captions = read_captions(self.root)
        self.resolution, self.center_crop, self.random_flip = resolution, center_crop, random_flip
        if not allow_uncaptioned:
            self.check_captioned()

    def check_captioned(self) -> None:
        """Refuse a folder where no image has a caption; warn (naming a few) when some have none."""
        missing = [p for p in self.files if not self.has_caption(p)]
        if len(missing) == len(self.files):
            raise ValueError(f"data.root {str(self.root)!r}: none of its {len(self.files)} images has a caption "
                             "(a same-stem .txt, or a captions.csv / captions.jsonl): training would be "
                             "unconditional; set data.allow_uncaptioned=true to train on it anyway")
        if missing:
            names = ", ".join(str(p.relative_to(self.root)) for p in missing[:3])
            log.warning("data.root %r: %d of %d images have no caption (e.g. %s); they train with the empty prompt",
                        str(self.root), len(missing), len(self.files), names)

    def has_caption(self, path: Path) -> bool:
        return (path.with_suffix(".txt").exists() or path.name in self.captions
                or str(path.relative_to(self.root)) in self.captions)

    def __len__(self) -> int:
        return len(self.files)

    def caption(self, path: Path) -> str:
        txt = path.with_suffix(".txt")
        if txt.exists():
            return txt.read_text().strip()
        return self.captions.get(path.name, self.captions.get(str(path.relative_to(self.root)), ""))

    def __getitem__(self, i: int):
        from PIL import Image, UnidentifiedImageError

        path = self.files[i]
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                im.load()
        except (OSError, UnidentifiedImageError, ValueError):
            return None
        return preprocess_image(im, self.resolution, self.center_crop, self.random_flip, self.caption(path))


def preprocess_image(im, resolution: int, center_crop: bool = True, random_flip: bool = False, prompt: str = "") -> dict:
    """PIL RGB image -> ``{"pixel_values" (3, R, R) in [-1, 1], "prompt", "original_size" (h, w), "crop_top_left"}``.

    Resize the shorter side to R, crop R x R (center or random), optionally flip; the original size
    and crop offset are what SDXL's micro-conditioning takes.
    """
    from torchvision.transforms import functional as TF

    w, h = im.size
    r = resolution
    im = TF.resize(im, r, interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    rw, rh = im.size
    if center_crop:
        top, left = (rh - r) // 2, (rw - r) // 2
    else:
        top, left = random.randint(0, rh - r), random.randint(0, rw - r)
    im = TF.crop(im, top, left, r, r)
    if random_flip and random.random() < 0.5:
        im = TF.hflip(im)
    x = TF.to_tensor(im) * 2 - 1
    return {"pixel_values": x, "prompt": prompt, "original_size": torch.tensor([h, w]),
            "crop_top_left": torch.tensor([top, left])}


def collate_skipping(samples: list) -> dict:
    """Stack the readable samples; ``batch["skipped"]`` counts the unreadable ones."""
    good = [s for s in samples if s is not None]
    if not good:
        return {"skipped": len(samples)}
    batch = {k: (torch.stack([s[k] for s in good]) if torch.is_tensor(good[0][k]) else [s[k] for s in good])
             for k in good[0]}
    batch["skipped"] = len(samples) - len(good)
    return batch


class DataQualityError(RuntimeError):
    """Too many unreadable samples."""


def min_samples_seen(max_bad_fraction: float, cap: int | None = None) -> int:
    """How many samples to see before judging the unreadable fraction: enough that one bad sample early
    (counts are per loader worker) does not stop a run, e.g. 400 at 5%; at most ``cap`` (the dataset size)."""
    n = max(64, math.ceil(20 / max(max_bad_fraction, 1e-6)))
    return n if cap is None else max(1, min(n, cap))


class SkippingCollate:
    """:func:`collate_skipping` that stops the run once the unreadable fraction exceeds ``max_bad_fraction``.

    Counts are kept where the collate runs (the main process, or each loader worker).
    """

    def __init__(self, max_bad_fraction: float = 0.05, min_seen: int = 64):
        self.max_bad_fraction, self.min_seen = max_bad_fraction, min_seen
        self.seen = self.skipped = 0

    def __call__(self, samples: list) -> dict:
        batch = collate_skipping(samples)
        self.seen += len(samples)
        self.skipped += batch["skipped"]
        if self.seen >= self.min_seen and self.skipped > self.max_bad_fraction * self.seen:
            raise DataQualityError(
                f"{self.skipped} of {self.seen} samples were unreadable ({self.skipped / self.seen:.1%}), more than "
                f"data.max_bad_fraction={self.max_bad_fraction:g}: check the data")
        return batch


def _flatten(cond, prefix: str = "cond") -> dict[str, torch.Tensor]:
    """Nested condition -> {"cond.a.b": tensor} (safetensors keys)."""
    if isinstance(cond, dict):
        return {k: v for key, sub in cond.items() for k, v in _flatten(sub, f"{prefix}.{key}").items()}
    return {prefix: cond}


def _unflatten(flat: dict[str, torch.Tensor]):
    """Inverse of :func:`_flatten`."""
    if list(flat) == ["cond"]:
        return flat["cond"]
    out: dict = {}
    for key, v in flat.items():
        node = out
        parts = key.split(".")[1:]
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = v
    return out


class CachedLatentDataset(Dataset):
    """Pre-encoded samples ``{"latents" (C, h, w), "cond": per-sample condition}`` from a latent cache."""

    def __init__(self, path: Path):
        from safetensors import safe_open

        self.file = str(path / "latents.safetensors")
        with safe_open(self.file, "pt") as f:
            self.keys = [k for k in f.keys() if k != "latents"]
            self.length = f.get_slice("latents").get_shape()[0]
        self._handle = None  # opened lazily, once per loader worker: rows are read on demand, not all in RAM

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        from safetensors import safe_open

        if self._handle is None:
            self._handle = safe_open(self.file, "pt")
        f = self._handle
        row = {k: f.get_slice(k)[i : i + 1][0] for k in self.keys}
        return {"latents": f.get_slice("latents")[i : i + 1][0].float(),
                "cond": _unflatten({k: v.float() for k, v in row.items()})}

    def __getstate__(self):  # loader workers reopen the file
        return {**self.__dict__, "_handle": None}


@torch.no_grad()
def encode_dataset(dataset: ImageFolderDataset, teacher, out: Path, batch_size: int = 16) -> None:
    """Encode every readable image (VAE latents) and caption (text conditions) once; write one safetensors file."""
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    latents, conds, skipped = [], [], 0
    for i in tqdm(range(0, len(dataset), batch_size), desc="caching latents and text embeddings"):
        batch = collate_skipping([dataset[j] for j in range(i, min(i + batch_size, len(dataset)))])
        skipped += batch["skipped"]
        if "pixel_values" not in batch:
            continue
        x0, cond = teacher.conditioner.prepare_batch(batch)
        latents.append(x0.cpu())
        conds.append({k: v.cpu() for k, v in _flatten(cond).items()})
    if not latents:
        raise DataQualityError(f"data.root {str(dataset.root)!r}: none of the {len(dataset)} images is readable")
    tensors = {"latents": torch.cat(latents).contiguous()}
    # text conditions in the dtype the teacher's network computes in (no loss; half the disk for bf16/fp16 teachers)
    cond_dtype = next(teacher.denoiser.parameters()).dtype
    tensors.update({k: torch.cat([c[k] for c in conds]).to(cond_dtype if conds[0][k].is_floating_point() and
                                                           not k.endswith("time_ids") else conds[0][k].dtype).contiguous()
                    for k in conds[0]})
    save_file(tensors, str(out / "latents.safetensors"), metadata={"skipped": str(skipped)})


class ImageFolderDataModule(pl.LightningDataModule):
    """Captioned images from ``root`` for the diffusers teachers (batches of :class:`ImageFolderDataset`).

    Shuffled with the resumable sampler (exact resume); unreadable images are skipped and counted
    (``data/skipped`` in the logs) and the run stops once more than ``max_bad_fraction`` are unreadable.
    With ``cache_latents`` the VAE latents and text conditions are computed once (rank 0, on the
    training device) into ``cache_dir`` and training reads them instead of images: no VAE or text
    encoder forward per step. The cache is keyed by the teacher, resolution and the files (names,
    sizes, mtimes), so editing the data or changing the teacher rebuilds it.
    """

    def __init__(
        self,
        root: str,                       # folder of images (+ same-stem .txt, or captions.csv / .jsonl)
        resolution: int = 1024,          # pixels (normally ${teacher.resolution})
        center_crop: bool = True,        # False: random crops (their offsets go to SDXL's time_ids)
        random_flip: bool = False,
        batch_size: int = 4,
        num_workers: int = 4,
        seed: int = 0,
        max_bad_fraction: float = 0.05,  # stop when more of the samples seen are unreadable
        cache_latents: bool = False,     # pre-encode latents + text conditions once (deterministic crops only)
        cache_dir: str | None = None,    # where (default: $TDD_LAB_CACHE)
        allow_uncaptioned: bool = False,  # train on images without captions (unconditionally) instead of refusing
        teacher=None,
    ):
        super().__init__()
        if cache_latents and (not center_crop or random_flip):
            raise ValueError("data.cache_latents needs data.center_crop=true and data.random_flip=false "
                             "(a cached latent is one fixed crop)")
        if cache_latents and teacher is None:
            raise ValueError("data.cache_latents needs the teacher (it encodes the images)")
        self.root, self.resolution, self.center_crop, self.random_flip = root, resolution, center_crop, random_flip
        self.batch_size, self.num_workers, self.seed, self.max_bad_fraction = batch_size, num_workers, seed, max_bad_fraction
        self.cache_latents, self.cache_dir, self.teacher = cache_latents, cache_dir, teacher
        self.allow_uncaptioned = allow_uncaptioned

    def _cache_key(self, dataset: ImageFolderDataset) -> dict:
        files = [(str(p.relative_to(dataset.root)), p.stat().st_size, p.stat().st_mtime_ns) for p in dataset.files]
        captions = [dataset.caption(p) for p in dataset.files]
        describe = {k: v for k, v in self.teacher.describe().items() if k != "eval_prompts"}
        return {"teacher": describe, "resolution": self.resolution, "files": files, "captions": captions, "v": 1}

    def _latent_cache(self, build: bool) -> Path:
        from tdd_lab.utils.cache import cached_dir, config_key, default_cache_dir

        dataset = ImageFolderDataset(self.root, self.resolution, True, False, self.allow_uncaptioned)
        cache = Path(self.cache_dir) if self.cache_dir else default_cache_dir()
        key = self._cache_key(dataset)
        if not build:
            return cache / f"latents-{config_key(key)}"
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        self.teacher.to(device)
        return cached_dir(cache, "latents", key, lambda out: encode_dataset(dataset, self.teacher, out))

    def prepare_data(self) -> None:
        if self.cache_latents:  # once per node, before setup() on every rank
            self._latent_cache(build=True)

    def setup(self, stage: str | None = None) -> None:
        if self.cache_latents:
            path = self._latent_cache(build=False)
            if not (path / "DONE").exists():
                path = self._latent_cache(build=True)
            self.train_set = CachedLatentDataset(path)
        else:
            self.train_set = ImageFolderDataset(self.root, self.resolution, self.center_crop, self.random_flip,
                                                self.allow_uncaptioned)

    def train_dataloader(self):
        from tdd_lab.data.modules import resumable_loader

        if self.cache_latents:
            return resumable_loader(self, self.train_set, self.batch_size, self.seed, self.num_workers)
        return resumable_loader(self, self.train_set, self.batch_size, self.seed, self.num_workers,
                                collate_fn=SkippingCollate(self.max_bad_fraction,
                                                           min_samples_seen(self.max_bad_fraction, len(self.train_set))))
