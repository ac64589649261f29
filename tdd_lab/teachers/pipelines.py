"""Students of diffusers teachers, sampled inside the stock pipeline (what a user does with the export).

``PipelineStudent.load(run_dir/student)`` loads the teacher's pipeline class from the recorded
``pretrained`` path, applies the student (``load_lora_weights`` on the exported LoRA, whose
metadata carries alpha; or the full model folder) and installs the exported TDD scheduler.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from tdd_lab.teachers.latent import resolve_dtype


def load_student_pipeline(directory: str | Path, device: str = "cpu", dtype: str | None = None,
                          pretrained: str | None = None):
    """The stock pipeline with the exported student of ``directory`` and its scheduler."""
    import diffusers

    from tdd_lab import schedulers as tdd_schedulers
    from tdd_lab.validate import check_pretrained

    directory = Path(directory)
    info = json.loads((directory / "teacher.json").read_text())
    base = pretrained or info["pretrained"]
    check_pretrained(base, "the student's teacher (teacher.json 'pretrained'; pass --pretrained to override)")
    torch_dtype = resolve_dtype(dtype or info.get("dtype", "float32"))
    cls = getattr(diffusers, info["pipeline_class"])
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    kwargs: dict[str, Any] = dict(torch_dtype=torch_dtype, local_files_only=offline)
    if info.get("revision"):
        kwargs["revision"] = info["revision"]
    if info.get("variant"):
        kwargs["variant"] = info["variant"]
    if info["pipeline_class"] == "StableDiffusionPipeline":
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    model_attr = info["model_attr"]
    lora_file = directory / "pytorch_lora_weights.safetensors"
    if not lora_file.exists() and (directory / model_attr).is_dir():  # a full student (fused extras: LoRA wins)
        model_cls = getattr(diffusers, json.loads((directory / model_attr / "config.json").read_text())["_class_name"])
        kwargs[model_attr] = model_cls.from_pretrained(directory / model_attr, torch_dtype=torch_dtype)
        pipe = cls.from_pretrained(base, **kwargs)
    else:
        pipe = cls.from_pretrained(base, **kwargs)
        pipe.load_lora_weights(str(directory))
    sched_cfg = json.loads((directory / "scheduler" / "scheduler_config.json").read_text())
    name = sched_cfg["_class_name"]  # TDDScheduler / FlowTDDScheduler, or diffusers' LCM/TCD/DDIM/DPM++ schedulers
    sched_cls = getattr(tdd_schedulers, name, None) or getattr(diffusers, name)
    pipe.scheduler = sched_cls.from_pretrained(directory / "scheduler")
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


@dataclass
class PipelineStudent:
    """An exported student of a diffusers teacher, sampled with the stock pipeline."""

    pipeline: Any
    meta: dict[str, Any]
    resolution: int
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)  # teacher.json

    @classmethod
    def load(cls, directory: Path, meta: dict, device: str = "cpu") -> PipelineStudent:
        info = json.loads((Path(directory) / "teacher.json").read_text())
        return cls(load_student_pipeline(directory, device), meta, int(info["resolution"]), device, info)

    @property
    def is_flow(self) -> bool:
        return self.meta.get("prediction_type") == "flow"

    # -- the tdd_lab model-function view (``tdd_lab.evaluate`` samples it like a training-time student) --------
    @property
    def num_ddim_timesteps(self) -> int:
        return int(self.meta["num_ddim_timesteps"])

    @cached_property
    def schedule(self):
        from tdd_lab.schedules import FlowMatchSchedule, VPSchedule

        cfg = dict(self.meta["schedule"])
        if cfg.pop("kind", "vp") == "flow":
            return FlowMatchSchedule(cfg["num_train_timesteps"], shift=cfg.get("shift", 1.0), mu=cfg.get("mu"))
        cfg.pop("prediction_type", None)
        return VPSchedule(**cfg)

    @cached_property
    def net(self):
        """The pipeline's (LoRA-loaded) network behind tdd_lab's denoiser signature."""
        if self.is_flow:
            from tdd_lab.nets.flux import FluxDenoiser

            model = self.pipeline.transformer
            embedded = self.extra.get("embedded_guidance") if model.config.get("guidance_embeds") else None
            return FluxDenoiser(model, embedded, self.schedule.num_train_timesteps)
        from tdd_lab.nets.unet import UNetDenoiser

        return UNetDenoiser(self.pipeline.unet)

    @torch.no_grad()
    def eps_fn(self, x_t, t, cond, timestep_cond=None):
        """(x0_hat, eps_hat) of the exported student at integer timesteps t (B,): the samplers' model function."""
        from tdd_lab.prediction import to_x0_eps

        sched = self.schedule
        raw = self.net(x_t, sched.model_time(t), cond, timestep_cond).float()
        a, s = sched.alpha_sigma(t, x_t.ndim, torch.float32)
        x0, eps = to_x0_eps(raw, x_t.float(), a, s, self.meta["prediction_type"])
        return x0.to(x_t.dtype), eps.to(x_t.dtype)

    @torch.no_grad()
    def generate(self, prompts: list[str], steps: int, guidance_scale: float, eta: float | None, seed: int) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1]; image i uses a generator seeded with ``seed + i``."""
        gens = [torch.Generator(device=self.device).manual_seed(seed + i) for i in range(len(prompts))]
        kwargs: dict[str, Any] = dict(prompt=list(prompts), num_inference_steps=steps, guidance_scale=guidance_scale,
                                      generator=gens, height=self.resolution, width=self.resolution, output_type="pt")
        if self.is_flow:
            # FluxPipeline: guidance_scale is the embedded guidance value; CFG on the student is true_cfg_scale
            kwargs["guidance_scale"] = float(self.extra.get("embedded_guidance") or 3.5)
            kwargs["max_sequence_length"] = int(self.extra.get("max_sequence_length") or 512)
            if guidance_scale != 1.0:
                kwargs.update(true_cfg_scale=guidance_scale, negative_prompt=[""] * len(prompts))
            if eta is not None:  # FluxPipeline has no eta argument: it is a scheduler setting
                self.pipeline.scheduler.register_to_config(eta=eta)
            # FluxPipeline does not pass its generator to step(): seed the scheduler's re-noising stream
            self.pipeline.scheduler.generator = torch.Generator(device=self.device).manual_seed(seed)
        elif eta is not None:
            kwargs["eta"] = eta
        return self.pipeline(**kwargs).images.float().cpu()
