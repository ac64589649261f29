"""Pretraining loops of the embedded teachers (kept out of the teacher classes, which only load).

* :func:`pretrain_digits_teacher`: the prompt-conditioned digits UNet (epsilon loss, prompt dropout so
  CFG works, EMA weights), written as diffusers folders (``unet/``, ``text_encoder/``, ``tokenizer/``).
* :func:`fit_gmm_student_init`: the gmm2d student's MLP regressed onto the exact epsilon (the analogue
  of copying a network teacher's weights).

Both are seeded and run once; :func:`tdd_lab.utils.cache.cached_dir` stores the result under a key of
their settings. ``python -m tdd_lab.pretrain_teacher teacher=...`` runs them ahead of training.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from tdd_lab.utils.threads import fixed_threads

log = logging.getLogger(__name__)


def progress_lines(total: int, what: str, every: float = 0.1):
    """A callback ``(step, loss)`` that logs ``what: step i/total, loss, elapsed`` about every ``every`` of the
    run: progress that log files and non-interactive terminals show (a tqdm bar only redraws one line)."""
    start, stride = time.time(), max(1, int(total * every))

    def report(step: int, loss: float | None = None) -> None:
        if (step + 1) % stride == 0 or step + 1 == total:
            extra = "" if loss is None else f", loss {loss:.4f}"
            log.info("%s: step %d/%d%s, %.0f s", what, step + 1, total, extra, time.time() - start)

    return report


@torch.no_grad()
def ema_update(ema: torch.nn.Module, net: torch.nn.Module, step: int, decay: float) -> None:
    """ema <- d ema + (1 - d) net with the warm-up d = min(decay, (1 + step) / (10 + step)) of the pretraining loops."""
    d = min(decay, (1 + step) / (10 + step))
    for pe, p in zip(ema.parameters(), net.parameters()):
        pe.lerp_(p, 1 - d)


def build_digits_unet(channels: tuple[int, int] = (32, 64), text_dim: int = 64):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=tuple(channels), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=text_dim, attention_head_dim=8, norm_num_groups=16,
    )


def build_text_encoder(text_dim: int = 64, max_length: int = 16):
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=text_dim, intermediate_size=2 * text_dim,
                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=max_length,
                         bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    return CLIPTextModel(cfg).eval().requires_grad_(False)


def pretrain_digits_teacher(out: Path, config: dict, alphas_cumprod: torch.Tensor) -> None:
    """Train the digits teacher described by ``config`` (``DigitsTeacher.pretrain_config``) into ``out``.

    ``alphas_cumprod`` (T,): the teacher's VP schedule. Writes ``tokenizer/``, ``text_encoder/``, ``unet/``
    (the EMA weights) and ``pretrain.json`` (final loss, seconds). Runs with a fixed thread count
    (:mod:`tdd_lab.utils.threads`) so the same config gives the same teacher on any core count.
    """
    with fixed_threads(), torch.enable_grad():  # may be reached from no_grad evaluation code
        _pretrain_digits_teacher(out, config, alphas_cumprod)


def _pretrain_digits_teacher(out: Path, config: dict, alphas_cumprod: torch.Tensor) -> None:
    from tdd_lab.conditioner import CLIPTextConditioner
    from tdd_lab.data.digits import digit_prompt, load_digit_tensors
    from tdd_lab.utils.tokenizer import load_clip_tokenizer

    c = config
    torch.manual_seed(c["seed"])
    tok = load_clip_tokenizer(out / "tokenizer_src", model_max_length=c["max_length"])
    tok.save_pretrained(out / "tokenizer")
    shutil.rmtree(out / "tokenizer_src")
    text_encoder = build_text_encoder(c["text_dim"], c["max_length"])
    text_encoder.save_pretrained(out / "text_encoder")
    images, labels = load_digit_tensors()
    conditioner = CLIPTextConditioner(tok, text_encoder, [digit_prompt(i) for i in range(10)], c["max_length"])
    prompt_emb = conditioner.table  # (11, L, D): the ten digit prompts, then the empty prompt
    unet = build_digits_unet(tuple(c["channels"]), c["text_dim"])
    ema = copy.deepcopy(unet).requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=c["lr"], weight_decay=0.0)
    steps = max(c["train_steps"], 3)  # train_steps = 0 gives random weights (benchmarks, tests)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=c["lr"], total_steps=steps, pct_start=max(0.05, 2.5 / steps))
    gen = torch.Generator().manual_seed(c["seed"])
    abar = alphas_cumprod
    start, losses = time.time(), []
    log.info("pretraining the digits teacher once (%d steps; minutes on a CPU), cached in %s for later runs",
             c["train_steps"], out.parent)
    report = progress_lines(c["train_steps"], "pretraining digits teacher")
    bar = tqdm(range(c["train_steps"]), desc="pretraining digits teacher", mininterval=2.0)
    for step in bar:
        idx = torch.randint(0, len(images), (c["batch_size"],), generator=gen)
        x0, y = images[idx], labels[idx].clone()
        y[torch.rand(len(y), generator=gen) < c["cond_dropout"]] = 10  # the empty prompt
        t = torch.randint(0, 1000, (len(y),), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        a = abar[t].sqrt().view(-1, 1, 1, 1)
        x_t = a * x0 + (1 - a**2).sqrt() * eps
        loss = torch.nn.functional.mse_loss(unet(x_t, t, encoder_hidden_states=prompt_emb[y]).sample, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        ema_update(ema, unet, step, c["ema_decay"])
        losses.append(loss.item())
        if step % 200 == 0:
            bar.set_postfix(loss=f"{sum(losses[-200:]) / len(losses[-200:]):.4f}")
        report(step, sum(losses[-200:]) / len(losses[-200:]))
    ema.save_pretrained(out / "unet")
    (out / "pretrain.json").write_text(json.dumps(
        {"final_loss": sum(losses[-200:]) / max(1, len(losses[-200:])), "seconds": time.time() - start,
         "steps": c["train_steps"]}))


def fit_gmm_student_init(out: Path, teacher, net_config: dict, steps: int, seed: int) -> None:
    """Regress an :class:`~tdd_lab.nets.mlp.MLPDenoiser` onto the exact (conditional and null) epsilon of the
    gmm2d ``teacher`` (10% null labels); writes ``mlp.safetensors``. Fixed thread count, as above."""
    with fixed_threads(), torch.enable_grad():
        _fit_gmm_student_init(out, teacher, net_config, steps, seed)


def _fit_gmm_student_init(out: Path, teacher, net_config: dict, steps: int, seed: int) -> None:
    from safetensors.torch import save_file

    from tdd_lab.nets.mlp import MLPDenoiser
    from tdd_lab.teachers.gmm import NULL_LABEL

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = MLPDenoiser(**net_config)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    schedule, mixture = teacher.schedule, teacher.mixture
    log.info("fitting the gmm2d student's initial MLP once (%d steps), cached in %s for later runs", steps, out.parent)
    report = progress_lines(steps, "fitting gmm2d student init")
    for step in tqdm(range(steps), desc="fitting gmm2d student init", mininterval=2.0):
        x0, labels = mixture.sample(512, generator=gen)
        labels = torch.where(torch.rand(512, generator=gen) < 0.1, NULL_LABEL, labels)
        t = torch.randint(0, schedule.num_train_timesteps, (512,), generator=gen)
        x_t = schedule.add_noise(x0.float(), torch.randn(512, mixture.dim, generator=gen), t)
        with torch.no_grad():
            _, eps = teacher.denoiser(x_t, t, labels)
        loss = torch.nn.functional.mse_loss(net(x_t, schedule.model_time(t), labels), eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        report(step, loss.item())
    save_file(net.state_dict(), str(out / "mlp.safetensors"))
