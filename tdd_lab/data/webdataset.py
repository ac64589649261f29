"""Captioned images from WebDataset tar shards: local paths, brace patterns or ``pipe:`` commands.

Each sample needs an image (``jpg``/``jpeg``/``png``/``webp``) and a caption (``txt``, or ``json``
with a ``caption``/``text`` field). Each rank and loader worker draws shards with replacement from an
endless, seeded stream (``resampled``), so ranks never run out of data at different times; an
unreadable sample is skipped and counted like in the image-folder data (:class:`SkippingCollate`).
Streaming data has no exact resume: after a restart the stream begins again with a new shard order.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytorch_lightning as pl
import torch

from tdd_lab.data.image_folder import SkippingCollate, min_samples_seen, preprocess_image

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


def expand_urls(urls: str | list[str]) -> list[str]:
    """Shard specs -> list; local files (not ``pipe:``/URLs) must exist."""
    import braceexpand

    items = [urls] if isinstance(urls, str) else list(urls)
    out = [u for item in items for u in braceexpand.braceexpand(str(item))]
    if not out:
        raise ValueError("data.urls is empty")
    for u in out:
        if not u.startswith(("pipe:", "http://", "https://", "s3://", "gs://")) and not Path(u).expanduser().is_file():
            raise FileNotFoundError(f"data.urls: shard {u!r} not found")
    return out


def decode_sample(sample: dict, resolution: int, center_crop: bool, random_flip: bool) -> dict | None:
    """A raw webdataset sample -> preprocessed dict, or None when the image or caption is unusable."""
    from PIL import Image, UnidentifiedImageError

    key = next((k for k in IMAGE_KEYS if k in sample), None)
    if key is None:
        return None
    if "txt" in sample:
        caption = sample["txt"].decode("utf-8").strip()
    elif "json" in sample:
        meta = json.loads(sample["json"])
        caption = str(meta.get("caption", meta.get("text", "")))
    else:
        caption = ""
    try:
        with Image.open(io.BytesIO(sample[key])) as im:
            im = im.convert("RGB")
            im.load()
    except (OSError, UnidentifiedImageError, ValueError):
        return None
    return preprocess_image(im, resolution, center_crop, random_flip, caption)


class _Decode:
    """A pipeline stage: each raw sample -> :func:`decode_sample`. An unreadable sample stays in the stream as
    ``None`` for the collate to count (``ds.map`` would drop it silently: webdataset's map skips ``None`` results)."""

    def __init__(self, resolution: int, center_crop: bool, random_flip: bool):
        self.args = (resolution, center_crop, random_flip)

    def __call__(self, source):
        for sample in source:
            yield decode_sample(sample, *self.args)


class WebDatasetDataModule(pl.LightningDataModule):
    """Streams shards through ``webdataset`` with shard and sample shuffling; batches like the image folder."""

    def __init__(
        self,
        urls: str | list[str],           # "data/shard-{000000..000099}.tar", a list, or "pipe:aws s3 cp ... -"
        resolution: int = 1024,
        center_crop: bool = True,
        random_flip: bool = False,
        batch_size: int = 4,
        num_workers: int = 4,
        shuffle_buffer: int = 1000,      # samples; 0 disables sample shuffling
        seed: int = 0,
        max_bad_fraction: float = 0.05,
        teacher=None,
    ):
        super().__init__()
        self.urls = expand_urls(urls)
        self.resolution, self.center_crop, self.random_flip = resolution, center_crop, random_flip
        self.batch_size, self.num_workers, self.shuffle_buffer = batch_size, num_workers, shuffle_buffer
        self.seed, self.max_bad_fraction = seed, max_bad_fraction

    def train_dataloader(self):
        import random

        import webdataset as wds

        rank = self.trainer.global_rank if self.trainer is not None else 0
        # an endless stream of shards drawn with replacement, seeded per rank: every rank always has data
        # (finite per-rank shard splits give ranks different batch counts and hang DDP collectives)
        ds = wds.WebDataset(self.urls, resampled=True, nodesplitter=None, empty_check=False,
                            seed=self.seed + 1000 * rank, handler=wds.warn_and_continue)
        if self.shuffle_buffer:
            ds = ds.shuffle(self.shuffle_buffer, rng=random.Random(self.seed + rank))
        ds = ds.compose(_Decode(self.resolution, self.center_crop, self.random_flip))
        return torch.utils.data.DataLoader(ds, batch_size=self.batch_size, num_workers=self.num_workers,
                                           collate_fn=SkippingCollate(self.max_bad_fraction,
                                                                      min_samples_seen(self.max_bad_fraction)),
                                           persistent_workers=self.num_workers > 0)
