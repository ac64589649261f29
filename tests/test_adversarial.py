"""TDD-adv (``adversarial=pcm``): hinge losses and the forward jump by hand, the discriminator on the teacher's encoder
features (gradients reach only what they should), manual optimization with exact resume, exports without the
discriminator, and ``adversarial=none`` unchanged."""

import math

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import open_dict
from pytorch_lightning.loggers import CSVLogger
from safetensors.torch import load_file

from tdd_lab.adversarial import (
    NoAdversarial,
    PCMDiscriminator,
    forward_jump,
    hinge_d_loss,
    hinge_g_loss,
    sample_t_gan,
)
from tdd_lab.schedules import FlowMatchSchedule, VPSchedule
from tdd_lab.train import Preempted, build_module, export, fit, make_trainer
from tdd_lab.validate import ConfigError, preflight

from .conftest import compose_cfg

# a random-weight digits teacher (no pretraining), smoke-sized runs
TINY = ["debug=smoke", "teacher=digits", "data=digits", "metrics=digits", "teacher.train_steps=0",
        "data.batch_size=8", "metrics.metrics.classifier_epochs=1"]


# ---- pure functions --------------------------------------------------------------------------------------------
def test_hinge_losses_match_hand_computation():
    real = [torch.tensor([[[[2.0, 0.5]]]]), torch.tensor([[[[-1.0]]]])]    # two heads, (1, 1, 1, w)
    fake = [torch.tensor([[[[-3.0, 0.0]]]]), torch.tensor([[[[0.5]]]])]
    # head 1: mean relu(1 - [2, .5]) = (0 + .5)/2 = .25; mean relu(1 + [-3, 0]) = (0 + 1)/2 = .5  -> .75
    # head 2: relu(1 - (-1)) = 2; relu(1 + .5) = 1.5                                             -> 3.5
    assert hinge_d_loss(real, fake).item() == pytest.approx((0.75 + 3.5) / 2)
    # G: head 1 mean relu(1 - [-3, 0]) = (4 + 1)/2 = 2.5; head 2 relu(1 - .5) = .5
    assert hinge_g_loss(fake).item() == pytest.approx((2.5 + 0.5) / 2)
    # a confident, correct discriminator has zero loss; the generator then pays the full margin
    assert hinge_d_loss([torch.full((2, 1, 3, 3), 1.5)], [torch.full((2, 1, 3, 3), -1.5)]).item() == 0.0
    assert hinge_g_loss([torch.full((2, 1, 3, 3), -1.5)]).item() == pytest.approx(2.5)
    with pytest.raises(ValueError, match="one logit map per head"):
        hinge_d_loss(real, fake[:1])


def test_forward_jump_matches_closed_form_vp_and_flow():
    g = torch.Generator().manual_seed(0)
    x_s, z = torch.randn(4, 1, 8, 8, generator=g), torch.randn(4, 1, 8, 8, generator=g)
    s, t = torch.tensor([0, 100, 400, 999]), torch.tensor([10, 300, 400, 999])
    vp = VPSchedule(1000, 0.0001, 0.02, "linear")
    abar = vp.alphas_cumprod.double()
    ratio = (abar[t] / abar[s]).view(-1, 1, 1, 1)
    expected = (ratio.sqrt() * x_s.double() + (1 - ratio).sqrt() * z.double()).float()
    torch.testing.assert_close(forward_jump(x_s, s, t, vp, z), expected, rtol=1e-6, atol=1e-6)
    assert torch.equal(forward_jump(x_s, s, s, vp, z), x_s)  # no jump: the sample itself
    flow = FlowMatchSchedule(1000, shift=3.0)
    assert torch.equal(forward_jump(x_s, s, s, flow, z), x_s)  # also at t = s = T - 1, where a_s = 0
    t = torch.tensor([10, 300, 400, 999])  # the last level: pure noise, x = z
    s = torch.tensor([0, 100, 400, 500])
    sig = flow.sigmas
    r = ((1 - sig[t]) / (1 - sig[s])).view(-1, 1, 1, 1)
    std = (sig[t].view(-1, 1, 1, 1) ** 2 - (r * sig[s].view(-1, 1, 1, 1)) ** 2).sqrt()
    torch.testing.assert_close(forward_jump(x_s, s, t, flow, z), (r * x_s.double() + std * z.double()).float(),
                               rtol=1e-6, atol=1e-6)
    assert torch.allclose(forward_jump(x_s, s, t, flow, z)[3], z[3])


@pytest.mark.parametrize("schedule", [VPSchedule(1000, 0.0001, 0.02, "linear"), FlowMatchSchedule(1000, shift=3.0)])
def test_forward_jump_reaches_the_marginal_at_t_gan(schedule):
    """x0 = c (a constant): x_s = a_s c + s_s eps, jumped to t, is distributed as a_t c + s_t eps' (mean, variance)."""
    g = torch.Generator().manual_seed(1)
    n, c = 200_000, 0.7
    s, t = torch.full((n,), 200), torch.full((n,), 650)
    x_s = schedule.add_noise(torch.full((n, 1), c), torch.randn(n, 1, generator=g), s)
    x_t = forward_jump(x_s, s, t, schedule, torch.randn(n, 1, generator=g))
    a_t, s_t = float(schedule.alphas[650]), float(schedule.sigmas[650])
    tol = 4 / math.sqrt(n)  # ~4 standard errors
    assert x_t.mean().item() == pytest.approx(a_t * c, abs=4 * s_t / math.sqrt(n))
    assert x_t.var().item() == pytest.approx(s_t**2, abs=tol * s_t**2 * math.sqrt(2))
    # x0 = 0 on a VP schedule: variance 1 - abar_t
    if isinstance(schedule, VPSchedule):
        assert s_t**2 == pytest.approx(1 - float(schedule.alphas_cumprod[650]), rel=1e-6)


def test_t_gan_is_uniform_in_s_to_s_plus_span_and_clipped():
    s = torch.tensor([0, 100, 900, 999])
    u = torch.tensor([0.0, 0.999, 0.5, 0.5])
    assert sample_t_gan(s, 250, 1000, u).tolist() == [0, 349, 999, 999]
    draws = sample_t_gan(torch.full((10_000,), 100), 250, 1000, torch.rand(10_000, generator=torch.Generator()))
    assert draws.min() >= 100 and draws.max() <= 349 and draws.float().mean().item() == pytest.approx(224.5, abs=3)


def test_schedules_alternate_and_simultaneous():
    alt, sim = PCMDiscriminator(schedule="alternate"), PCMDiscriminator(schedule="simultaneous")
    seen = []
    for _ in range(4):
        seen.append(alt.updates())
        alt.advance()
    assert seen == [(True, False), (False, True), (True, False), (False, True)]  # even: D only, odd: student only
    assert sim.updates() == (True, True)
    restored = PCMDiscriminator()
    restored.set_extra_state(alt.get_extra_state())
    assert restored.updates() == alt.updates() and restored.batches == 4
    with pytest.raises(ValueError, match="adversarial.schedule"):
        PCMDiscriminator(schedule="both")


# ---- the discriminator on a real teacher network -------------------------------------------------------------
def build(tmp_path, cache_dir, *overrides):
    cfg = compose_cfg([*TINY, *overrides], tmp_path, cache_dir)
    parts = preflight(cfg)
    pl.seed_everything(int(cfg.seed))
    module, datamodule = build_module(cfg, parts)
    return cfg, parts, module, datamodule


def first_batch(datamodule):
    datamodule.setup("fit")
    return next(iter(datamodule.train_dataloader()))


@pytest.fixture(scope="module")
def pcm_module(tmp_path_factory, cache_dir):
    return build(tmp_path_factory.mktemp("pcm"), cache_dir, "adversarial=pcm")


def test_discriminator_reads_encoder_features_only(pcm_module):
    _, _, module, dm = pcm_module
    unet = module.teacher.unet
    _, _, _, cond, _ = module.distillation_terms(first_batch(dm))
    cond = cond[:3]                                                       # (3, L, D) text embeddings
    x = torch.randn(3, *module.teacher.sample_shape)
    calls = []
    handles = [b.register_forward_hook(lambda *a: calls.append(1)) for b in unet.up_blocks]
    feats = module.adversarial.features(x, torch.tensor([10, 500, 900]), cond)
    for h in handles:
        h.remove()
    assert not calls, "the up blocks ran"
    channels = list(unet.config.block_out_channels)
    assert [f.shape[1] for f in feats] == channels + [channels[-1]]  # down blocks, then the mid block
    logits = module.adversarial.logits(x, torch.tensor([10, 500, 900]), cond)
    assert len(logits) == len(module.adversarial.heads) and all(lg.shape[:2] == (3, 1) for lg in logits)


def test_gradients_reach_only_the_heads_or_only_the_student(pcm_module):
    _, _, module, dm = pcm_module
    adv = module.adversarial
    teacher_params = list(module.teacher.parameters())
    assert teacher_params and not any(p.requires_grad for p in teacher_params)
    module.zero_grad(set_to_none=True)
    pred, target, s, cond, _ = module.distillation_terms(first_batch(dm))
    # discriminator step: only the heads receive gradients
    adv.discriminator_loss(target, pred, s, cond).backward()
    assert all(p.grad is not None for p in adv.heads.parameters())
    assert any(p.grad.abs().sum() > 0 for p in adv.heads.parameters())
    assert all(p.grad is None for p in teacher_params)
    assert all(p.grad is None for p in module.student.parameters())
    # generator step: the student receives gradients through the frozen teacher, the heads none
    module.zero_grad(set_to_none=True)
    pred, target, s, cond, _ = module.distillation_terms(first_batch(dm))
    adv.generator_loss(pred, s, cond).backward()
    assert all(p.grad is None for p in adv.heads.parameters())
    assert all(p.grad is None for p in teacher_params)
    assert sum(p.grad.abs().sum() for p in module.student.parameters() if p.grad is not None) > 0
    assert all(p.requires_grad for p in adv.heads.parameters())  # unfrozen again for the next D step
    module.zero_grad(set_to_none=True)


def test_networks_without_encoder_features_are_refused_clearly(tmp_path, cache_dir):
    with pytest.raises(ConfigError, match="adversarial=pcm reads a diffusers UNet or FLUX/SD3 transformer"):
        cfg = compose_cfg(["experiment=tdd_gmm2d", "debug=smoke", "teacher.init_steps=20", "adversarial=pcm"], tmp_path,
                          cache_dir)
        build_module(cfg, preflight(cfg))


def test_bad_settings_fail_in_preflight(tmp_path, cache_dir):
    with pytest.raises(ConfigError, match="adversarial: adversarial.schedule"):
        preflight(compose_cfg([*TINY, "adversarial=pcm", "adversarial.schedule=both"], tmp_path, cache_dir))
    with pytest.raises(ConfigError, match="accumulate_grad_batches"):
        preflight(compose_cfg([*TINY, "adversarial=pcm", "trainer.accumulate_grad_batches=2"], tmp_path, cache_dir))


# ---- adversarial=none is the plain recipe ---------------------------------------------------------------------
def test_none_keeps_automatic_optimization_and_the_same_loss(tmp_path, cache_dir):
    cfg, _, module, dm = build(tmp_path, cache_dir)
    assert isinstance(module.adversarial, NoAdversarial) and module.automatic_optimization
    assert not any(k.startswith("adversarial") for k in module.state_dict())
    assert isinstance(module.configure_optimizers(), dict)  # one optimizer and its scheduler, as before
    batch = first_batch(dm)
    torch.manual_seed(3)
    loss, _ = module.distillation_loss(batch)
    # the training step as written before the adversarial term, inline
    torch.manual_seed(3)
    conditioner = module.teacher.conditioner
    x0, c = conditioner.prepare_batch(batch)
    g = module.guidance.prepare(c, conditioner.null_like(c))
    t, t_prev = module.solver.sample_start(x0.shape[0], device=x0.device)
    s = module.strategy.sample(t_prev, module.solver.grid)
    x_t = module.schedule.add_noise(x0, torch.randn_like(x0), t)
    pred = module.strategy.consistency(x_t, t, s, *module.student(x_t, t, g.cond, g.w_embedding), module.schedule)
    with torch.no_grad():
        x0_w, eps_w = g.teacher_guider(module.teacher.denoiser, x_t, t, g.cond, g.uncond)
        x_prev = module.solver.step(x_t, t, t_prev, x0_w, eps_w)
        target = module.strategy.consistency(x_prev, t_prev, s, *module.target(x_prev, t_prev, g.cond, g.w_embedding),
                                             module.schedule)
    assert torch.equal(loss, module.loss_fn(pred, target))


# ---- manual optimization: resume, checkpoints, exports --------------------------------------------------------
def run(out, cache_dir, max_steps, *extra, resume=None, before_fit=None):
    cfg, parts, module, dm = build(out, cache_dir, "adversarial=pcm", "callbacks=default",
                                   "trainer.enable_checkpointing=true", "callbacks.checkpoint.every_n_train_steps=3",
                                   f"trainer.max_steps={max_steps}", *extra,
                                   *([f"resume={resume}"] if resume else []))
    if before_fit is not None:
        before_fit(module)
    trainer = fit(cfg, module, dm, [CSVLogger(out)], out)  # a logger: the default callbacks' lr monitor needs one
    return cfg, parts, module, trainer


@pytest.mark.parametrize("schedule", ["alternate", "simultaneous"])
def test_exact_resume_with_adversarial_pcm(tmp_path, cache_dir, schedule):
    """Stopped after 3 student steps and resumed to 6, the run ends bit-identical to an uninterrupted 6-step run:
    student, heads, both optimizers, the lr schedule and the alternation position are in the checkpoint."""
    sched = f"adversarial.schedule={schedule}"
    _, _, a, ta = run(tmp_path / "a", cache_dir, 6, sched)
    _, _, _, tb = run(tmp_path / "b", cache_dir, 3, sched)
    ckpt_path = tmp_path / "b" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    assert ckpt["global_step"] == 3 and len(ckpt["optimizer_states"]) == 2
    assert any(k.startswith("adversarial.heads.") for k in ckpt["state_dict"])
    batches_per_step = 2 if schedule == "alternate" else 1
    assert ckpt["state_dict"]["adversarial._extra_state"] == {"batches": 3 * batches_per_step}
    _, _, c, tc = run(tmp_path / "c", cache_dir, 6, sched, resume=ckpt_path)
    assert ta.global_step == tc.global_step == 6  # max_steps counts student steps
    assert c.adversarial.batches == a.adversarial.batches == 6 * batches_per_step
    sa, sc = a.state_dict(), c.state_dict()
    assert set(sa) == set(sc)
    for k in sa:
        if torch.is_tensor(sa[k]):
            assert torch.equal(sa[k], sc[k]), k
    for oa, oc in zip(ta.optimizers, tc.optimizers):
        for pa, pc in zip(oa.state.values(), oc.state.values()):
            assert all(torch.equal(pa[n], pc[n]) for n in pa)
    assert tb.lr_scheduler_configs[0].scheduler.last_epoch == 3  # stepped once per student step


def test_resume_after_a_discriminator_only_batch_continues_at_the_next_unseen_batch(tmp_path, cache_dir):
    """SIGTERM right after a discriminator-only batch of the alternation (5 batches consumed, 2 student steps): the
    checkpoint holds global_step 2 and batches 5, and the resumed run reads batch 5 next (not batch 4 again, which
    ``global_step * 2`` would give), so it ends bit-identical to the uninterrupted run."""

    def stop_after_fifth_batch(module):
        hook = module.on_train_batch_end

        def on_train_batch_end(*args, **kwargs):
            hook(*args, **kwargs)
            if module.adversarial.batches == 5:  # batch 4 was the third discriminator-only batch
                module.trainer._signal_connector.received_sigterm = True  # what the SIGTERM handler sets

        module.on_train_batch_end = on_train_batch_end

    _, _, a, _ = run(tmp_path / "a", cache_dir, 4)
    with pytest.raises(Preempted, match="stopped by SIGTERM at step 2"):
        run(tmp_path / "b", cache_dir, 4, before_fit=stop_after_fifth_batch)
    ckpt_path = tmp_path / "b" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    assert ckpt["global_step"] == 2 and ckpt["state_dict"]["adversarial._extra_state"] == {"batches": 5}
    seen = []

    def record_batches(module):
        hook = module.on_train_batch_start

        def on_train_batch_start(batch, *args, **kwargs):
            seen.append(batch["x0"].clone())
            return hook(batch, *args, **kwargs)

        module.on_train_batch_start = on_train_batch_start

    _, _, c, tc = run(tmp_path / "c", cache_dir, 4, resume=ckpt_path, before_fit=record_batches)
    assert tc.global_step == 4 and c.adversarial.batches == a.adversarial.batches == 8
    assert len(seen) == 3  # batches 5 (student), 6 (discriminator), 7 (student)
    sa, sc = a.state_dict(), c.state_dict()
    for k in sa:
        if torch.is_tensor(sa[k]):
            assert torch.equal(sa[k], sc[k]), k


def test_manual_optimization_clips_both_optimizers_with_the_trainers_setting(tmp_path, cache_dir):
    """Lightning refuses a Trainer gradient_clip_val under manual optimization: the module clips with the configured
    value itself, the student and the heads, once per step of each."""
    calls = []

    def spy(module):
        clip = module.clip_gradients
        module.clip_gradients = lambda opt, val, algo: (calls.append((opt, val, algo)), clip(opt, val, algo))

    _, _, module, trainer = run(tmp_path, cache_dir, 2, "adversarial.schedule=simultaneous",
                                "trainer.gradient_clip_val=0.5", "+trainer.gradient_clip_algorithm=value",
                                before_fit=spy)
    assert trainer.gradient_clip_val is None
    student_opt, heads_opt = (o for o in trainer.optimizers)
    assert [c[0] for c in calls] == [student_opt, heads_opt] * 2
    assert all(c[1:] == (0.5, "value") for c in calls)


def test_export_holds_no_discriminator_weights(tmp_path, cache_dir):
    cfg, parts, module, _ = run(tmp_path, cache_dir, 2, "adversarial.schedule=simultaneous")
    out = export(cfg, module, parts, tmp_path)
    files = list(out.rglob("*.safetensors"))
    assert files
    keys = [k for f in files for k in load_file(f)]
    assert not any("heads" in k or "adversarial" in k for k in keys)
    unet_keys = set(load_file(out / "unet" / "diffusion_pytorch_model.safetensors"))
    assert unet_keys == set(module.student.net.unet.state_dict())
    # the checkpoint watcher rebuilds the run's module, discriminator included, and loads the checkpoint strictly
    from tdd_lab.watch import build_student_module

    rebuilt, _ = build_student_module(cfg)
    rebuilt.load_state_dict(torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"])
    assert torch.equal(rebuilt.adversarial.heads[0].out.weight, module.adversarial.heads[0].out.weight)


# ---- flow transformers: hidden states of config-chosen blocks ---------------------------------------------------
@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_transformer_teachers_read_the_chosen_blocks(family, tmp_path, cache_dir):
    """On a tiny random FLUX / SD3 pipeline: heads on the image tokens of the chosen blocks, the pass stops after the
    last of them, and the generator's gradient reaches the LoRA student through the frozen transformer."""
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    from tdd_lab.testing import tiny

    from .diffusers.conftest import smoke_overrides

    path = getattr(tiny, f"save_tiny_{family}")(tmp_path / family)
    images = tiny.write_image_folder(tmp_path / "images", n=4)
    extra = ["teacher.dtype=fp32", "teacher.max_sequence_length=16", "adversarial=pcm"]
    cfg = compose_cfg(smoke_overrides(family, {family: path, "images": images}, *extra), tmp_path, cache_dir)
    model = None
    for idx in ([0], None):
        with open_dict(cfg):
            cfg.adversarial.transformer_blocks = idx
        module, dm = build_module(cfg, preflight(cfg))
        model = next(m for m in module.teacher.denoiser.net.modules()
                     if isinstance(m, (FluxTransformer2DModel, SD3Transformer2DModel)))
        n_dual = len(model.transformer_blocks)
        expected = [0] if idx is not None else sorted({0, n_dual // 2, n_dual - 1})
        assert len(module.adversarial.heads) == len(expected)
    width = model.config.num_attention_heads * model.config.attention_head_dim
    later = list(model.single_transformer_blocks) if isinstance(model, FluxTransformer2DModel) else []
    later += list(model.transformer_blocks)[max(expected) + 1:]
    calls = []
    handles = [b.register_forward_hook(lambda *a: calls.append(1)) for b in later]
    pred, target, s, cond, _ = module.distillation_terms(first_batch(dm))
    n_before = len(calls)
    feats = module.adversarial.features(pred.detach(), s, cond)
    for h in handles:
        h.remove()
    assert len(calls) == n_before, "blocks after the last tapped one ran"
    assert all(f.shape[:2] == (pred.shape[0], width) and f.shape[-1] == 1 for f in feats)
    module.zero_grad(set_to_none=True)
    module.adversarial.generator_loss(pred, s, cond).backward()
    assert all(p.grad is None for p in module.adversarial.heads.parameters())
    lora = [p for n, p in module.student.named_parameters() if "lora" in n]
    assert lora and sum(p.grad.abs().sum() for p in lora if p.grad is not None) > 0
    with open_dict(cfg):
        cfg.adversarial.transformer_blocks = [99]
    with pytest.raises(ConfigError, match=r"adversarial.transformer_blocks: \[99\]"):
        build_module(cfg, preflight(cfg))


@pytest.mark.parametrize("adversarial", ["pcm", "none"])
def test_ddp_finds_unused_parameters_under_the_adversarial_schedule(tmp_path, cache_dir, adversarial):
    """Each backward of adversarial=pcm leaves one side unused (the heads on a student update, the student on a
    discriminator-only batch): under plain DDP the reducer fails at the second step ("parameters that were not used in
    producing the loss"), so trainer=ddp switches to find_unused_parameters; without the term DDP stays as configured."""
    from pytorch_lightning.strategies import DDPStrategy

    cfg, _, module, _ = build(tmp_path, cache_dir, f"adversarial={adversarial}", "trainer=ddp",
                              "trainer.accelerator=cpu", "trainer.devices=2")
    trainer = make_trainer(cfg, module, [], [])
    assert isinstance(trainer.strategy, DDPStrategy)
    assert trainer.strategy._ddp_kwargs.get("find_unused_parameters", False) is (adversarial == "pcm")
