"""SD3 / SD3.5 teachers (``teacher=sd3``) on a tiny random-weight ``StableDiffusion3Pipeline``: the conditions, latents
and shifted sigmas are the pipeline's; tdd_lab's evaluation path equals the stock pipeline with the TDD scheduler
(CFG on, eta 0 and > 0); a smoke run through the real loader exports a LoRA that the stock pipeline loads with
``load_lora_weights`` and samples with the exported scheduler; the strategy swaps train; what cannot run on a flow
teacher, and missing or incomplete folders, stop with a clear error."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open

from ..conftest import compose_cfg
from .conftest import build_module, read_json, run_app, scheduler_config, smoke_overrides

MAX_SEQ = 16            # T5 tokens of the tiny runs (the sequence is 77 CLIP + 16 T5 tokens)
PROMPTS = ["a red square", "a blue square"]
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
                "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2")


@pytest.fixture(scope="module")
def sd3_assets(tmp_path_factory):
    """A tiny SD3 pipeline folder and 8 captioned images, built once for this file."""
    from tdd_lab.testing.tiny import save_tiny_sd3, write_image_folder

    root = tmp_path_factory.mktemp("sd3_assets")
    return {"sd3": save_tiny_sd3(root / "sd3"), "images": write_image_folder(root / "images", n=8)}


def sd3_module(assets, cache_dir, tmp_path, *extra):
    """(module, datamodule) of ``+experiment=tdd_sd3 debug=smoke`` on the tiny pipeline, fp32."""
    return build_module("sd3", assets, cache_dir, tmp_path, "teacher.dtype=fp32", f"teacher.max_sequence_length={MAX_SEQ}",
                        *extra)


def stock_sd3(path):
    """What a user writes to load the base model: ``StableDiffusion3Pipeline.from_pretrained`` in float32."""
    import diffusers

    pipe = diffusers.StableDiffusion3Pipeline.from_pretrained(path, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sd3_run(sd3_assets, tmp_path_factory, cache_dir):
    """One smoke training on the tiny SD3 pipeline through the real loader, exported with the fused model too.

    A high lr so the adapters move far enough for a wrong alpha or key map to show; rank 4, alpha 8 (alpha != rank).
    """
    from tdd_lab.train import train

    run_dir = tmp_path_factory.mktemp("run_sd3")
    cfg = compose_cfg(smoke_overrides("sd3", sd3_assets, "teacher.dtype=fp32", f"teacher.max_sequence_length={MAX_SEQ}",
                                      "optimizer.lr=0.01", "student.rank=4", "student.alpha=8", "export_fused=true"),
                      run_dir, cache_dir)
    return run_dir, cfg, train(cfg)


# ---- conditions, latents, sigmas ------------------------------------------------------------------------
def test_sd3_conditions_latents_and_static_shift_match_the_pipeline(sd3_assets, tmp_path, cache_dir):
    from diffusers import FlowMatchEulerDiscreteScheduler

    from tdd_lab.guidance import DecoupledGuidance
    from tdd_lab.samplers import FlowTDDSampler

    module, _ = sd3_module(sd3_assets, cache_dir, tmp_path)
    teacher = module.teacher
    conditioner, pipe = teacher.conditioner, teacher.pipe
    assert type(teacher).__name__ == "SD3Teacher" and teacher.sample_shape == (16, 16, 16)
    # prompts: the pipeline's own encode_prompt (CLIP-L, CLIP-G padded to T5's width, then T5); null = its "" negative
    emb, neg, pooled, neg_pooled = pipe.encode_prompt(["a red square"], None, None, device="cpu",
                                                      do_classifier_free_guidance=True, max_sequence_length=MAX_SEQ)
    enc = conditioner.encode(["a red square"])
    assert enc["encoder_hidden_states"].shape == (1, 77 + MAX_SEQ, 64) and enc["pooled_projections"].shape == (1, 40)
    assert torch.equal(enc["encoder_hidden_states"], emb) and torch.equal(enc["pooled_projections"], pooled)
    assert enc["encoder_hidden_states"][:, :77, 48:].abs().max() == 0  # 16 + 32 CLIP features, zero-padded to 64
    null = conditioner.null_condition("cpu")
    assert torch.equal(null["encoder_hidden_states"], neg) and torch.equal(null["pooled_projections"], neg_pooled)
    assert null["pooled_projections"].abs().max() > 0  # the encoded "" (SD3 has no all-zero null condition)
    cond = conditioner.conditions(torch.tensor([0, 1]))
    g = DecoupledGuidance(w=3.5, proportion_empty_prompts=1.0).prepare(cond, conditioner.null_like(cond))
    assert all(torch.equal(g.cond[k], g.uncond[k]) for k in cond)  # a dropped caption is the unconditional branch
    # latents: (z - shift_factor) * scaling_factor, both from the VAE config
    vae = conditioner.vae
    assert vae.config.shift_factor and vae.config.scaling_factor != 1
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    z = vae.encode(x).latent_dist.mode()
    assert torch.allclose(conditioner.encode_images(x), (z - vae.config.shift_factor) * vae.config.scaling_factor)
    # sigmas: the checkpoint's static shift 3.0, equal to the stock scheduler's 1000 training sigmas
    stock = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    assert teacher.schedule.shift == 3.0 and teacher.schedule.mu is None
    assert torch.allclose(teacher.schedule.sigmas.flip(0).float(), stock.sigmas[:1000], atol=1e-6)
    # ... and the scheduler the export writes samples on them, with no dynamic shift for the pipeline to apply
    sched = FlowTDDSampler(num_ddim_timesteps=50).make_scheduler(scheduler_config(teacher.denoiser))
    assert sched.config.shift == 3.0 and not sched.config.use_dynamic_shifting
    assert torch.allclose(sched.sigma_table, teacher.schedule.sigmas)


# ---- tdd_lab's evaluation path == the stock pipeline ---------------------------------------------------
@pytest.mark.parametrize("eta", [0.0, 0.3])
def test_sd3_internal_sampling_equals_the_stock_pipeline(eta, sd3_assets, tmp_path, cache_dir):
    """Teacher conditions + denoiser + CFG guider + tdd_lab's flow TDD sampler == ``StableDiffusion3Pipeline`` with the
    exported scheduler, same noise, CFG scale 2 (the pipeline's [uncond, cond] batch), 4 steps: the latents to 1e-4
    and, at eta 0, the decoded images (so ``shift_factor`` is undone as the pipeline undoes it)."""
    from tdd_lab.evaluation import fixed_noise
    from tdd_lab.guider import ClassifierFreeGuidance
    from tdd_lab.samplers import FlowTDDSampler

    module, _ = sd3_module(sd3_assets, cache_dir, tmp_path)
    teacher = module.teacher
    conditioner, pipe = teacher.conditioner, teacher.pipe
    noise = fixed_noise(2, teacher.sample_shape, seed=5)
    sampler = FlowTDDSampler(eta=eta, num_ddim_timesteps=50)
    cond = conditioner.conditions(torch.tensor([0, 1]))
    ours = sampler.sample(teacher.denoiser, noise, cond, conditioner.null_like(cond), 4,
                          ClassifierFreeGuidance.from_scale(2.0), generator=torch.Generator().manual_seed(11))
    pipe.scheduler = sampler.make_scheduler(scheduler_config(teacher.denoiser))  # the scheduler the export writes
    pipe.set_progress_bar_config(disable=True)

    def stock(output_type):
        pipe.scheduler.generator = torch.Generator().manual_seed(11)  # the pipeline does not pass its generator
        gens = [torch.Generator().manual_seed(5 + i) for i in range(2)]
        return pipe(prompt=teacher.eval_prompts[:2], num_inference_steps=4, guidance_scale=2.0, generator=gens,
                    height=32, width=32, max_sequence_length=MAX_SEQ, output_type=output_type).images

    theirs = stock("latent")
    assert ours.shape == theirs.shape == (2, 16, 16, 16)
    assert torch.allclose(ours, theirs.float(), atol=1e-4), (ours - theirs).abs().max()
    if eta == 0.0:
        images = stock("pt")
        assert torch.allclose((teacher.decode(ours) + 1) / 2, images.float(), atol=1e-4)


# ---- smoke run through the real loader, export, stock pipeline --------------------------------------------
def test_sd3_smoke_run_exports_a_lora_the_stock_pipeline_loads(sd3_run, sd3_assets):
    from tdd_lab.nets.sd3 import SD3Denoiser

    run_dir, cfg, metrics = sd3_run
    assert metrics["train/steps"] == 5.0 and all(v == v for v in metrics.values())
    assert {"eval/ode_rmse@2", "eval/ode_rmse@4", "teacher/ode_rmse@4"} <= set(metrics)
    student = run_dir / "student"
    names = {p.name for p in student.iterdir()}
    assert {"pytorch_lora_weights.safetensors", "scheduler", "student.json", "teacher.json", "README.md",
            "transformer"} <= names
    with safe_open(str(student / "pytorch_lora_weights.safetensors"), "pt") as f:
        meta = json.loads(f.metadata()["lora_adapter_metadata"])
    assert meta["transformer.lora_alpha"] == 8 and meta["transformer.r"] == 4
    info = read_json(student / "teacher.json")
    assert info["pipeline_class"] == "StableDiffusion3Pipeline" and info["model_attr"] == "transformer"
    assert info["max_sequence_length"] == MAX_SEQ and "embedded_guidance" not in info
    assert info["network"]["_target_"] == "tdd_lab.nets.sd3.SD3Denoiser"
    assert info["conditioner"] == {"_target_": "tdd_lab.conditioner.SD3Conditioner", "max_sequence_length": MAX_SEQ}
    sched = read_json(student / "scheduler" / "scheduler_config.json")
    assert sched["_class_name"] == "FlowTDDScheduler" and sched["shift"] == 3.0 and not sched["use_dynamic_shifting"]
    assert read_json(student / "student.json")["prediction_type"] == "flow"
    card = (student / "README.md").read_text()
    assert "StableDiffusion3Pipeline.from_pretrained" in card and "FlowTDDScheduler.from_pretrained" in card
    # the stock pipeline loads the LoRA; its transformer has the fused student's function
    pipe = stock_sd3(sd3_assets["sd3"])
    probe = {n: p.detach().clone() for n, p in pipe.transformer.named_parameters()}
    fused = type(pipe.transformer).from_pretrained(student / "transformer")
    assert max((fused.state_dict()[n] - probe[n]).abs().max().item() for n in probe) > 1e-3  # training moved it
    pipe.load_lora_weights(str(student))
    x = torch.randn(2, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    cond = {"encoder_hidden_states": torch.randn(2, 77 + MAX_SEQ, 64), "pooled_projections": torch.randn(2, 40)}
    t = torch.tensor([999.0, 400.0])
    with torch.no_grad():
        out_lora, out_fused = SD3Denoiser(pipe.transformer)(x, t, cond), SD3Denoiser(fused)(x, t, cond)
    assert torch.allclose(out_lora, out_fused, atol=1e-4, rtol=1e-4)


def test_sd3_generate_equals_the_users_stock_pipeline_code(sd3_run, sd3_assets):
    """``generate`` on the loaded export == the model card's code (stock pipeline + ``load_lora_weights`` + the
    exported scheduler), with CFG on the student (guidance_scale 1.5) and re-noising (eta 0.3)."""
    from tdd_lab.export import load_student
    from tdd_lab.export.pipeline import generate
    from tdd_lab.schedulers import FlowTDDScheduler

    run_dir, _, _ = sd3_run
    student = load_student(run_dir)
    ours = generate(student, PROMPTS, 4, 1.5, 0.3, seed=3)
    pipe = stock_sd3(sd3_assets["sd3"])
    pipe.load_lora_weights(str(run_dir / "student"))
    pipe.scheduler = FlowTDDScheduler.from_pretrained(run_dir / "student" / "scheduler")
    pipe.scheduler.register_to_config(eta=0.3)
    pipe.scheduler.generator = torch.Generator().manual_seed(3)
    gens = [torch.Generator().manual_seed(3 + i) for i in range(2)]
    theirs = pipe(prompt=PROMPTS, num_inference_steps=4, guidance_scale=1.5, generator=gens, height=32, width=32,
                  max_sequence_length=MAX_SEQ, output_type="pt").images.float()
    assert ours.shape == (2, 3, 32, 32) and torch.isfinite(ours).all()
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert not torch.allclose(ours[0], ours[1], atol=1e-3)


def test_sd3_exported_student_reproduces_the_training_metric(sd3_run):
    from tdd_lab.export import load_student
    from tdd_lab.validate import instantiate, preflight

    run_dir, cfg, metrics = sd3_run
    parts = preflight(cfg)
    teacher = instantiate(cfg.teacher, "teacher")
    student = load_student(run_dir)
    got, _ = parts.evaluator.evaluate_student(student.denoiser, teacher, parts.guidance, parts.sampler, "cpu")
    for k in (2, 4):
        assert got[f"eval/ode_rmse@{k}"] == pytest.approx(metrics[f"eval/ode_rmse@{k}"], rel=1e-3, abs=1e-5)


# ---- swaps: what runs on a flow teacher, and what stops ---------------------------------------------------
@pytest.mark.parametrize("strategy", ["lcm", "pcm", "tcd"])
def test_sd3_strategy_swaps_train(strategy, sd3_assets, tmp_path, cache_dir):
    """``+experiment=tdd_sd3 strategy=lcm|pcm|tcd`` (the flow TDD sampler stays): a finite loss that reaches the LoRA,
    on the recipe's LoRA targets."""
    module, datamodule = sd3_module(sd3_assets, cache_dir, tmp_path, f"strategy={strategy}", "student.rank=4")
    wrapped = {n.rsplit(".base_layer", 1)[0] for n, _ in module.student.net.named_modules() if n.endswith("base_layer")}
    for target in LORA_TARGETS:
        assert any(n.endswith("." + target) for n in wrapped), target
    datamodule.setup("fit")
    loss, _ = module.distillation_loss(next(iter(datamodule.train_dataloader())))
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for n, p in module.student.net.named_parameters() if "lora_A" in n]
    assert grads and all(g is not None for g in grads)


@pytest.mark.parametrize("override,message", [
    ("sampler=lcm", "sampler: the LCMSampler samples vp schedules, but the teacher has a 'flow' schedule; use sampler=flow_tdd"),
    ("sampler=tcd", "use sampler=flow_tdd"),
    ("guidance=lcm_w", "guidance: SD3 students take no w-embedding"),
    ("export_kohya=true", "export_kohya: SD3Teacher students are exported as diffusers, fused"),
])
def test_sd3_unsupported_swaps_stop_with_a_clear_error(override, message, sd3_assets, tmp_path, cache_dir):
    from tdd_lab.utils.validation import ConfigError

    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        sd3_module(sd3_assets, cache_dir, tmp_path, override)


def test_sd3_smoke_config_is_small(tmp_path, cache_dir):
    """``+experiment=tdd_sd3 ... debug=smoke`` (the README's command) trains at 64 px with no loader workers."""
    cfg = compose_cfg(["experiment=tdd_sd3", "teacher.pretrained=/models/x", "data.root=/data/images", "debug=smoke"],
                      tmp_path, cache_dir)
    assert cfg.teacher.resolution == 64 and cfg.data.num_workers == 0 and cfg.metrics.num_samples == 8
    full = compose_cfg(["experiment=tdd_sd3", "teacher.pretrained=/models/x"], tmp_path, cache_dir)
    assert full.teacher.resolution == 1024 and full.teacher._target_ == "tdd_lab.teachers.SD3Teacher"


# ---- loading errors ----------------------------------------------------------------------------------------
def test_sd3_missing_or_incomplete_folder_fails_before_compute(sd3_assets, tmp_path, cache_dir):
    """Before any weights load: a missing folder (pre-flight), a model without weights and a missing text encoder
    (the folder check, naming what is missing)."""
    from tdd_lab.teachers.latent import check_pipeline_folder
    from tdd_lab.utils.validation import ConfigError
    from tdd_lab.validate import instantiate, preflight

    cfg = compose_cfg(smoke_overrides("sd3", {**sd3_assets, "sd3": tmp_path / "missing"}), tmp_path, cache_dir)
    with pytest.raises(ConfigError, match="does not exist"):
        preflight(cfg)
    no_weights = tmp_path / "no_weights"
    shutil.copytree(sd3_assets["sd3"], no_weights)
    for f in (no_weights / "transformer").glob("*.safetensors"):
        f.unlink()
    cfg = compose_cfg(smoke_overrides("sd3", {**sd3_assets, "sd3": no_weights}), tmp_path, cache_dir)
    with pytest.raises(FileNotFoundError, match=r"is incomplete: missing transformer/ weights"):
        instantiate(cfg.teacher, "teacher")
    no_t5 = tmp_path / "no_t5"
    shutil.copytree(sd3_assets["sd3"], no_t5, ignore=shutil.ignore_patterns("text_encoder_3"))
    with pytest.raises(FileNotFoundError, match=r"is incomplete: missing text_encoder_3/ \(listed in its model_index"):
        check_pipeline_folder(no_t5)
    check_pipeline_folder(sd3_assets["sd3"])  # the complete folder passes


@pytest.mark.slow  # a subprocess (~25 s on the shared CPU); the in-process checks above run in the fast suite
def test_sd3_incomplete_folder_exits_2_on_the_command_line(sd3_assets, tmp_path, cache_dir):
    """The command line: exit 2, the missing component named, no traceback."""
    no_t5 = tmp_path / "no_t5"
    shutil.copytree(sd3_assets["sd3"], no_t5)
    shutil.rmtree(no_t5 / "text_encoder_3")
    r = run_app(["-m", "tdd_lab.train", "+experiment=tdd_sd3", f"teacher.pretrained={no_t5}",
                 f"data.root={sd3_assets['images']}", "debug=smoke", "data.batch_size=4", "teacher.resolution=32",
                 f"hydra.run.dir={tmp_path / 'r'}"], tmp_path, cache_dir)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "is incomplete: missing text_encoder_3/" in r.stderr, r.stderr[-2000:]


def test_sd35_medium_layout_loads_and_takes_the_lora(tmp_path):
    """SD3.5-Medium's blocks (dual attention ``attn2``, RMS q/k norms) load through the same teacher; the recipe's LoRA
    targets reach ``attn2`` too, and the teacher's denoiser is the pipeline transformer's velocity."""
    from tdd_lab.students import LoRAStudent
    from tdd_lab.teachers import SD3Teacher
    from tdd_lab.testing.tiny import save_tiny_sd3

    path = save_tiny_sd3(tmp_path / "sd35m", dual_attention_layers=(0,), qk_norm="rms_norm")
    teacher = SD3Teacher(str(path), dtype="fp32", resolution=32, max_sequence_length=MAX_SEQ, eval_prompts=PROMPTS)
    x, t = torch.randn(2, 16, 16, 16), torch.tensor([900, 100])
    cond = teacher.conditioner.conditions(torch.tensor([0, 1]))
    with torch.no_grad():
        x0, eps = teacher.denoiser(x, t, cond)
        v = teacher.model(hidden_states=x, timestep=teacher.schedule.model_time(t), return_dict=False,
                          encoder_hidden_states=cond["encoder_hidden_states"],
                          pooled_projections=cond["pooled_projections"])[0]
    assert torch.allclose(eps - x0, v, atol=1e-4)  # flow: velocity = eps - x0
    net = LoRAStudent(rank=2, alpha=2, target_modules=list(LORA_TARGETS)).build(teacher.student_network(True))
    assert any("attn2.to_q.lora_A" in n for n, _ in net.named_parameters())
