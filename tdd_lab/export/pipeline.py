"""Exports of students of diffusers teachers (SD1.5 / SDXL / FLUX / SD3), in the format the stock pipeline loads.

LoRA students: ``pytorch_lora_weights.safetensors`` written by the pipeline class's own
``save_lora_weights`` with rank and alpha in its metadata (``load_lora_weights`` applies alpha / r),
optionally a kohya/A1111 file with the real alpha and the fused model; full students: the model folder
(``unet/`` or ``transformer/``). Always ``teacher.json``: which pipeline, base weights and settings the
student is loaded into. Loading goes through the stock pipeline, exactly what the model card shows a user.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_class, instantiate

from tdd_lab.denoiser import Denoiser
from tdd_lab.export.card import model_card
from tdd_lab.export.kohya import lora_state_dict, write_kohya
from tdd_lab.export.student import ExportedStudent, Exporter
from tdd_lab.schedules import schedule_from_config


class PipelineExporter(Exporter):
    """``info``: the teacher's ``pipeline_info()`` (pipeline class, base weights, network and conditioner specs)."""

    def __init__(self, info: dict[str, Any]):
        self.info = info

    def write(self, directory, net, factory, kohya=False, fused=False):
        import diffusers

        directory.mkdir(parents=True, exist_ok=True)
        model_attr = self.info["model_attr"]
        lora = factory.adapter_config(net)
        if lora is not None:
            sd = lora_state_dict(net, f"{model_attr}.")
            meta = {"r": lora["rank"], "lora_alpha": lora["alpha"], "lora_dropout": lora.get("dropout", 0.0),
                    "target_modules": sorted({k.rsplit(".lora_", 1)[0] for k in sd}), "init_lora_weights": True,
                    "use_dora": False, "bias": "none"}
            getattr(diffusers, self.info["pipeline_class"]).save_lora_weights(
                directory, safe_serialization=True,
                **{f"{model_attr}_lora_layers": sd, f"{model_attr}_lora_adapter_metadata": meta})
            if kohya:
                if model_attr != "unet":
                    raise ValueError("export_kohya: the kohya/A1111 LoRA layout is written for UNet models (SD1.5, SDXL); "
                                     "FLUX and SD3 students are exported in the diffusers format only")
                write_kohya(sd, lora["alpha"], model_attr, directory / "lora_kohya.safetensors")
            if fused:
                getattr(factory.export_network(net), model_attr).save_pretrained(directory / model_attr)
        else:
            getattr(net, model_attr).save_pretrained(directory / model_attr)
        info = {**self.info, "lora": None if lora is None else {k: lora[k] for k in ("rank", "alpha")}}
        (directory / "teacher.json").write_text(json.dumps(info, indent=2))

    def model_card(self, meta):
        return model_card(self.info, meta)

    @classmethod
    def load(cls, directory, meta, device="cpu"):
        directory = Path(directory)
        info = json.loads((directory / "teacher.json").read_text())
        pipe = load_student_pipeline(directory, device)
        schedule = schedule_from_config(meta["schedule"])
        net = instantiate(info["network"], getattr(pipe, info["model_attr"]))
        denoiser = Denoiser(net, schedule, meta["prediction_type"], compute_dtype=torch.float32).to(device)
        prompts = info.get("label_prompts") or [""]
        conditioner = get_class(info["conditioner"]["_target_"])(  # the pipeline's VAE keeps its dtype
            pipe, prompts, int(info["resolution"]), vae_dtype=pipe.vae.dtype,
            **{k: v for k, v in info["conditioner"].items() if k != "_target_"})
        return ExportedStudent(denoiser, conditioner.to(device), tuple(meta["sample_shape"]), save_images, meta, pipe, info)


def save_images(images: torch.Tensor, prompts, path: Path) -> None:
    """Images (B, 3, H, W) in [0, 1] as a PNG grid."""
    from torchvision.utils import save_image

    save_image(images, str(path), nrow=min(4, len(images)), padding=2)


def load_student_pipeline(directory: str | Path, device: str = "cpu", dtype: str | None = None,
                          pretrained: str | None = None):
    """The stock pipeline with the exported student of ``directory`` and its scheduler."""
    import diffusers

    from tdd_lab import schedulers as tdd_schedulers
    from tdd_lab.utils.hub import check_pretrained, hub_offline, resolve_dtype

    directory = Path(directory)
    info = json.loads((directory / "teacher.json").read_text())
    base = pretrained or info["pretrained"]
    check_pretrained(base, "the student's teacher (teacher.json 'pretrained'; pass pretrained=... to override)")
    torch_dtype = resolve_dtype(dtype or info.get("dtype", "float32"))
    cls = getattr(diffusers, info["pipeline_class"])
    kwargs: dict[str, Any] = dict(torch_dtype=torch_dtype, local_files_only=hub_offline())
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


@torch.no_grad()
def generate(student: ExportedStudent, prompts: list[str], steps: int, guidance_scale: float, eta: float | None,
             seed: int, device: str = "cpu") -> torch.Tensor:
    """Images (B, 3, H, W) in [0, 1] from the stock pipeline; image i uses a generator seeded with ``seed + i``."""
    pipe, info = student.pipeline, student.info
    flow = student.meta.get("prediction_type") == "flow"
    gens = [torch.Generator(device=device).manual_seed(seed + i) for i in range(len(prompts))]
    res = int(info["resolution"])
    kwargs: dict[str, Any] = dict(prompt=list(prompts), num_inference_steps=steps, guidance_scale=guidance_scale,
                                  generator=gens, height=res, width=res, output_type="pt")
    if flow:  # FluxPipeline / StableDiffusion3Pipeline
        kwargs["max_sequence_length"] = int(info["max_sequence_length"])
        if info.get("embedded_guidance") is not None:
            # FluxPipeline: guidance_scale is the embedded guidance value; CFG on the student is true_cfg_scale
            kwargs["guidance_scale"] = float(info["embedded_guidance"])
            if guidance_scale != 1.0:
                kwargs.update(true_cfg_scale=guidance_scale, negative_prompt=[""] * len(prompts))
        # (StableDiffusion3Pipeline: guidance_scale is CFG itself, on the velocity, negative prompt "")
        if eta is not None:  # the flow pipelines have no eta argument: it is a scheduler setting
            pipe.scheduler.register_to_config(eta=eta)
        # the flow pipelines do not pass their generator to step(): seed the scheduler's re-noising stream
        pipe.scheduler.generator = torch.Generator(device=device).manual_seed(seed)
    elif eta is not None:
        kwargs["eta"] = eta
    return pipe(**kwargs).images.float().cpu()
