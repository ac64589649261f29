"""Sampling: tdd_lab's internal sampling (teacher conditioner + denoiser + tdd_lab sampler) equals the stock SDXL / FLUX
pipeline with the TDD scheduler; exported students sampled by tdd_lab equal the user's own stock-pipeline code;
evaluating the exported student reproduces the training-time metric; the FLUX TDD scheduler is exact."""

from __future__ import annotations

import json

import pytest
import torch

from .conftest import PROMPTS, build_module, pipeline_images, run_app, scheduler_config


@pytest.mark.parametrize("family", ["sdxl", "flux"])
def test_internal_sampling_equals_the_stock_pipeline(family, assets, tmp_path, cache_dir):
    """tdd_lab's evaluation path (teacher conditions + denoiser + tdd_lab sampler) == the stock pipeline with the
    TDD scheduler.

    So the conditioning used in training (prompt embeddings, pooled embeddings, SDXL time_ids, FLUX's
    embedded guidance, packing and timesteps) is the one the pipeline feeds the network at sampling.
    """
    from tdd_lab.evaluation import fixed_noise
    from tdd_lab.samplers import FlowTDDSampler, TDDSampler

    module, _ = build_module(family, assets, cache_dir, tmp_path, "teacher.dtype=fp32")
    teacher = module.teacher
    conditioner = teacher.conditioner
    prompts = [conditioner.label_prompts[0], conditioner.label_prompts[1]]
    assert prompts == teacher.eval_prompts[:2]
    noise = fixed_noise(2, teacher.sample_shape, seed=5)
    sampler = (FlowTDDSampler if family == "flux" else TDDSampler)(eta=0.0, num_ddim_timesteps=50)
    cond = conditioner.conditions(torch.tensor([0, 1]))
    ours = sampler.sample(teacher.denoiser, noise, cond, conditioner.null_like(cond), 4)
    pipe = teacher.pipe
    pipe.scheduler = sampler.make_scheduler(scheduler_config(teacher.denoiser))  # the scheduler the export writes
    pipe.set_progress_bar_config(disable=True)
    gens = [torch.Generator().manual_seed(5 + i) for i in range(2)]
    call = dict(prompt=prompts, num_inference_steps=4, generator=gens, height=32, width=32, output_type="latent")
    if family == "flux":
        pipe.scheduler.register_to_config(eta=0.0)
        theirs = pipe(**call, guidance_scale=3.5, max_sequence_length=16).images
        from tdd_lab.nets.flux import unpack_latents

        theirs = unpack_latents(theirs, 16, 16)
    else:
        theirs = pipe(**call, guidance_scale=1.0, eta=0.0).images
    # the pipelines' latents are x0 in the VAE's normalised space, like ours
    assert ours.shape == theirs.shape
    assert torch.allclose(ours, theirs.float(), atol=1e-4), (ours - theirs).abs().max()


@pytest.mark.parametrize("family", ["sdxl", "sd15", "flux"])
def test_generate_equals_the_users_stock_pipeline_code(family, trained, assets):
    """``tdd_lab.export.pipeline.generate`` on the loaded export == the model card's code, same prompts and seeds."""
    from tdd_lab.export import load_student
    from tdd_lab.export.pipeline import generate

    run = trained(family)
    student = load_student(run.dir)
    assert student.pipeline is not None and student.info["pipeline_class"] == type(student.pipeline).__name__
    ours = generate(student, PROMPTS, 4, 1.0, 0.3, seed=3)
    theirs = pipeline_images(assets, family, run.student, PROMPTS, 4, 3, 0.3)
    assert ours.shape == (2, 3, 32, 32)
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert not torch.allclose(ours[0], ours[1], atol=1e-3)  # per-image seeds and prompts


@pytest.mark.parametrize("family", ["sdxl", "sd15", "flux"])
def test_exported_student_reproduces_the_training_metric(family, trained):
    """The exported student, loaded back and evaluated at the run's own settings, reproduces training's
    ``eval/ode_rmse@K`` (export and reload lose nothing)."""
    from tdd_lab.export import load_student
    from tdd_lab.validate import instantiate, preflight

    run = trained(family)
    parts = preflight(run.cfg)
    teacher = instantiate(run.cfg.teacher, "teacher")
    student = load_student(run.dir)
    metrics, _ = parts.evaluator.evaluate_student(student.denoiser, teacher, parts.guidance, parts.sampler, "cpu")
    for k in (2, 4):
        key = f"eval/ode_rmse@{k}"
        assert metrics[key] == pytest.approx(run.metrics[key], rel=1e-3, abs=1e-5), key


@pytest.mark.parametrize("family", ["sdxl", "sd15", "flux"])
def test_sample_app_equals_the_users_stock_pipeline_code(family, trained, assets, tmp_path, cache_dir):
    """``python -m tdd_lab.sample run_dir=RUN prompt=[...]`` (stock pipeline inside) == the user's own stock-pipeline
    code, same prompts and seeds."""
    run = trained(family)
    out = tmp_path / "s.png"
    prompts = ",".join(f'"{p}"' for p in PROMPTS)
    r = run_app(["-m", "tdd_lab.sample", f"run_dir={run.dir}", f"prompt=[{prompts}]", "steps=4", "seed=3", "eta=0.3",
                 f"out={out}"], tmp_path, cache_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    ours = torch.load(out.with_suffix(".pt"))["images"]
    theirs = pipeline_images(assets, family, run.student, PROMPTS, 4, 3, 0.3)
    assert ours.shape == (2, 3, 32, 32)
    assert torch.allclose(ours, theirs, atol=1e-5)


@pytest.mark.parametrize("family", ["sdxl", "sd15", "flux"])
def test_evaluate_app_reproduces_the_training_metric(family, trained, tmp_path, cache_dir):
    """``python -m tdd_lab.evaluate run_dir=RUN steps=[2]`` on the run: the exported student, evaluated again at the
    run's own settings, reproduces the training-time metric; ode_rmse is measured with deterministic sampling,
    so its key records eta0 whatever the sampler's eta."""
    run = trained(family)
    r = run_app(["-m", "tdd_lab.evaluate", f"run_dir={run.dir}", "steps=[2]"], tmp_path, cache_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    saved = json.loads((run.dir / "metrics.json").read_text())
    assert saved["eval/ode_rmse@2/eta0/g1"] == pytest.approx(run.metrics["eval/ode_rmse@2"], rel=1e-3, abs=1e-5)


@pytest.mark.parametrize("eta", [0.0, 0.3])
def test_flow_tdd_scheduler_is_exact_on_a_point_mass(eta):
    """Exact velocity of a point mass c: v = (x - c)/sigma; every TDD step lands on the exact x_s, the end on c."""
    from tdd_lab.schedulers import FlowTDDScheduler

    c = torch.tensor([0.7, -1.2]).view(1, 2)
    sched = FlowTDDScheduler(use_dynamic_shifting=True, mu=0.8, tdd_train_step=250, eta=eta)
    sched.set_timesteps(6)
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    for t in sched.timesteps:
        sigma = t / 1000
        v = (x - (1 - sigma) * c) / sigma - c
        x = sched.step(v, t, x, generator=gen).prev_sample
    assert torch.allclose(x, c.expand_as(x), atol=1e-5)


def test_flow_tdd_scheduler_eta0_equals_diffusers_flow_euler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    from tdd_lab.schedulers import FlowTDDScheduler

    ours = FlowTDDScheduler(use_dynamic_shifting=True, mu=0.5, tdd_train_step=50, eta=0.0)
    ours.set_timesteps(4)
    ref = FlowMatchEulerDiscreteScheduler(shift=1.0)  # takes our (already shifted) sigmas as they are
    ref.set_timesteps(sigmas=ours.sigmas.numpy())
    assert torch.allclose(ref.sigmas[:-1], ours.sigmas, atol=1e-6) and ref.sigmas[-1] == 0
    x_a = x_b = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    w = torch.randn(4, 4)
    for t_a, t_b in zip(ours.timesteps, ref.timesteps):
        v_a = torch.einsum("ij,bjhw->bihw", w, x_a) * (t_a / 1000)
        v_b = torch.einsum("ij,bjhw->bihw", w, x_b) * (t_b / 1000)
        x_a = ours.step(v_a, t_a, x_a).prev_sample
        x_b = ref.step(v_b, t_b, x_b).prev_sample
    assert torch.allclose(x_a, x_b, atol=1e-5)
