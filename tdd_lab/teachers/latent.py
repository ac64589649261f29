"""Real text-to-image teachers through diffusers: SD1.5, SDXL (VP, UNet), FLUX and SD3 (flow matching).

Each teacher loads the stock pipeline from a hub id or a local folder (``from_pretrained``; the
same call for a real checkpoint and for the tiny random-weight pipelines of the tests), keeps its
networks frozen in the configured dtype and assembles the three parts of the teacher contract: a
pipeline conditioner (:mod:`tdd_lab.conditioner`: VAE latents, the pipeline's own prompt encoders),
a denoiser over the UNet/transformer, and the student's initial network (a LoRA on the teacher's own
network by default, so one UNet/transformer is in memory). Exports: :mod:`tdd_lab.export.pipeline`.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from pathlib import Path
from typing import Any

import torch

from tdd_lab.conditioner import (
    FluxConditioner,
    PipelineConditioner,
    SD3Conditioner,
    SDConditioner,
    SDXLConditioner,
    T5PipelineConditioner,
)
from tdd_lab.denoiser import Denoiser
from tdd_lab.nets.unet import UNetDenoiser
from tdd_lab.schedules import FlowMatchSchedule, VPSchedule, calculate_shift
from tdd_lab.teachers.base import Teacher
from tdd_lab.utils.hub import DTYPES, check_pretrained, hub_offline, resolve_dtype  # noqa: F401  (re-exported)
from tdd_lab.utils.tokenizer import check_tokenizer
from tdd_lab.utils.validation import check_choice, check_int

log = logging.getLogger(__name__)

DEFAULT_EVAL_PROMPTS = (
    "a photo of a red apple on a wooden table",
    "a watercolor painting of a lighthouse at dawn",
    "a portrait of an old fisherman, studio lighting",
    "a futuristic city skyline at night, neon lights",
    "a bowl of ramen, top view",
    "a corgi running on a beach",
    "an astronaut riding a horse on mars",
    "a cozy cabin in a snowy forest",
)


def read_prompt_file(path: str | Path) -> list[str]:
    """One prompt per line (blank lines and ``#`` comments skipped)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {str(path)!r} not found")
    prompts = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not prompts:
        raise ValueError(f"prompt file {str(path)!r} holds no prompt")
    return prompts


def check_pipeline_tokenizers(pipe, source: str) -> None:
    """Each tokenizer of ``pipe`` against its text encoder's embedding table (the silent-fallback guard)."""
    for tok_name, enc_name in (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"),
                               ("tokenizer_3", "text_encoder_3")):
        tok, enc = getattr(pipe, tok_name, None), getattr(pipe, enc_name, None)
        if tok is not None:
            vocab = getattr(getattr(enc, "config", None), "vocab_size", None)
            check_tokenizer(tok, f"{source}/{tok_name}", vocab)


def check_pipeline_folder(folder: str | Path, key: str = "teacher.pretrained", given: tuple[str, ...] = ()) -> None:
    """A local pipeline folder holds every component its ``model_index.json`` lists, each model with a weights file.

    Raises ``FileNotFoundError`` naming the missing parts before anything loads (diffusers' own error for a missing
    text encoder names a file in the pipeline's root folder). Components in ``given`` (passed to ``from_pretrained``
    explicitly, e.g. a replacement VAE) are not read from the folder; hub ids and single-model folders pass unchecked.
    """
    import json

    folder = Path(folder).expanduser()
    index = folder / "model_index.json"
    if not index.is_file():
        return
    missing = []
    for name, spec in json.loads(index.read_text()).items():
        if name.startswith("_") or not isinstance(spec, list) or spec[0] is None or name in given:
            continue  # metadata, an optional component saved as None, or one passed explicitly
        sub = folder / name
        if not sub.is_dir() or not any(sub.iterdir()):
            missing.append(f"{name}/")
        elif (sub / "config.json").is_file() and not any(sub.glob("*.safetensors")) and not any(sub.glob("*.bin")):
            missing.append(f"{name}/ weights (no .safetensors or .bin file)")
    if missing:
        raise FileNotFoundError(f"{key}: folder {str(folder)!r} is incomplete: missing {', '.join(missing)} "
                                f"(listed in its model_index.json)")


def load_pipeline(pipeline_class: str, pretrained: str, dtype: torch.dtype, revision: str | None = None,
                  variant: str | None = None, vae_pretrained: str | None = None, local_files_only: bool | None = None,
                  **components):
    """A stock diffusers pipeline from a hub id or a local folder; missing files raise ``FileNotFoundError``."""
    import diffusers

    check_pretrained(str(pretrained))
    check_pipeline_folder(pretrained, given=tuple(components) + (("vae",) if vae_pretrained else ()))
    local_files_only = hub_offline() if local_files_only is None else local_files_only
    cls = getattr(diffusers, pipeline_class)
    kwargs: dict[str, Any] = dict(revision=revision, variant=variant, torch_dtype=dtype, local_files_only=local_files_only,
                                  **components)
    if vae_pretrained:
        check_pretrained(str(vae_pretrained), "teacher.vae_pretrained")
        kwargs["vae"] = diffusers.AutoencoderKL.from_pretrained(vae_pretrained, local_files_only=local_files_only)
    if pipeline_class == "StableDiffusionPipeline":
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    try:
        pipe = cls.from_pretrained(pretrained, **{k: v for k, v in kwargs.items() if v is not None})
    except OSError as e:
        raise FileNotFoundError(f"teacher.pretrained={pretrained!r}: could not load a {pipeline_class} ({e})") from None
    check_pipeline_tokenizers(pipe, str(pretrained))
    return pipe


def _qualname(obj) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


class DiffusersTeacher(Teacher):
    """Common loading, evaluation prompts and decoding of the diffusers teachers."""

    pipeline_class: str            # diffusers pipeline class name
    model_attr: str = "unet"       # the denoiser component of the pipeline
    latent_multiple: int = 1       # latent side must be a multiple of this (FLUX packs 2x2 patches)
    export_formats = ("diffusers", "kohya", "fused")

    def __init__(
        self,
        pretrained: str,                          # hub id or local folder of the diffusers pipeline
        revision: str | None = None,
        variant: str | None = None,               # e.g. "fp16" weight files
        dtype: str = "fp32",                      # frozen teacher weights: fp32 | fp16 | bf16
        vae_pretrained: str | None = None,        # replacement VAE folder (e.g. SDXL's fp16-fix VAE)
        vae_dtype: str = "fp32",                  # the VAE runs in fp32 unless told (SD VAEs overflow in fp16)
        resolution: int = 1024,                   # training/sampling resolution in pixels
        eval_prompts: list[str] | None = None,    # prompts of the evaluation samples (label i -> prompt i)
        eval_prompt_file: str | None = None,      # or a file, one prompt per line
        local_files_only: bool | None = None,     # None: True when HF_HUB_OFFLINE is set
    ):
        super().__init__()
        check_int("teacher.resolution", resolution, 8)
        self.pretrained, self.revision, self.variant = str(pretrained), revision, variant
        self.dtype, self.vae_dtype = resolve_dtype(dtype), resolve_dtype(vae_dtype)
        self.vae_pretrained, self.resolution = vae_pretrained, resolution
        self.pipe = load_pipeline(self.pipeline_class, self.pretrained, self.dtype, revision, variant, vae_pretrained,
                                  local_files_only)
        self.model = getattr(self.pipe, self.model_attr).to(dtype=self.dtype).eval().requires_grad_(False)
        vae_cfg = self.pipe.vae.config
        self.vae_scale_factor = 2 ** (len(vae_cfg.block_out_channels) - 1)
        if resolution % (self.vae_scale_factor * self.latent_multiple) != 0:
            raise ValueError(f"teacher.resolution={resolution} must be a multiple of "
                             f"{self.vae_scale_factor * self.latent_multiple} for this VAE")
        side = resolution // self.vae_scale_factor
        self.sample_shape = (int(vae_cfg.latent_channels), side, side)
        prompts = read_prompt_file(eval_prompt_file) if eval_prompt_file else list(eval_prompts or DEFAULT_EVAL_PROMPTS)
        self.eval_prompts = prompts
        self.num_classes = len(prompts)

    conditioner: PipelineConditioner

    def decode(self, samples):
        return self.conditioner.decode_latents(samples)

    def save_samples(self, samples, labels, path):
        from torchvision.utils import save_image

        images = torch.cat([self.decode(samples[i : i + 8]) for i in range(0, min(len(samples), 16), 8)])
        save_image((images.cpu() + 1) / 2, str(path), nrow=4, padding=2)

    def describe(self) -> dict:
        """Everything that determines this teacher (cache keys of teacher metrics, reference samples, latents): its
        settings and a fingerprint of the weights files behind ``pretrained`` and ``vae_pretrained``
        (:func:`~tdd_lab.utils.cache.weights_fingerprint`, taken once, at the first call after loading), so new
        weights at the same path are new keys."""
        from tdd_lab.utils.cache import weights_fingerprint

        if getattr(self, "_weights_fingerprints", None) is None:
            self._weights_fingerprints = {"weights": weights_fingerprint(self.pretrained, self.revision),
                                          "vae_weights": weights_fingerprint(self.vae_pretrained)}
        return {"kind": type(self).__name__, "pretrained": self.pretrained, "revision": self.revision,
                "variant": self.variant, "dtype": str(self.dtype), "resolution": self.resolution,
                "vae_pretrained": self.vae_pretrained, "vae_dtype": str(self.vae_dtype),
                "prediction_type": self.prediction_type, "eval_prompts": self.eval_prompts,
                "schedule": self.schedule.diffusers_config(), **self._weights_fingerprints}

    def pipeline_info(self) -> dict:
        """What a stock pipeline needs to load a student of this teacher (``student/teacher.json``)."""
        return {"pretrained": self.pretrained, "revision": self.revision, "variant": self.variant,
                "pipeline_class": self.pipeline_class, "model_attr": self.model_attr, "resolution": self.resolution,
                "dtype": str(self.dtype).replace("torch.", ""), "label_prompts": list(self.eval_prompts),
                "network": {"_target_": _qualname(self.denoiser.net), **self.network_kwargs()},
                "conditioner": {"_target_": _qualname(self.conditioner), **self.conditioner_kwargs()}}

    def network_kwargs(self) -> dict:
        """Keyword settings of the raw-network adapter (besides the pipeline's model), for ``teacher.json``."""
        return {}

    def conditioner_kwargs(self) -> dict:
        """Keyword settings of the conditioner (besides pipeline, prompts, resolution), for ``teacher.json``."""
        return {}

    def exporter(self):
        from tdd_lab.export.pipeline import PipelineExporter

        return PipelineExporter(self.pipeline_info())

    def _vp_denoiser(self, prediction_type: str | None) -> Denoiser:
        """VP schedule and prediction type from the checkpoint's scheduler config (or the override)."""
        sched_cfg = self.pipe.scheduler.config
        prediction_type = prediction_type or sched_cfg.get("prediction_type", "epsilon")
        check_choice("teacher.prediction_type", prediction_type, ("epsilon", "v_prediction"))
        return Denoiser(UNetDenoiser(self.model), VPSchedule.from_diffusers_config(sched_cfg), prediction_type,
                        compute_dtype=torch.float32)


class StableDiffusionTeacher(DiffusersTeacher):
    """SD1.5 (epsilon) and its v-prediction variants (SD2.x-v style): one CLIP text encoder."""

    pipeline_class = "StableDiffusionPipeline"

    def __init__(self, pretrained: str, prediction_type: str | None = None, resolution: int = 512, **kwargs):
        super().__init__(pretrained, resolution=resolution, **kwargs)
        self.denoiser = self._vp_denoiser(prediction_type)
        self.conditioner = SDConditioner(self.pipe, self.eval_prompts, resolution, self.vae_dtype)


class StableDiffusionXLTeacher(DiffusersTeacher):
    """SDXL: two text encoders, pooled embeddings, micro-conditioning (see :class:`SDXLConditioner`)."""

    pipeline_class = "StableDiffusionXLPipeline"

    def __init__(self, pretrained: str, prediction_type: str | None = None, resolution: int = 1024, **kwargs):
        super().__init__(pretrained, resolution=resolution, **kwargs)
        self.denoiser = self._vp_denoiser(prediction_type)
        self.conditioner = SDXLConditioner(self.pipe, self.eval_prompts, resolution, self.vae_dtype)


class FlowTeacher(DiffusersTeacher):
    """Rectified-flow transformer teachers (FLUX, SD3): velocity outputs, Euler teacher solver, T5 + CLIP prompts.

    Latents are normalised with both ``scaling_factor`` and ``shift_factor`` (:class:`PipelineConditioner`); the
    sigma schedule is the checkpoint scheduler's (:meth:`flow_schedule`: its static ``shift``, or FLUX's dynamic
    ``mu`` at ``resolution``), shifted exactly as the pipeline shifts it at sampling, and the same
    :class:`FlowMatchSchedule` is exported for sampling (the public FLUX script trained on unshifted sigmas and
    ignored ``shift_factor``: TDD_SPEC 1). Subclasses give the pipeline, the conditioner class and the network
    adapter (:meth:`make_network`).
    """

    model_attr = "transformer"
    export_formats = ("diffusers", "fused")  # the kohya/A1111 layout is a UNet format
    conditioner_class: type[T5PipelineConditioner]

    def __init__(self, pretrained: str, max_sequence_length: int = 512, resolution: int = 1024, **kwargs):
        check_int("teacher.max_sequence_length", max_sequence_length, 1)
        super().__init__(pretrained, resolution=resolution, **kwargs)
        self.max_sequence_length = int(max_sequence_length)
        schedule = self.flow_schedule(self.pipe.scheduler.config, self.sample_shape, self.patch_size)
        self.denoiser = Denoiser(self.make_network(schedule), schedule, "flow", compute_dtype=torch.float32)
        self.conditioner = self.conditioner_class(self.pipe, self.eval_prompts, resolution, self.vae_dtype,
                                                  self.max_sequence_length)

    @property
    def patch_size(self) -> int:
        """Latent pixels per image token side (FLUX packs 2x2 latents; SD3's patch embedding has ``patch_size``)."""
        return int(self.model.config.get("patch_size", 2))

    @abstractmethod
    def make_network(self, schedule: FlowMatchSchedule):
        """The raw-network adapter over ``self.model``: ``net(x, sigma * T, cond) -> velocity``."""

    @staticmethod
    def flow_schedule(config, sample_shape, patch_size: int = 2) -> FlowMatchSchedule:
        """Shifted sigmas for latents of ``sample_shape`` (C, H, W): dynamic ``mu`` from the image token count
        (FLUX; SD3 pipelines with ``use_dynamic_shifting``) or the static ``shift`` (SD3 / SD3.5: 3.0)."""
        get = config.get
        t = int(get("num_train_timesteps", 1000))
        if get("use_dynamic_shifting", False):
            rule = {k: get(k, d) for k, d in (("base_image_seq_len", 256), ("max_image_seq_len", 4096),
                                               ("base_shift", 0.5), ("max_shift", 1.15))}
            seq_len = (sample_shape[1] // patch_size) * (sample_shape[2] // patch_size)
            mu = calculate_shift(seq_len, rule["base_image_seq_len"], rule["max_image_seq_len"], rule["base_shift"],
                                 rule["max_shift"])
            return FlowMatchSchedule(t, mu=mu, dynamic_shift=rule)
        return FlowMatchSchedule(t, shift=float(get("shift", 1.0)))

    def describe(self) -> dict:
        return {**super().describe(), "mu": self.schedule.mu, "shift": self.schedule.shift,
                "max_sequence_length": self.max_sequence_length}

    def reference_sampler(self, num_ddim_timesteps: int):
        """Deterministic Euler (the flow TDD sampler with eta = 0) as the many-step reference."""
        from tdd_lab.samplers import FlowTDDSampler

        return FlowTDDSampler(eta=0.0, num_ddim_timesteps=num_ddim_timesteps)

    def conditioner_kwargs(self) -> dict:
        return {"max_sequence_length": self.max_sequence_length}

    def pipeline_info(self) -> dict:
        return {**super().pipeline_info(), "max_sequence_length": self.max_sequence_length}  # T5 padding of training


class FluxTeacher(FlowTeacher):
    """FLUX.1 (rectified flow, Euler teacher solver) with its embedded guidance value.

    The sigma schedule is shifted exactly as ``FluxPipeline`` shifts it at sampling (``mu`` from the latent
    token count at ``resolution``). A checkpoint without a guidance embedding (``guidance_embeds`` false) is a
    plain CFG flow model: ``guidance_scale`` is then unused and CFG comes from the guidance option.
    """

    pipeline_class = "FluxPipeline"
    latent_multiple = 2
    conditioner_class = FluxConditioner

    def __init__(self, pretrained: str, guidance_scale: float = 3.5, max_sequence_length: int = 512,
                 resolution: int = 1024, **kwargs):
        self.guidance_scale = float(guidance_scale)
        super().__init__(pretrained, max_sequence_length=max_sequence_length, resolution=resolution, **kwargs)

    @property
    def patch_size(self) -> int:
        return 2  # FluxPipeline packs 2x2 latents per token (the transformer's own patch_size is 1)

    def make_network(self, schedule):
        from tdd_lab.nets.flux import FluxDenoiser

        embedded = self.guidance_scale if self.model.config.get("guidance_embeds", False) else None
        return FluxDenoiser(self.model, embedded, schedule.num_train_timesteps)

    def describe(self) -> dict:
        return {**super().describe(), "guidance_scale": self.guidance_scale}

    def network_kwargs(self) -> dict:
        return {"embedded_guidance": self.denoiser.net.embedded_guidance,
                "num_train_timesteps": self.schedule.num_train_timesteps}

    def pipeline_info(self) -> dict:
        return {**super().pipeline_info(), "embedded_guidance": self.guidance_scale}  # FluxPipeline's guidance_scale


class SD3Teacher(FlowTeacher):
    """Stable Diffusion 3 / 3.5 (MMDiT) through ``StableDiffusion3Pipeline``: a plain CFG rectified-flow model.

    Three text encoders (:class:`SD3Conditioner`: CLIP-L + CLIP-G hidden states padded to T5's width, then T5;
    pooled CLIP-L + CLIP-G projections), the checkpoint's static shift (3.0 for SD3 / SD3.5), latents with
    ``scaling_factor`` and ``shift_factor``, CFG on the velocity from the guidance option (``guidance_scale`` of the
    pipeline = 1 + w; skip-layer guidance off, the pipeline's default). Resolution must be a multiple of the VAE
    factor times the transformer's ``patch_size`` (16 for SD3).
    """

    pipeline_class = "StableDiffusion3Pipeline"
    conditioner_class = SD3Conditioner

    def __init__(self, pretrained: str, max_sequence_length: int = 256, resolution: int = 1024, **kwargs):
        super().__init__(pretrained, max_sequence_length=max_sequence_length, resolution=resolution, **kwargs)

    @property
    def latent_multiple(self) -> int:  # latent sides are whole patches (StableDiffusion3Pipeline.check_inputs)
        return self.patch_size

    def make_network(self, schedule):
        from tdd_lab.nets.sd3 import SD3Denoiser

        return SD3Denoiser(self.model)
