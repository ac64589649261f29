"""Real text-to-image teachers through diffusers: SD1.5, SDXL (VP, UNet) and FLUX (flow matching).

Each teacher loads the stock pipeline from a hub id or a local folder (``from_pretrained``; the
same call for a real checkpoint and for the tiny random-weight pipelines of the tests), keeps
its networks frozen in the configured dtype, encodes images to latents and prompts to the
condition the network takes, and exports students in the format the stock pipeline loads
(``load_lora_weights``). The student is a LoRA on the teacher's own network by default
(:meth:`Teacher.student_network` with ``share_weights``), so one UNet/transformer is in memory.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tdd_lab.guidance.base import Condition, condition_batch_size, map_condition
from tdd_lab.nets.unet import UNetDenoiser
from tdd_lab.prediction import to_x0_eps
from tdd_lab.schedules import FlowMatchSchedule, VPSchedule, calculate_shift
from tdd_lab.teachers.base import Teacher
from tdd_lab.utils.tokenizer import check_tokenizer
from tdd_lab.utils.validation import check_choice, check_int

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
          "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}

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


def resolve_dtype(name: str) -> torch.dtype:
    check_choice("teacher.dtype", name, tuple(DTYPES))
    return DTYPES[name]


def read_prompt_file(path: str | Path) -> list[str]:
    """One prompt per line (blank lines and ``#`` comments skipped)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {str(path)!r} not found")
    prompts = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not prompts:
        raise ValueError(f"prompt file {str(path)!r} holds no prompt")
    return prompts


def lora_state_dict(net: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """The adapter weights of a peft-injected ``net`` in the peft/diffusers layout, without the adapter name.

    ``prefix`` is the wrapper attribute of the diffusers model ("unet." / "transformer.") which is stripped.
    """
    out = {}
    for name, p in net.named_parameters():
        if "lora_" not in name:
            continue
        name = name.replace(".default", "")
        out[name[len(prefix):] if name.startswith(prefix) else name] = p.detach().float().cpu().contiguous()
    if not out:
        raise ValueError("the student has no LoRA weights to export")
    return out


def write_kohya(state_dict: dict[str, torch.Tensor], alpha: float, model_prefix: str, path: Path) -> None:
    """A kohya/A1111-style LoRA file; ``.alpha`` entries hold the trained alpha.

    diffusers' ``convert_state_dict_to_kohya`` writes alpha = rank, which changes the function of any
    LoRA trained with alpha != rank (the public TDD FLUX LoRA is alpha 8 / rank 64), so we overwrite it.
    """
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya
    from safetensors.torch import save_file

    kohya = convert_state_dict_to_kohya({f"{model_prefix}.{k}": v for k, v in state_dict.items()})
    kohya = {k: (torch.tensor(float(alpha)) if k.endswith(".alpha") else v) for k, v in kohya.items()}
    save_file(kohya, str(path), metadata={"ss_network_alpha": str(alpha), "format": "kohya"})


class DiffusersTeacher(Teacher):
    """Common loading, latent encoding, evaluation prompts and export of the diffusers teachers."""

    pipeline_class: str            # diffusers pipeline class name
    model_attr: str = "unet"       # the denoiser component of the pipeline

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
        device: str = "cpu",
    ):
        from tdd_lab.validate import check_pretrained

        check_pretrained(str(pretrained))
        check_int("teacher.resolution", resolution, 8)
        self.pretrained, self.revision, self.variant = str(pretrained), revision, variant
        self.dtype, self.vae_dtype = resolve_dtype(dtype), resolve_dtype(vae_dtype)
        self.vae_pretrained = vae_pretrained
        self.resolution, self.device = resolution, torch.device(device)
        if local_files_only is None:
            local_files_only = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
        self.pipe = self._load_pipeline(local_files_only, vae_pretrained)
        for name in ("tokenizer", "tokenizer_2"):
            tok = getattr(self.pipe, name, None)
            if tok is not None:
                check_tokenizer(tok, f"{self.pretrained}/{name}")
        self.vae = self.pipe.vae.to(self.device, self.vae_dtype).eval().requires_grad_(False)
        for name in ("text_encoder", "text_encoder_2"):
            enc = getattr(self.pipe, name, None)
            if enc is not None:
                enc.to(self.device).eval().requires_grad_(False)
        self.model = getattr(self.pipe, self.model_attr).to(self.device, self.dtype).eval().requires_grad_(False)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        if resolution % (self.vae_scale_factor * self.latent_multiple) != 0:
            raise ValueError(f"teacher.resolution={resolution} must be a multiple of "
                             f"{self.vae_scale_factor * self.latent_multiple} for this VAE")
        side = resolution // self.vae_scale_factor
        self.sample_shape = (int(self.vae.config.latent_channels), side, side)
        if eval_prompt_file:
            self.eval_prompts = read_prompt_file(eval_prompt_file)
        else:
            self.eval_prompts = list(eval_prompts or DEFAULT_EVAL_PROMPTS)
        self.num_classes = len(self.eval_prompts)
        self._prompt_cache: dict[str, Condition] = {}
        self._null: Condition | None = None

    latent_multiple: int = 1  # latent side must be a multiple of this (FLUX packs 2x2 patches)

    def _setup_vp_unet(self, prediction_type: str | None) -> None:
        """VP schedule and prediction type from the checkpoint's scheduler config (or the override); the UNet."""
        sched_cfg = self.pipe.scheduler.config
        self.schedule = VPSchedule.from_diffusers_config(sched_cfg)
        self.prediction_type = prediction_type or sched_cfg.get("prediction_type", "epsilon")
        check_choice("teacher.prediction_type", self.prediction_type, ("epsilon", "v_prediction"))
        self.net = UNetDenoiser(self.model)

    def _load_pipeline(self, local_files_only: bool, vae_pretrained: str | None):
        import diffusers

        cls = getattr(diffusers, self.pipeline_class)
        kwargs: dict[str, Any] = dict(revision=self.revision, variant=self.variant, torch_dtype=self.dtype,
                                      local_files_only=local_files_only)
        if vae_pretrained:
            from tdd_lab.validate import check_pretrained

            check_pretrained(str(vae_pretrained), "teacher.vae_pretrained")
            kwargs["vae"] = diffusers.AutoencoderKL.from_pretrained(vae_pretrained, local_files_only=local_files_only)
        if self.pipeline_class == "StableDiffusionPipeline":
            kwargs.update(safety_checker=None, requires_safety_checker=False)
        try:
            return cls.from_pretrained(self.pretrained, **{k: v for k, v in kwargs.items() if v is not None})
        except OSError as e:
            raise FileNotFoundError(f"teacher.pretrained={self.pretrained!r}: could not load a {self.pipeline_class} "
                                    f"({e})") from None

    # -- latents ----------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> normalised latents (B, C, H/f, W/f) float32 (VAE posterior mode)."""
        cfg = self.vae.config
        z = self.vae.encode(pixels.to(self.vae.device, self.vae_dtype)).latent_dist.mode().float()
        shift = getattr(cfg, "shift_factor", None) or 0.0
        return (z - shift) * cfg.scaling_factor

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents -> images (B, 3, H, W) in [-1, 1]."""
        cfg = self.vae.config
        shift = getattr(cfg, "shift_factor", None) or 0.0
        z = latents.to(self.vae.device, self.vae_dtype) / cfg.scaling_factor + shift
        return self.vae.decode(z).sample.float().clamp(-1, 1)

    # -- conditions ---------------------------------------------------------------------------------
    def _encode(self, prompts: list[str], batch: dict[str, Any] | None = None) -> Condition:
        """Prompts (and per-sample metadata) -> condition (B, ...)."""
        raise NotImplementedError

    def encode_prompts(self, prompts: list[str]) -> Condition:
        """Conditions of prompts (B, ...), memoised per prompt (evaluation prompts repeat)."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._prompt_cache]
        if missing:
            enc = self._encode(missing)
            for i, p in enumerate(missing):
                self._prompt_cache[p] = map_condition(lambda x, i=i: x[i : i + 1], enc)
        return map_condition(lambda *xs: torch.cat(xs), *[self._prompt_cache[p] for p in prompts])

    def conditions(self, labels: torch.Tensor) -> Condition:
        """Evaluation conditions: label i -> ``eval_prompts[i]``, -1 -> the null condition."""
        prompts = [self.eval_prompts[int(i)] if int(i) >= 0 else None for i in labels.tolist()]
        cond = self.encode_prompts([p or "" for p in prompts])
        drop = torch.tensor([p is None for p in prompts], device=labels.device)
        if drop.any():
            from tdd_lab.guidance.base import select_condition

            cond = select_condition(drop, self.null_like(cond), cond)
        return map_condition(lambda x: x.to(labels.device), cond)

    def prepare_batch(self, batch: dict[str, Any]) -> tuple[torch.Tensor, Condition]:
        """``{"pixel_values", "prompt", ...}`` or a cached ``{"latents", "cond"}`` batch -> (latents, condition)."""
        if "latents" in batch:
            return batch["latents"].float(), batch["cond"]
        x0 = self.encode_images(batch["pixel_values"])
        return x0, self._encode(list(batch["prompt"]), batch)

    # -- denoiser -----------------------------------------------------------------------------------
    @torch.no_grad()
    def denoise(self, x_t, t, cond):
        raw = self.teacher_forward(x_t, self.schedule.model_time(t), cond).float()
        a, s = self.schedule.alpha_sigma(t, x_t.ndim, torch.float32)
        x0, eps = to_x0_eps(raw, x_t.float(), a, s, self.prediction_type)
        return x0.to(x_t.dtype), eps.to(x_t.dtype)

    # -- outputs ------------------------------------------------------------------------------------
    def save_samples(self, samples, labels, path):
        from torchvision.utils import save_image

        images = torch.cat([self.decode_latents(samples[i : i + 8]) for i in range(0, min(len(samples), 16), 8)])
        save_image((images.cpu() + 1) / 2, str(path), nrow=4, padding=2)

    def describe(self) -> dict:
        return {"kind": type(self).__name__, "pretrained": self.pretrained, "revision": self.revision,
                "variant": self.variant, "dtype": str(self.dtype), "resolution": self.resolution,
                "vae_pretrained": self.vae_pretrained, "vae_dtype": str(self.vae_dtype),
                "prediction_type": self.prediction_type, "eval_prompts": self.eval_prompts,
                "schedule": getattr(self.schedule, "describe", lambda: self.schedule.diffusers_config())()}

    def to(self, device):
        self.device = torch.device(device)
        for m in (self.vae, self.model, getattr(self.pipe, "text_encoder", None), getattr(self.pipe, "text_encoder_2", None)):
            if m is not None:
                m.to(device)
        self._prompt_cache = {k: map_condition(lambda x: x.to(device), v) for k, v in self._prompt_cache.items()}
        self._null = None
        return self

    def _text_device(self) -> torch.device:
        return next(self.pipe.text_encoder.parameters()).device

    # -- export -------------------------------------------------------------------------------------
    def save_student(self, net: nn.Module, directory: Path) -> None:
        """A full (or fused) student: the fine-tuned model folder (``unet/`` or ``transformer/``)."""
        getattr(net, self.model_attr).save_pretrained(directory / self.model_attr)

    def export(self, student, factory, directory, kohya=False, fused=False):
        """LoRA students: ``pytorch_lora_weights.safetensors`` in the pipeline's format with alpha in its
        metadata (``load_lora_weights`` applies alpha / r), optionally a kohya file and the fused model;
        full students: the model folder. Always ``teacher.json`` (which pipeline to load them into)."""
        import diffusers

        directory.mkdir(parents=True, exist_ok=True)
        lora = getattr(student, "lora_config", None)
        if lora is not None:
            sd = lora_state_dict(student, f"{self.model_attr}.")
            meta = {"r": lora["rank"], "lora_alpha": lora["alpha"], "lora_dropout": lora.get("dropout", 0.0),
                    "target_modules": sorted({k.rsplit(".lora_", 1)[0] for k in sd}), "init_lora_weights": True,
                    "use_dora": False, "bias": "none"}
            getattr(diffusers, self.pipeline_class).save_lora_weights(
                directory, safe_serialization=True,
                **{f"{self.model_attr}_lora_layers": sd, f"{self.model_attr}_lora_adapter_metadata": meta})
            if kohya:
                if self.model_attr != "unet":
                    raise ValueError("export_kohya: the kohya/A1111 LoRA layout is written for UNet models (SD1.5, SDXL); "
                                     "FLUX students are exported in the diffusers format only")
                write_kohya(sd, lora["alpha"], self.model_attr, directory / "lora_kohya.safetensors")
            if fused:
                self.save_student(factory.export_network(student), directory)
        else:
            self.save_student(student, directory)
        info = {**self.export_info(), "lora": None if lora is None else {k: lora[k] for k in ("rank", "alpha")}}
        (directory / "teacher.json").write_text(json.dumps(info, indent=2))

    def export_info(self) -> dict:
        """``teacher.json``: which pipeline, weights and settings the student is loaded into."""
        return {"pretrained": self.pretrained, "revision": self.revision, "variant": self.variant,
                "pipeline_class": self.pipeline_class, "model_attr": self.model_attr, "resolution": self.resolution,
                "dtype": str(self.dtype).replace("torch.", "")}

    def model_card(self, meta: dict) -> str:
        """A short README for ``student/``: how to load it into the stock pipeline, recommended settings."""
        rec = meta.get("recommended", {})
        steps = rec.get("steps") or [4]
        eta = (rec.get("sampler") or {}).get("eta", 0.2)
        g = rec.get("guidance_scale", 1.0)
        flow = self.prediction_type == "flow"
        gen_line = "\npipe.scheduler.generator = torch.Generator().manual_seed(0)  # re-noising seed (eta > 0)" if flow else ""
        sched = "FlowTDDScheduler" if flow else "TDDScheduler"
        call = (f"guidance_scale={getattr(self, 'guidance_scale', 3.5)}"
                + (f", true_cfg_scale={g}, negative_prompt=\"\"" if g != 1 else "") if flow else f"guidance_scale={g}, eta={eta}")
        dtype = {torch.bfloat16: "bfloat16", torch.float16: "float16"}.get(self.dtype, "float16" if not flow else "bfloat16")
        return f"""---
library_name: diffusers
base_model: {self.pretrained}
tags: [tdd, consistency-distillation, lora, tdd_lab]
---
# Target-Driven Distillation student of `{self.pretrained}`

Trained with tdd_lab (TDD, arXiv 2409.01347) on the grid of N = {meta["num_ddim_timesteps"]} teacher steps.

Recommended: {", ".join(map(str, steps))} steps, eta = {eta}, guidance_scale = {g} (decoupled guidance lets
you post-tune it, typically 1.0-2.0), resolution {self.resolution}.

```python
import torch, diffusers
from tdd_lab.schedulers import {sched}

pipe = diffusers.{self.pipeline_class}.from_pretrained("{self.pretrained}", torch_dtype=torch.{dtype})
pipe.load_lora_weights("path/to/student")          # alpha is stored: no fuse scale to guess
pipe.scheduler = {sched}.from_pretrained("path/to/student/scheduler"){gen_line}
image = pipe("a photo of a cat", num_inference_steps={4 if 4 in steps else steps[0]}, {call}).images[0]
```
Or `python -m tdd_lab.sample path/to/run --prompt "a photo of a cat"`.
"""


class StableDiffusionTeacher(DiffusersTeacher):
    """SD1.5 (epsilon) and its v-prediction variants (SD2.x-v style): one CLIP text encoder."""

    pipeline_class = "StableDiffusionPipeline"

    def __init__(self, pretrained: str, prediction_type: str | None = None, resolution: int = 512, **kwargs):
        super().__init__(pretrained, resolution=resolution, **kwargs)
        self._setup_vp_unet(prediction_type)

    def _encode(self, prompts, batch=None):
        emb, _ = self.pipe.encode_prompt(list(prompts), self._text_device(), 1, False)
        return emb.float().to(self.device)

    def null_condition(self, device="cpu"):
        if self._null is None:
            self._null = self._encode([""])
        return self._null.to(device)


class StableDiffusionXLTeacher(DiffusersTeacher):
    """SDXL: two text encoders, pooled embeddings, micro-conditioning ``time_ids``.

    The null condition follows the checkpoint's ``force_zeros_for_empty_prompt`` (True for SDXL
    base): all-zero embeddings and pooled embeddings, used for the teacher's unconditional branch
    *and* for dropped captions alike (the public script mixed zeros and encoded "": TDD_SPEC 4).
    Unconditional samples keep their own ``time_ids``, as in the stock pipeline.
    """

    pipeline_class = "StableDiffusionXLPipeline"

    def __init__(self, pretrained: str, prediction_type: str | None = None, resolution: int = 1024, **kwargs):
        super().__init__(pretrained, resolution=resolution, **kwargs)
        self._setup_vp_unet(prediction_type)
        self.force_zeros = bool(self.pipe.config.get("force_zeros_for_empty_prompt", True))

    def time_ids(self, batch: dict[str, Any] | None, n: int) -> torch.Tensor:
        """(B, 6): original size (h, w), crop top-left (top, left), target size (h, w)."""
        r = self.resolution
        dev = self.device
        if batch is not None and "original_size" in batch:
            orig = torch.as_tensor(batch["original_size"]).to(dev, torch.float32).view(n, 2)
            crop = torch.as_tensor(batch["crop_top_left"]).to(dev, torch.float32).view(n, 2)
        else:
            orig, crop = torch.full((n, 2), float(r), device=dev), torch.zeros(n, 2, device=dev)
        return torch.cat([orig, crop, torch.full((n, 2), float(r), device=dev)], dim=1)

    def _encode(self, prompts, batch=None):
        emb, _, pooled, _ = self.pipe.encode_prompt(list(prompts), device=self._text_device(),
                                                    do_classifier_free_guidance=False)
        return {"encoder_hidden_states": emb.float().to(self.device),
                "added_cond_kwargs": {"text_embeds": pooled.float().to(self.device),
                                      "time_ids": self.time_ids(batch, len(prompts))}}

    def null_condition(self, device="cpu"):
        if self._null is None:
            null = self._encode([""])
            if self.force_zeros:
                null = {"encoder_hidden_states": torch.zeros_like(null["encoder_hidden_states"]),
                        "added_cond_kwargs": {"text_embeds": torch.zeros_like(null["added_cond_kwargs"]["text_embeds"]),
                                              "time_ids": null["added_cond_kwargs"]["time_ids"]}}
            self._null = null
        return map_condition(lambda x: x.to(device), self._null)

    def null_like(self, cond):
        b = condition_batch_size(cond)
        null = self.null_condition(cond["encoder_hidden_states"].device)
        return {"encoder_hidden_states": null["encoder_hidden_states"].expand(b, -1, -1),
                "added_cond_kwargs": {"text_embeds": null["added_cond_kwargs"]["text_embeds"].expand(b, -1),
                                      "time_ids": cond["added_cond_kwargs"]["time_ids"]}}


class FluxTeacher(DiffusersTeacher):
    """FLUX.1 (rectified flow, Euler teacher solver) with its embedded guidance value.

    Latents are normalised with both ``scaling_factor`` and ``shift_factor``; the sigma schedule is
    shifted exactly as ``FluxPipeline`` shifts it at sampling (``mu`` from the latent token count at
    ``resolution``), and the same :class:`FlowMatchSchedule` is exported for sampling (the public
    script trained on unshifted sigmas and ignored ``shift_factor``: TDD_SPEC 1).
    """

    pipeline_class = "FluxPipeline"
    model_attr = "transformer"
    latent_multiple = 2
    prediction_type = "flow"

    def __init__(self, pretrained: str, guidance_scale: float = 3.5, max_sequence_length: int = 512,
                 resolution: int = 1024, **kwargs):
        super().__init__(pretrained, resolution=resolution, **kwargs)
        self.guidance_scale, self.max_sequence_length = float(guidance_scale), int(max_sequence_length)
        self.schedule = self.flow_schedule(self.pipe.scheduler.config, self.sample_shape)
        from tdd_lab.nets.flux import FluxDenoiser

        embedded = self.guidance_scale if self.model.config.get("guidance_embeds", False) else None
        self.net = FluxDenoiser(self.model, embedded, self.schedule.num_train_timesteps)

    @staticmethod
    def flow_schedule(config, sample_shape) -> FlowMatchSchedule:
        """FLUX's shifted sigmas for latents of ``sample_shape`` (C, H, W): dynamic ``mu`` or static shift."""
        get = config.get
        t = int(get("num_train_timesteps", 1000))
        if get("use_dynamic_shifting", False):
            seq_len = (sample_shape[1] // 2) * (sample_shape[2] // 2)
            mu = calculate_shift(seq_len, get("base_image_seq_len", 256), get("max_image_seq_len", 4096),
                                 get("base_shift", 0.5), get("max_shift", 1.15))
            return FlowMatchSchedule(t, mu=mu)
        return FlowMatchSchedule(t, shift=float(get("shift", 1.0)))

    def _encode(self, prompts, batch=None):
        emb, pooled, _ = self.pipe.encode_prompt(list(prompts), prompt_2=None, device=self._text_device(),
                                                 max_sequence_length=self.max_sequence_length)
        return {"encoder_hidden_states": emb.float().to(self.device),
                "pooled_projections": pooled.float().to(self.device)}

    def null_condition(self, device="cpu"):
        if self._null is None:
            self._null = self._encode([""])
        return map_condition(lambda x: x.to(device), self._null)

    def describe(self) -> dict:
        return {**super().describe(), "guidance_scale": self.guidance_scale, "mu": self.schedule.mu,
                "shift": self.schedule.shift, "max_sequence_length": self.max_sequence_length}

    def reference_sampler(self):
        """Deterministic Euler (the flow TDD sampler with eta = 0) as the many-step reference."""
        from tdd_lab.samplers import FlowTDDSampler

        return FlowTDDSampler(eta=0.0)

    def sampling_scheduler(self, num_ddim_timesteps: int, sampler=None):
        """:class:`FlowTDDScheduler` on the training grid with the pipeline's shifting (``FluxPipeline`` passes mu)
        and the evaluated sampler's eta and timestep schedule."""
        from tdd_lab.schedulers import FlowTDDScheduler

        cfg = self.pipe.scheduler.config
        keys = ("base_shift", "max_shift", "base_image_seq_len", "max_image_seq_len")
        opts = {k: getattr(sampler, k) for k in ("eta", "timestep_schedule") if hasattr(sampler, k)}
        return FlowTDDScheduler(num_train_timesteps=self.schedule.num_train_timesteps, shift=self.schedule.shift,
                                use_dynamic_shifting=self.schedule.mu is not None, mu=self.schedule.mu,
                                tdd_train_step=num_ddim_timesteps, **{k: cfg[k] for k in keys if k in cfg}, **opts)

    def export_info(self) -> dict:
        return {**super().export_info(),
                "embedded_guidance": self.guidance_scale,            # FluxPipeline's guidance_scale argument
                "max_sequence_length": self.max_sequence_length}     # T5 padding length of training
