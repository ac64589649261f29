"""Data for the diffusers teachers: webdataset shards (corrupt samples skipped and counted), data errors caught in the
pre-flight, unreadable datasets stopped with a clear error, the latent cache equal to encoding on the fly."""

from __future__ import annotations

import pytest
import torch

from tdd_lab.testing.tiny import write_image_folder

from ..conftest import compose_cfg
from .conftest import build_module, smoke_overrides


def test_webdataset_shards_train_and_skip_corrupt_samples(assets, tmp_path, cache_dir):
    import io

    import webdataset as wds
    from PIL import Image

    from tdd_lab.train import train

    for s in range(2):
        path = tmp_path / f"shard-{s}.tar"
        with wds.TarWriter(str(path)) as sink:
            for i in range(4):
                buf = io.BytesIO()
                Image.new("RGB", (40, 36), (40 * i, 200, 50 * s)).save(buf, format="PNG")
                sink.write({"__key__": f"{s}_{i}", "png": buf.getvalue(), "txt": f"a green square {i}"})
            sink.write({"__key__": f"{s}_bad", "png": b"broken", "txt": "broken"})
    urls = str(tmp_path / "shard-{0..1}.tar")
    data = ["data=webdataset", f"data.urls='{urls}'", "data.shuffle_buffer=4"]  # default max_bad_fraction
    cfg = compose_cfg(smoke_overrides("sdxl", assets, "teacher.dtype=fp32", "metrics.steps=[2]", data=data),
                      tmp_path / "run", cache_dir)
    metrics = train(cfg)
    assert metrics["train/steps"] == 5.0
    # the logged count per step is the number of corrupt samples in that step's batch: the first 5 x 4 samples of the
    # same seeded stream (shards drawn with replacement, shuffle buffer 4), read here without decoding
    import csv
    import random

    (log,) = (tmp_path / "run" / "csv").rglob("metrics.csv")
    rows = [r for r in csv.DictReader(open(log)) if r.get("data/skipped")]
    logged = {int(r["step"]): float(r["data/skipped"]) for r in rows}
    seed = int(cfg.data.seed)
    stream = wds.WebDataset(urls, resampled=True, nodesplitter=None, empty_check=False, seed=seed)
    keys = [s["__key__"] for _, s in zip(range(20), stream.shuffle(4, rng=random.Random(seed)))]
    expected = [float(sum(k.endswith("_bad") for k in keys[i : i + 4])) for i in range(0, 20, 4)]
    assert sum(expected) >= 1  # the stream does meet corrupt samples
    assert [logged[step] for step in sorted(logged)] == expected, (logged, keys)


def test_data_errors_are_config_errors(assets, tmp_path, cache_dir):
    from tdd_lab.validate import ConfigError, preflight

    cfg = compose_cfg(smoke_overrides("sdxl", assets, "data.batch_size=16"), tmp_path, cache_dir)
    with pytest.raises(ConfigError, match="8 images, fewer than data.batch_size=16"):
        preflight(cfg)
    data = ["data=webdataset", f"data.urls='{tmp_path}/missing-{{0..3}}.tar'"]
    cfg = compose_cfg(smoke_overrides("sdxl", assets, data=data), tmp_path, cache_dir)
    with pytest.raises(ConfigError, match="missing-0.tar"):
        preflight(cfg)


def test_unreadable_dataset_stops_with_a_clear_error(assets, tmp_path, cache_dir):
    from tdd_lab.data.image_folder import DataQualityError
    from tdd_lab.train import train

    bad = tmp_path / "bad"
    write_image_folder(bad, n=0, corrupt=8)
    cfg = compose_cfg(smoke_overrides("sdxl", assets, "teacher.dtype=fp32", f"data.root={bad}"), tmp_path / "run",
                      cache_dir)
    with pytest.raises(DataQualityError, match="unreadable"):
        train(cfg)


def test_latent_cache_equals_encoding_on_the_fly_and_is_reused(assets, tmp_path, cache_dir):
    from tdd_lab.data.image_folder import ImageFolderDataModule, ImageFolderDataset, collate_skipping

    module, _ = build_module("sdxl", assets, cache_dir, tmp_path, "teacher.dtype=fp32")
    teacher = module.teacher
    dm = ImageFolderDataModule(assets["images"], resolution=32, batch_size=4, num_workers=0, cache_latents=True,
                               cache_dir=str(tmp_path / "cache"), teacher=teacher)
    dm.prepare_data()
    dm.setup("fit")
    (path,) = list((tmp_path / "cache").glob("latents-*"))
    stamp = (path / "latents.safetensors").stat().st_mtime_ns
    raw = ImageFolderDataset(assets["images"], 32)
    batch = collate_skipping([raw[i] for i in range(3)])
    x0, cond = teacher.conditioner.prepare_batch(batch)
    cached = torch.utils.data.default_collate([dm.train_set[i] for i in range(3)])
    x0_c, cond_c = teacher.conditioner.prepare_batch(cached)
    assert torch.allclose(x0, x0_c, atol=1e-6)
    assert torch.allclose(cond["encoder_hidden_states"], cond_c["encoder_hidden_states"], atol=1e-6)
    assert torch.equal(cond["added_cond_kwargs"]["time_ids"], cond_c["added_cond_kwargs"]["time_ids"])
    loss, _ = module.distillation_loss(cached)  # trains from the cache: no VAE / text encoder call
    assert torch.isfinite(loss)
    dm2 = ImageFolderDataModule(assets["images"], resolution=32, cache_latents=True, cache_dir=str(tmp_path / "cache"),
                                teacher=teacher)
    dm2.prepare_data()
    dm2.setup("fit")
    assert (path / "latents.safetensors").stat().st_mtime_ns == stamp  # reused, not rebuilt
    with pytest.raises(ValueError, match="center_crop"):
        ImageFolderDataModule(assets["images"], cache_latents=True, center_crop=False, teacher=teacher)
