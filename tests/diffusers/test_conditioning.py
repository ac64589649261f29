"""The conditions a diffusers teacher trains on are the ones its stock pipeline makes: SDXL's null condition and
micro-conditioning ``time_ids``, FLUX's latent normalisation, sigma shift and packing."""

from __future__ import annotations

import pytest
import torch

from .conftest import build_module, scheduler_config


def test_sdxl_null_condition_is_one_thing_and_keeps_micro_conditioning(assets, tmp_path, cache_dir):
    module, _ = build_module("sdxl", assets, cache_dir, tmp_path, "teacher.dtype=fp32")
    conditioner = module.teacher.conditioner
    assert conditioner.force_zeros  # SDXL base sets force_zeros_for_empty_prompt
    batch = {"prompt": ["a red square", "a blue square"], "pixel_values": torch.zeros(2, 3, 32, 32),
             "original_size": torch.tensor([[480, 640], [32, 40]]), "crop_top_left": torch.tensor([[0, 80], [0, 4]])}
    x0, cond = conditioner.prepare_batch(batch)
    assert x0.shape == (2, 4, 16, 16)
    assert cond["added_cond_kwargs"]["time_ids"].tolist() == [[480, 640, 0, 80, 32, 32], [32, 40, 0, 4, 32, 32]]
    null = conditioner.null_like(cond)
    assert null["encoder_hidden_states"].abs().max() == 0 and null["added_cond_kwargs"]["text_embeds"].abs().max() == 0
    assert torch.equal(null["added_cond_kwargs"]["time_ids"], cond["added_cond_kwargs"]["time_ids"])
    # a dropped caption (decoupled guidance) becomes exactly the teacher's unconditional branch
    from tdd_lab.guidance import DecoupledGuidance

    g = DecoupledGuidance(w=3.5, proportion_empty_prompts=1.0).prepare(cond, null)
    assert torch.equal(g.cond["encoder_hidden_states"], g.uncond["encoder_hidden_states"])
    assert torch.equal(g.cond["added_cond_kwargs"]["text_embeds"], g.uncond["added_cond_kwargs"]["text_embeds"])
    # evaluation prompts: the pipeline's own encode_prompt and time_ids at the training resolution
    pipe = module.teacher.pipe
    emb, _, pooled, _ = pipe.encode_prompt(["a red square"], device="cpu", do_classifier_free_guidance=False)
    enc = conditioner.encode(["a red square"])
    assert torch.equal(enc["encoder_hidden_states"], emb) and torch.equal(enc["added_cond_kwargs"]["text_embeds"], pooled)
    time_ids = pipe._get_add_time_ids((32, 32), (0, 0), (32, 32), torch.float32,
                                      text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)
    assert torch.equal(enc["added_cond_kwargs"]["time_ids"], time_ids)


def test_sdxl_public_dropped_caption_ablation_is_guided_where_the_consistent_one_is_not(assets, tmp_path, cache_dir):
    """guidance.dropped_caption=empty_prompt (the public SDXL script's defect, an ablation switch): dropped captions
    become the encoded "" while the teacher's uncond branch stays all zeros, so a dropped sample's teacher step is
    guided (x0_c != x0_u); the default makes it exactly unguided."""
    module, _ = build_module("sdxl", assets, cache_dir, tmp_path, "teacher.dtype=fp32",
                             "guidance.dropped_caption=empty_prompt", "guidance.proportion_empty_prompts=1.0")
    teacher, conditioner = module.teacher, module.teacher.conditioner
    batch = {"prompt": ["a red square", "a blue square"], "pixel_values": torch.zeros(2, 3, 32, 32)}
    x0, cond = conditioner.prepare_batch(batch)
    null = conditioner.null_like(cond)
    ablated = module.guidance.prepare(cond, null)
    emb, _, pooled, _ = teacher.pipe.encode_prompt([""], device="cpu", do_classifier_free_guidance=False)
    assert torch.equal(ablated.cond["encoder_hidden_states"], emb.expand(2, -1, -1))
    assert torch.equal(ablated.cond["added_cond_kwargs"]["text_embeds"], pooled.expand(2, -1))
    assert torch.equal(ablated.cond["added_cond_kwargs"]["time_ids"], cond["added_cond_kwargs"]["time_ids"])
    assert ablated.uncond["encoder_hidden_states"].abs().max() == 0 and emb.abs().max() > 0
    from tdd_lab.guidance import DecoupledGuidance

    consistent = DecoupledGuidance(w=3.5, proportion_empty_prompts=1.0).bind(teacher).prepare(cond, null)
    t = torch.full((2,), 499)
    x_t = teacher.schedule.add_noise(x0, torch.randn_like(x0), t)
    for g, guided in ((consistent, False), (ablated, True)):
        x0_c, _ = teacher.denoiser(x_t, t, g.cond)
        x0_u, _ = teacher.denoiser(x_t, t, g.uncond)
        assert (not torch.allclose(x0_c, x0_u)) == guided


def test_flux_latents_and_sigma_shift_match_the_pipeline(assets, tmp_path, cache_dir):
    import diffusers
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    from tdd_lab.nets.flux import pack_latents, unpack_latents
    from tdd_lab.samplers import FlowTDDSampler
    from tdd_lab.schedulers import FlowTDDScheduler

    module, _ = build_module("flux", assets, cache_dir, tmp_path, "teacher.dtype=fp32")
    teacher = module.teacher
    vae = teacher.conditioner.vae
    assert vae.config.shift_factor and vae.config.shift_factor != 0
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    z = vae.encode(x).latent_dist.mode()
    assert torch.allclose(teacher.conditioner.encode_images(x), (z - vae.config.shift_factor) * vae.config.scaling_factor)
    # mu of training == mu FluxPipeline computes for this resolution
    cfg = teacher.pipe.scheduler.config
    seq = (32 // 2 // 2) ** 2
    mu = calculate_shift(seq, cfg.base_image_seq_len, cfg.max_image_seq_len, cfg.base_shift, cfg.max_shift)
    assert teacher.schedule.mu == pytest.approx(mu)
    # packing round trip and FluxPipeline's own packing
    lat = torch.randn(2, 4, 16, 16)
    assert torch.equal(unpack_latents(pack_latents(lat), 16, 16), lat)
    assert torch.equal(pack_latents(lat), diffusers.FluxPipeline._pack_latents(lat, 2, 4, 16, 16))
    # the exported scheduler samples on the training sigmas
    sched = FlowTDDSampler(num_ddim_timesteps=50).make_scheduler(scheduler_config(teacher.denoiser))
    sched.set_timesteps(sigmas=[1.0, 0.75, 0.5, 0.25], mu=mu)
    grid_sig = teacher.schedule.sigmas[sched.grid_timesteps]
    assert torch.allclose(sched.timesteps.double() / 1000, grid_sig, atol=1e-6)
    assert isinstance(sched, FlowTDDScheduler)
