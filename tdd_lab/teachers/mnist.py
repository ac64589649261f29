"""Coloured-MNIST teachers: SDXL- and FLUX-architecture diffusers pipelines that tdd_lab trains itself.

``teacher=mnist_sdxl`` / ``teacher=mnist_flux`` build the pipeline once
(:mod:`tdd_lab.pretrain_pipelines`), cache it under ``$TDD_LAB_CACHE/teacher-mnist_<kind>-<key>``
(the key is the pretraining config and the code version) and then load it exactly as a real
checkpoint is loaded: these classes only add the building step to :class:`StableDiffusionXLTeacher`
and :class:`FluxTeacher`, so distillation runs the real SDXL / FLUX code path. The cached folder is a
stock pipeline (``StableDiffusionXLPipeline.from_pretrained(folder)`` works without tdd_lab).

The evaluation prompts are the 50 captions of the template (label ``c * 10 + d``: colour c, digit d).
A manifest of file hashes is written with the folder; a folder whose files no longer match it (a
corrupted or half-copied cache) is reported by name and rebuilt, never half-read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

from tdd_lab.data.mnist_color import DATA_VERSION, label_prompts, parse_prompt
from tdd_lab.teachers.latent import FluxTeacher, StableDiffusionXLTeacher
from tdd_lab.utils.cache import cached_dir, default_cache_dir
from tdd_lab.utils.validation import check_int, check_range

log = logging.getLogger(__name__)

PRETRAIN_VERSION = 1  # bump when the pretraining recipe's code changes what it builds
MANIFEST = "manifest.json"


def file_manifest(folder: Path) -> dict[str, str]:
    """{relative path: sha1} of every file under ``folder`` (except the manifest and the cache's own markers)."""
    skip = {MANIFEST, "DONE", "config.json"}
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and str(p.relative_to(folder)) not in skip}


def manifest_problem(folder: Path) -> str | None:
    """None when ``folder`` matches its manifest, else what is wrong (missing, changed or extra file)."""
    file = folder / MANIFEST
    if not file.is_file():
        return f"{file} is missing"
    try:
        want = json.loads(file.read_text())
    except ValueError:
        return f"{file} is not valid JSON"
    have = file_manifest(folder)
    for name, digest in want.items():
        if name not in have:
            return f"{folder / name} is missing"
        if have[name] != digest:
            return f"{folder / name} does not match its recorded hash (corrupted or replaced)"
    return None


def build_pipeline_folder(cache_dir: str | Path | None, kind: str, config: dict) -> Path:
    """The cached pipeline folder of ``config`` (built on first use; rebuilt when it fails its manifest)."""
    from tdd_lab.pretrain_pipelines import pretrain_mnist_pipeline

    def build(out: Path) -> None:
        pretrain_mnist_pipeline(out, kind, config)
        (out / MANIFEST).write_text(json.dumps(file_manifest(out), indent=1, sort_keys=True))

    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    folder = cached_dir(cache, f"teacher-mnist_{kind}", config, build)
    problem = manifest_problem(folder)
    if problem is not None:
        log.warning("cached mnist_%s teacher %s is damaged (%s): rebuilding it", kind, folder, problem)
        shutil.rmtree(folder)
        folder = cached_dir(cache, f"teacher-mnist_{kind}", config, build)
    return folder


def _check_prompts(prompts: list[str]) -> list[str]:
    for p in prompts:
        parse_prompt(p)  # raises naming the prompt and the unknown colour/word
    return prompts


class _MnistPipelineTeacher:
    """Shared settings of the two coloured-MNIST teachers (mixed into the diffusers teacher classes)."""

    kind: str

    @staticmethod
    def pretrain_config(kind, seed, data_seed, threads, vae_channels, latent_channels, text_dim, max_length,
                        denoiser_channels, layers_per_block, vae_steps, vae_batch, vae_lr, kl_weight, steps, batch, lr,
                        ema_decay, cond_dropout) -> dict:
        check_int("teacher.steps", steps, 0)
        check_int("teacher.vae_steps", vae_steps, 0)
        check_int("teacher.threads", threads, 1)
        check_range("teacher.cond_dropout", cond_dropout, 0.0, 1.0)
        return dict(
            kind=kind, seed=int(seed), data_seed=int(data_seed), threads=int(threads), vae_channels=list(vae_channels),
            latent_channels=int(latent_channels), text_dim=int(text_dim), max_length=int(max_length),
            denoiser_channels=list(denoiser_channels), layers_per_block=int(layers_per_block),
            vae=dict(steps=int(vae_steps), batch=int(vae_batch), lr=float(vae_lr), kl_weight=float(kl_weight)),
            denoiser=dict(steps=int(steps), batch=int(batch), lr=float(lr), ema_decay=float(ema_decay),
                          cond_dropout=float(cond_dropout)),
            data=DATA_VERSION, version=PRETRAIN_VERSION)


class MnistSDXLTeacher(_MnistPipelineTeacher, StableDiffusionXLTeacher):
    """The SDXL-architecture coloured-MNIST teacher (built and cached on first use), loaded as SDXL is."""

    kind = "sdxl"

    def __init__(
        self,
        cache_dir: str | None = None,      # where the trained pipeline is cached (default $TDD_LAB_CACHE)
        seed: int = 0,                     # pretraining seed
        data_seed: int = 0,                # split and ink colours of the dataset
        threads: int = 1,                  # torch threads of pretraining (part of the key: it changes the weights)
        vae_channels: tuple[int, ...] = (16, 32, 32),   # 32 px -> 8x8 latents
        text_dim: int = 64,                # width of each CLIP text encoder (cross-attention: 2 x text_dim)
        max_length: int = 16,              # tokenizer length (the captions take 8 tokens)
        unet_channels: tuple[int, int] = (32, 64),
        layers_per_block: int = 1,
        vae_steps: int = 600,
        vae_batch: int = 32,
        vae_lr: float = 1e-3,
        kl_weight: float = 1e-6,           # SD's KL weight
        steps: int = 2000,                 # UNet optimizer steps
        batch: int = 128,
        lr: float = 2e-3,
        ema_decay: float = 0.999,
        cond_dropout: float = 0.1,         # prompt dropout (to the all-zero null condition) so CFG works
        resolution: int = 32,
        eval_prompts: list[str] | None = None,   # null: the 50 captions of the template
        **kwargs,                          # dtype, vae_dtype, prediction_type, ... as for teacher=sdxl
    ):
        self.pretrain = self.pretrain_config(self.kind, seed, data_seed, threads, vae_channels, 4, text_dim, max_length,
                                             unet_channels, layers_per_block, vae_steps, vae_batch, vae_lr, kl_weight,
                                             steps, batch, lr, ema_decay, cond_dropout)
        prompts = _check_prompts(list(eval_prompts) if eval_prompts else label_prompts())
        folder = build_pipeline_folder(cache_dir, self.kind, self.pretrain)
        super().__init__(pretrained=str(folder), resolution=resolution, eval_prompts=prompts, **kwargs)
        self.path = folder
        self.info = json.loads((folder / "pretrain.json").read_text())


class MnistFluxTeacher(_MnistPipelineTeacher, FluxTeacher):
    """The FLUX-architecture coloured-MNIST teacher: a plain CFG flow model (no guidance embedding)."""

    kind = "flux"

    def __init__(
        self,
        cache_dir: str | None = None,
        seed: int = 0,
        data_seed: int = 0,
        threads: int = 1,
        vae_channels: tuple[int, ...] = (16, 32, 32),
        text_dim: int = 64,                # CLIP width (pooled projections) and T5 width (joint attention)
        max_length: int = 16,              # CLIP and T5 token length
        width: int = 128,                  # transformer inner dim (4 heads)
        layers: int = 2,                   # double-stream and single-stream blocks each
        vae_steps: int = 600,
        vae_batch: int = 32,
        vae_lr: float = 1e-3,
        kl_weight: float = 1e-6,
        steps: int = 2000,                 # transformer optimizer steps
        batch: int = 128,
        lr: float = 1e-3,
        ema_decay: float = 0.999,
        cond_dropout: float = 0.1,         # prompt dropout (to the encoded empty prompt) so CFG works
        resolution: int = 32,
        eval_prompts: list[str] | None = None,
        **kwargs,                          # dtype, vae_dtype, ... as for teacher=flux
    ):
        self.pretrain = self.pretrain_config(self.kind, seed, data_seed, threads, vae_channels, 16, text_dim, max_length,
                                             [width], layers, vae_steps, vae_batch, vae_lr, kl_weight, steps, batch, lr,
                                             ema_decay, cond_dropout)
        prompts = _check_prompts(list(eval_prompts) if eval_prompts else label_prompts())
        folder = build_pipeline_folder(cache_dir, self.kind, self.pretrain)
        kwargs.setdefault("max_sequence_length", max_length)
        super().__init__(pretrained=str(folder), resolution=resolution, eval_prompts=prompts, **kwargs)
        self.path = folder
        self.info = json.loads((folder / "pretrain.json").read_text())
