"""Exports of LoRA students of SD1.5 / SDXL / FLUX: the diffusers LoRA, the kohya file and the fused model load in
the stock pipelines with one and the same function; the model card and ``teacher.json`` say how."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from .conftest import KOHYA, MODEL_ATTR, read_json, stock_pipeline


@pytest.mark.parametrize("family", ["sdxl", "sd15", "flux"])
def test_export_files_alpha_card_and_teacher_json(family, trained):
    run = trained(family)
    student, attr, kohya = run.student, MODEL_ATTR[family], KOHYA[family]
    names = {p.name for p in student.iterdir()}
    assert {"pytorch_lora_weights.safetensors", "scheduler", "student.json", "teacher.json", "README.md", attr} <= names
    assert ("lora_kohya.safetensors" in names) == kohya
    # alpha is stored with the adapters (no fuse scale to guess) and in the kohya file
    with safe_open(str(student / "pytorch_lora_weights.safetensors"), "pt") as f:
        meta = json.loads(f.metadata()["lora_adapter_metadata"])
    assert meta[f"{attr}.lora_alpha"] == 8 and meta[f"{attr}.r"] == 4
    if kohya:
        with safe_open(str(student / "lora_kohya.safetensors"), "pt") as f:
            alphas = [f.get_tensor(k) for k in f.keys() if k.endswith(".alpha")]
        assert alphas and all(float(a) == 8.0 for a in alphas)
    # the model card shows the stock-pipeline code with the exported scheduler and the recommended settings
    card = (student / "README.md").read_text()
    sched = "FlowTDDScheduler" if family == "flux" else "TDDScheduler"
    assert "load_lora_weights" in card and f"{sched}.from_pretrained" in card
    assert f"base_model: {run.cfg.teacher.pretrained}" in card and "N = 50" in card
    assert "python -m tdd_lab.sample run_dir=" in card
    # teacher.json: the pipeline, base weights and settings the student is loaded into
    info = read_json(student / "teacher.json")
    cls = {"sdxl": "StableDiffusionXLPipeline", "sd15": "StableDiffusionPipeline", "flux": "FluxPipeline"}[family]
    assert info["pipeline_class"] == cls and info["model_attr"] == attr
    assert info["pretrained"] == str(run.cfg.teacher.pretrained) and info["resolution"] == 32
    assert info["lora"] == {"rank": 4, "alpha": 8}
    if family == "flux":
        assert info["embedded_guidance"] == 3.5 and info["max_sequence_length"] == 16
    meta = read_json(student / "student.json")
    assert meta["num_ddim_timesteps"] == 50 and meta["sample_shape"] == [4, 16, 16]
    assert meta["prediction_type"] == ("flow" if family == "flux" else "epsilon")
    assert read_json(student / "scheduler" / "scheduler_config.json")["_class_name"] == sched


@pytest.mark.parametrize("family", ["sdxl", "sd15", "flux"])
def test_lora_kohya_and_fused_exports_have_the_same_function(family, trained, assets):
    """The LoRA loaded by the stock pipeline == the fused student model == the kohya file loaded by the pipeline."""
    run = trained(family)
    student, attr, kohya = run.student, MODEL_ATTR[family], KOHYA[family]
    pipe = stock_pipeline(family, assets[family])
    base = getattr(pipe, attr)
    fused = type(base).from_pretrained(student / attr)
    probe = {n: p.detach().clone() for n, p in base.named_parameters()}
    pipe.load_lora_weights(str(student))
    lora_model = getattr(pipe, attr)
    moved = max((fused.state_dict()[n] - probe[n]).abs().max().item() for n in probe)
    assert moved > 1e-3  # training changed the function
    torch.manual_seed(0)
    if family == "flux":
        from tdd_lab.nets.flux import FluxDenoiser

        x = torch.randn(2, 4, 16, 16)
        cond = {"encoder_hidden_states": torch.randn(2, 16, 32), "pooled_projections": torch.randn(2, 32)}
        t = torch.tensor([999.0, 400.0])
        out_lora = FluxDenoiser(lora_model, 3.5)(x, t, cond)
        out_fused = FluxDenoiser(fused, 3.5)(x, t, cond)
    else:
        from tdd_lab.nets.unet import UNetDenoiser

        x = torch.randn(2, 4, 16, 16)
        dim = base.config.cross_attention_dim
        cond = torch.randn(2, 77, dim)
        if family == "sdxl":
            cond = {"encoder_hidden_states": cond, "added_cond_kwargs": {
                "text_embeds": torch.randn(2, 32), "time_ids": torch.tensor([[32.0, 32, 0, 0, 32, 32]] * 2)}}
        t = torch.tensor([999, 400])
        out_lora = UNetDenoiser(lora_model)(x, t, cond)
        out_fused = UNetDenoiser(fused)(x, t, cond)
    assert torch.allclose(out_lora, out_fused, atol=1e-4, rtol=1e-4)
    if kohya:  # the kohya file loads in the stock pipeline and has the same function (its alpha is right)
        pipe_k = stock_pipeline(family, assets[family])
        pipe_k.load_lora_weights(str(student), weight_name="lora_kohya.safetensors")
        out_kohya = UNetDenoiser(pipe_k.unet)(x, t, cond)
        assert torch.allclose(out_kohya, out_fused, atol=1e-4, rtol=1e-4)
