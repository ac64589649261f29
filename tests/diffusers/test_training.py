"""Training a student of a diffusers teacher: the smoke run of each family, the headline CLI command, a LoRA student
sharing the teacher's UNet, checkpoints that hold the adapters only (and resume), full fine-tuning."""

from __future__ import annotations

import json

import pytest
import torch

from ..conftest import compose_cfg
from .conftest import build_module, run_app, smoke_overrides


@pytest.mark.parametrize("family", ["sdxl", "sd15", "flux"])
def test_smoke_training_of_each_family(family, trained):
    run = trained(family)
    assert run.metrics["train/steps"] == 5.0
    assert all(v == v for v in run.metrics.values())
    assert {"eval/ode_rmse@2", "eval/ode_rmse@4", "teacher/ode_rmse@4"} <= set(run.metrics)
    saved = json.loads((run.dir / "metrics.json").read_text())  # (the evaluate app may have appended keys since)
    assert {k: saved[k] for k in run.metrics} == pytest.approx(run.metrics)


def test_cli_headline_command_on_tiny_sdxl(assets, tmp_path, cache_dir):
    """`python -m tdd_lab.train +experiment=tdd_sdxl teacher.pretrained=DIR data=image_folder data.root=DIR debug=smoke`."""
    args = ["-m", "tdd_lab.train", "+experiment=tdd_sdxl", f"teacher.pretrained={assets['sdxl']}", "data=image_folder",
            f"data.root={assets['images']}", "debug=smoke", "teacher.resolution=32", "data.batch_size=4",
            "data.num_workers=0", "metrics.num_samples=4", "metrics.batch_size=4", "metrics.metrics.ode_steps=8",
            "metrics.teacher_steps=8", f"hydra.run.dir={tmp_path / 'run'}"]
    r = run_app(args, tmp_path, cache_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["train/steps"] == 5.0 and "eval/ode_rmse@4" in metrics
    assert (tmp_path / "run" / "student" / "pytorch_lora_weights.safetensors").exists()


def test_lora_student_shares_the_teacher_unet(assets, tmp_path, cache_dir):
    from tdd_lab.denoiser import adapters_disabled

    module, _ = build_module("sdxl", assets, cache_dir, tmp_path, "teacher.dtype=fp32", "student.rank=4")
    teacher = module.teacher
    assert module.student.net is teacher.denoiser.net  # one UNet in memory: adapters injected into the teacher's own
    n_unet = sum(p.numel() for p in teacher.model.parameters())  # base + adapters
    assert sum(p.numel() for p in module.parameters()) == n_unet  # no second copy of the base weights
    lora = [p for n, p in module.student.net.named_parameters() if "lora_B" in n]
    assert lora
    with torch.no_grad():
        for p in lora:
            p.normal_(0, 0.5)
    x = torch.randn(2, 4, 16, 16)
    t = torch.tensor([999, 300])
    cond = teacher.conditioner.conditions(torch.tensor([0, 1]))
    x0_t, eps_t = teacher.denoiser(x, t, cond)
    with torch.no_grad():
        with adapters_disabled(module.student.net):
            base_eps = module.student(x, t, cond)[1]
        student_eps = module.student(x, t, cond)[1]
    assert torch.allclose(eps_t, base_eps, atol=1e-5)        # the teacher sees the base model
    assert (student_eps - base_eps).abs().max() > 1e-2       # the student sees its adapters
    assert all(p.requires_grad for p in lora)                # trainability restored after teacher calls
    # checkpoints keep the adapters only; the frozen base comes back from teacher.pretrained
    ckpt = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(ckpt)
    assert ckpt["state_dict"] and all("lora_" in k for k in ckpt["state_dict"])
    assert ckpt["frozen_weights_omitted"] > 0


def test_lora_targets_of_the_recipe_exist_in_the_sdxl_unet(assets, tmp_path, cache_dir):
    module, _ = build_module("sdxl", assets, cache_dir, tmp_path, "teacher.dtype=fp32")
    wrapped = {n.rsplit(".base_layer", 1)[0] for n, _ in module.student.net.named_modules() if n.endswith("base_layer")}
    suffixes = {n.split(".")[-1] for n in wrapped} | {".".join(n.split(".")[-2:]) for n in wrapped}
    for target in ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "conv1", "conv2", "time_emb_proj"):
        assert target in suffixes, target


def test_lora_checkpoint_holds_adapters_only_and_resumes(assets, tmp_path, cache_dir):
    """The checkpoint holds the adapters only, and ``resume=auto`` restores it: the second run starts at its step from
    its optimizer, lr-schedule and RNG states and runs only the remaining steps (a fresh start would run all 6)."""
    from tdd_lab.train import train

    from ..test_resume import assert_restored_from, probe_override

    run = tmp_path / "run"
    common = ["teacher.dtype=fp32", "student.rank=4", "optimizer.lr=0.01", "callbacks=default",
              "trainer.enable_checkpointing=true", "callbacks.checkpoint.every_n_train_steps=2", "metrics.steps=[2]",
              "metrics.num_samples=2", "metrics.batch_size=2", "export=false"]
    train(compose_cfg(smoke_overrides("sdxl", assets, *common, "trainer.max_steps=4"), run, cache_dir))
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4 and ckpt["frozen_weights_omitted"] > 0
    assert ckpt["state_dict"] and all("lora_" in k for k in ckpt["state_dict"])
    assert all(k.startswith("student.net.") for k in ckpt["state_dict"])  # the student denoiser's raw network
    probe = tmp_path / "probe.pt"
    metrics = train(compose_cfg(smoke_overrides("sdxl", assets, *common, "trainer.max_steps=6", "resume=auto",
                                                probe_override(probe)), run, cache_dir))
    assert metrics["train/steps"] == 6.0
    assert_restored_from(torch.load(probe, weights_only=False), ckpt, max_steps=6)
    ckpt6 = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt6["global_step"] == 6
    moved = max((ckpt6["state_dict"][k] - v).abs().max().item() for k, v in ckpt["state_dict"].items())
    assert moved > 0  # training continued from the restored adapters


def test_full_finetune_student_exports_a_model_folder_the_pipeline_loads(assets, tmp_path, cache_dir):
    from tdd_lab.export import export_student, load_student
    from tdd_lab.export.pipeline import generate
    from tdd_lab.samplers import TDDSampler

    module, _ = build_module("sd15", assets, cache_dir, tmp_path, "teacher.dtype=fp32", "student=full")
    net = module.student.net
    assert net is not module.teacher.denoiser.net  # a trainable float32 copy
    assert net.unet.dtype == torch.float32 and all(p.requires_grad for p in net.parameters())
    with torch.no_grad():
        net.unet.conv_out.bias.add_(0.5)  # a visible change of the function
    sampler = TDDSampler(eta=0.0, num_ddim_timesteps=50)
    out = export_student(tmp_path / "student", module.student, module.student_factory, module.teacher, sampler,
                         module.guidance, {"sampler": sampler.describe(), "steps": [2], "guidance_scale": 1.0})
    assert (out / "unet" / "config.json").exists() and not (out / "pytorch_lora_weights.safetensors").exists()
    student = load_student(out)
    unet = student.pipeline.unet
    assert torch.allclose(unet.conv_out.bias, net.unet.conv_out.bias)
    images = generate(student, ["a red square"], 2, 1.0, 0.0, seed=0)
    assert images.shape == (1, 3, 32, 32) and torch.isfinite(images).all()
