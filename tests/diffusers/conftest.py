"""Shared setup of the SD1.5 / SDXL / FLUX tests: tiny random-weight pipelines saved to disk, the user's smoke
command on them, one smoke training per family (shared by the export, training and sampling tests), and the
stock-pipeline code a user writes to load an export.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tdd_lab.testing.tiny import save_tiny_flux, save_tiny_sd15, save_tiny_sdxl, write_image_folder

from ..conftest import compose_cfg

FAMILIES = {"sdxl": save_tiny_sdxl, "sd15": save_tiny_sd15, "flux": save_tiny_flux}
MODEL_ATTR = {"sdxl": "unet", "sd15": "unet", "flux": "transformer"}
KOHYA = {"sdxl": True, "sd15": True, "flux": False}  # the kohya layout is a UNet format
PROMPTS = ["a red square", "a blue square"]


@pytest.fixture(scope="package", autouse=True)
def one_thread():
    """One intra-op thread for these tiny networks (and the apps they start): on a shared 2-core machine, two OpenMP
    threads per op wait on each other (a tiny UNet forward took 2.5 s instead of 0.09 s under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_app(args, cwd, cache_dir):
    """``python ARGS`` offline, as :func:`tests.test_train.run_cli` runs it, with one intra-op thread."""
    env = {"TDD_LAB_CACHE": str(cache_dir), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PATH": "/usr/bin:/bin",
           "HOME": str(cwd), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="package")
def assets(tmp_path_factory):
    """One tiny pipeline folder per family and a folder of 8 captioned images, built once."""
    root = tmp_path_factory.mktemp("diffusers_assets")
    paths = {name: build(root / name) for name, build in FAMILIES.items()}
    paths["images"] = write_image_folder(root / "images", n=8)
    return paths


def smoke_overrides(family, assets, *extra, data=None):
    """The user's smoke command on a tiny pipeline, with a small evaluation."""
    data = data or ["data=image_folder", f"data.root={assets['images']}"]
    out = [f"experiment=tdd_{family}", f"teacher.pretrained={assets[family]}", *data, "debug=smoke",
           "teacher.resolution=32", "data.batch_size=4", "data.num_workers=0", "solver.num_ddim_timesteps=50",
           "metrics.num_samples=2", "metrics.batch_size=2", "metrics.metrics.ode_steps=4", "metrics.teacher_steps=4"]
    if family == "flux":
        out.append("teacher.max_sequence_length=16")
    return out + list(extra)


def build_module(family, assets, cache_dir, tmp_path, *extra):
    """(module, datamodule) of the smoke config, built the way ``train`` builds them (pre-flight first)."""
    from tdd_lab.train import build_module as build
    from tdd_lab.validate import preflight

    cfg = compose_cfg(smoke_overrides(family, assets, *extra), tmp_path, cache_dir)
    return build(cfg, preflight(cfg))


def scheduler_config(denoiser) -> dict:
    """What the export hands the sampler's ``make_scheduler``: the schedule's settings and the prediction type."""
    return {**denoiser.schedule.diffusers_config(), "prediction_type": denoiser.prediction_type}


def pipeline_kwargs(family) -> dict:
    return {"safety_checker": None, "requires_safety_checker": False} if family == "sd15" else {}


def stock_pipeline(family, path):
    """``diffusers.<Pipeline>.from_pretrained(path)`` in float32, as a user loads the base model."""
    import diffusers

    cls = {"sdxl": diffusers.StableDiffusionXLPipeline, "sd15": diffusers.StableDiffusionPipeline,
           "flux": diffusers.FluxPipeline}[family]
    return cls.from_pretrained(path, torch_dtype=torch.float32, **pipeline_kwargs(family))


def pipeline_images(assets, family, student_dir, prompts, steps, seed, eta, resolution=32):
    """What a user writes: stock pipeline + load_lora_weights + the exported scheduler, per-image seeds."""
    from tdd_lab.schedulers import FlowTDDScheduler, TDDScheduler

    pipe = stock_pipeline(family, assets[family])
    pipe.load_lora_weights(str(student_dir))
    sched_cls = FlowTDDScheduler if family == "flux" else TDDScheduler
    pipe.scheduler = sched_cls.from_pretrained(student_dir / "scheduler")
    pipe.set_progress_bar_config(disable=True)
    gens = [torch.Generator().manual_seed(seed + i) for i in range(len(prompts))]
    call = dict(prompt=prompts, num_inference_steps=steps, generator=gens, height=resolution, width=resolution,
                output_type="pt")
    if family == "flux":
        pipe.scheduler.register_to_config(eta=eta)
        pipe.scheduler.generator = torch.Generator().manual_seed(seed)  # FluxPipeline keeps its generator to itself
        call.update(guidance_scale=3.5, max_sequence_length=16)
    else:
        call.update(guidance_scale=1.0, eta=eta)
    return pipe(**call).images.float()


class TrainedRun:
    """A finished smoke run: its directory, its config and the metrics ``train`` returned."""

    def __init__(self, family: str, run_dir: Path, cfg, metrics: dict[str, float]):
        self.family, self.dir, self.cfg, self.metrics = family, run_dir, cfg, metrics

    @property
    def student(self) -> Path:
        return self.dir / "student"


@pytest.fixture(scope="package")
def trained(assets, tmp_path_factory, cache_dir):
    """``trained(family)``: one smoke training per family (shared by the files of this package), exported in every layout it allows.

    A high lr so that the adapters move far enough for a wrong alpha or key map to show; rank 4, alpha 8
    (alpha != rank, so a lost alpha changes the function).
    """
    from tdd_lab.train import train

    runs: dict[str, TrainedRun] = {}

    def get(family: str) -> TrainedRun:
        if family not in runs:
            run_dir = tmp_path_factory.mktemp(f"run_{family}")
            cfg = compose_cfg(smoke_overrides(family, assets, "teacher.dtype=fp32", "optimizer.lr=0.01",
                                              "student.rank=4", "student.alpha=8", f"export_kohya={KOHYA[family]}",
                                              "export_fused=true"), run_dir, cache_dir)
            metrics = train(cfg)
            # what `python -m tdd_lab.train` writes (train() in-process does not); the evaluate app reads it
            (run_dir / ".hydra").mkdir(exist_ok=True)
            OmegaConf.save(OmegaConf.create({k: cfg[k] for k in cfg if k != "hydra"}),
                           run_dir / ".hydra" / "config.yaml", resolve=True)
            runs[family] = TrainedRun(family, run_dir, cfg, metrics)
        return runs[family]

    return get


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
