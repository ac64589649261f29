"""Caches keyed on content: new weights at the same path are new cache keys (teacher numbers, reference samples,
latents), the fingerprint of a folder or a hub snapshot follows its files, and metric caches follow their weights."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from tdd_lab.utils.cache import cached_dir, config_key, weights_fingerprint


def test_weights_fingerprint_of_a_local_folder_follows_its_files(tmp_path):
    model = tmp_path / "model"
    (model / "unet").mkdir(parents=True)
    (model / "model_index.json").write_text("{}")
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"\0" * 64)
    first = weights_fingerprint(model)
    assert first == weights_fingerprint(str(model)) and len(first) == 16  # stable, str or Path
    (model / ".cache").mkdir()
    (model / ".cache" / "download.lock").write_text("x")  # hidden bookkeeping is not content
    assert weights_fingerprint(model) == first
    st = weights.stat()
    weights.write_bytes(b"\1" * 64)  # same size, new content, written now
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert weights_fingerprint(model) != first
    second = weights_fingerprint(model)
    (model / "unet" / "config.json").write_text("{}")  # a new config file
    assert weights_fingerprint(model) not in (first, second)
    assert weights_fingerprint(weights) is not None and weights_fingerprint(weights) != weights_fingerprint(model)
    assert weights_fingerprint(tmp_path / "missing") is None and weights_fingerprint(None) is None


def test_weights_fingerprint_of_a_hub_id_follows_the_cached_snapshot(tmp_path, monkeypatch):
    """A hub id resolves to its snapshot in the local Hugging Face cache (never the network): a new commit of the same
    id (refs/main moved, new blobs) is a new fingerprint; a pinned revision keeps its own."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = tmp_path / "hub" / "models--org--tiny"

    def commit(sha: str, blob: str, content: bytes) -> None:
        (repo / "blobs").mkdir(parents=True, exist_ok=True)
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "blobs" / blob).write_bytes(content)
        snapshot = repo / "snapshots" / sha
        snapshot.mkdir(parents=True)
        (snapshot / "model_index.json").symlink_to(Path("../../blobs") / blob)
        (repo / "refs" / "main").write_text(sha)

    commit("a" * 40, "1" * 40, b'{"v": 1}')
    old = weights_fingerprint("org/tiny")
    commit("b" * 40, "2" * 40, b'{"v": 2}')
    assert old is not None and weights_fingerprint("org/tiny") not in (None, old)
    assert weights_fingerprint("org/tiny", revision="a" * 40) == old
    assert weights_fingerprint("org/not-cached") is None


@pytest.fixture
def tiny_sdxl_teacher(tmp_path):
    """``load()``: the SDXL teacher of the tiny pipeline saved at one fixed path; ``replace(seed)`` writes other
    random weights to that same path."""
    from tdd_lab.teachers.latent import StableDiffusionXLTeacher
    from tdd_lab.testing.tiny import save_tiny_sdxl

    path = tmp_path / "sdxl"
    save_tiny_sdxl(path, seed=0)

    class Handle:
        @staticmethod
        def load():
            return StableDiffusionXLTeacher(str(path), resolution=32, eval_prompts=["a red square", "a blue square"])

        @staticmethod
        def replace(seed: int):
            save_tiny_sdxl(path, seed=seed)

    return Handle


def teacher_numbers(teacher, cache: Path):
    """``teacher/ode_rmse@2`` (cached under ``cache``) and the teacher's cached reference samples."""
    from tdd_lab.evaluation import Evaluator
    from tdd_lab.guidance import DecoupledGuidance
    from tdd_lab.metrics.latent import LatentODEMetrics
    from tdd_lab.samplers import TDDSampler

    evaluator = Evaluator(LatentODEMetrics(ode_steps=4, batch_size=2), steps=[2], num_samples=2, batch_size=2,
                          teacher_steps=4, cache_dir=str(cache), progress=False)
    guidance, sampler = DecoupledGuidance(w=3.5), TDDSampler(eta=0.2, num_ddim_timesteps=50)
    metrics, _ = evaluator.evaluate_teacher(teacher, guidance, sampler)
    return metrics, evaluator.teacher_reference(teacher, guidance, 50)


def test_new_weights_at_the_same_path_change_the_teacher_numbers(tiny_sdxl_teacher, tmp_path):
    """The teacher-number and reference-sample caches of a diffusers teacher are keyed on its weights files, not on the
    path string: the same weights hit the cache, new weights at the same path are measured afresh."""
    cache = tmp_path / "cache"
    first = tiny_sdxl_teacher.load()
    numbers, reference = teacher_numbers(first, cache)
    files = sorted(p.name for p in cache.rglob("*") if p.is_file())
    again, reference_again = teacher_numbers(tiny_sdxl_teacher.load(), cache)  # reloaded, unchanged: cache hit
    assert again == numbers and torch.equal(reference_again, reference)
    assert sorted(p.name for p in cache.rglob("*") if p.is_file()) == files

    tiny_sdxl_teacher.replace(seed=1)
    second = tiny_sdxl_teacher.load()
    new_numbers, new_reference = teacher_numbers(second, cache)
    fresh, fresh_reference = teacher_numbers(second, tmp_path / "empty_cache")  # what the new weights measure
    assert new_numbers["teacher/ode_rmse@2"] != numbers["teacher/ode_rmse@2"]
    assert new_numbers == fresh and torch.equal(new_reference, fresh_reference)
    assert not torch.allclose(new_reference, reference)
    assert second.describe()["pretrained"] == first.describe()["pretrained"]  # the same path string


def test_new_weights_at_the_same_path_rebuild_the_latent_cache(tiny_sdxl_teacher, tmp_path):
    """``data.cache_latents``: the latents of one image folder under a teacher, then under new weights at the same
    path, are two cache entries (the key holds the teacher's weights fingerprint)."""
    from tdd_lab.data.image_folder import ImageFolderDataModule
    from tdd_lab.testing.tiny import write_image_folder

    images, cache = write_image_folder(tmp_path / "images", n=4), tmp_path / "cache"

    def build(teacher):
        dm = ImageFolderDataModule(str(images), resolution=32, batch_size=2, num_workers=0, cache_latents=True,
                                   cache_dir=str(cache), teacher=teacher)
        dm.prepare_data()
        return sorted(p.name for p in cache.glob("latents-*"))

    first = build(tiny_sdxl_teacher.load())
    assert len(first) == 1 and build(tiny_sdxl_teacher.load()) == first  # same weights: reused
    tiny_sdxl_teacher.replace(seed=1)
    second = build(tiny_sdxl_teacher.load())
    assert len(second) == 2 and set(first) < set(second)


def test_metric_caches_follow_their_weights_files(tmp_path):
    """Teacher numbers are cached on ``metrics.describe()``: a metric's weights file or reference folder replaced at
    the same path, or a custom feature module with other weights, is a new key; the digits classifier's code version
    is in it."""
    from tdd_lab.metrics import DigitsMetrics
    from tdd_lab.metrics.classifier import CLASSIFIER_VERSION
    from tdd_lab.metrics.fid import CleanFID

    from .test_metrics_fid import RandomConv

    refs = tmp_path / "refs"
    refs.mkdir()
    (refs / "0.png").write_bytes(b"png")
    metric = CleanFID(str(refs), features=RandomConv(), image_size=16)
    key = config_key(metric.describe())
    assert config_key(CleanFID(str(refs), features=RandomConv(), image_size=16).describe()) == key
    (refs / "1.png").write_bytes(b"png")  # the reference set changed at the same path
    assert config_key(metric.describe()) != key
    key = config_key(metric.describe())
    other = RandomConv()
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    assert config_key(CleanFID(str(refs), features=other, image_size=16).describe()) != key
    assert DigitsMetrics(str(tmp_path)).describe()["classifier_version"] == CLASSIFIER_VERSION


def test_diffusers_teacher_describe_holds_its_weights_fingerprint(tiny_sdxl_teacher):
    """``describe()`` (every cache key of a diffusers teacher) carries the fingerprint of the files it loaded."""
    teacher = tiny_sdxl_teacher.load()
    described = teacher.describe()
    assert described["weights"] == weights_fingerprint(described["pretrained"])
    assert described["vae_weights"] is None  # no separate VAE folder
    json.dumps(described)  # JSON-serialisable, as config_key needs


def test_building_a_cache_entry_leaves_the_callers_random_state_alone(tmp_path):
    """Builders seed themselves (torch.manual_seed(...) inside): a run must draw the same numbers after a cold cache
    (the artefact built inside the run) as after a warm one, in torch, numpy and Python's random."""

    def build(path):
        torch.manual_seed(123)
        np.random.seed(123)
        random.seed(123)
        (path / "w.txt").write_text(str(torch.rand(3).tolist()))

    def draws():
        return torch.rand(4).tolist(), np.random.rand(2).tolist(), random.random()

    def seeded_run(cache):
        torch.manual_seed(0)
        np.random.seed(0)
        random.seed(0)
        first = draws()
        cached_dir(cache, "thing", {"a": 1}, build)
        return first, draws()

    cold = seeded_run(tmp_path / "cache")            # built here
    assert (next((tmp_path / "cache").glob("thing-*")) / "DONE").exists()
    warm = seeded_run(tmp_path / "cache")            # found
    assert cold == warm and cold[0] != cold[1]
