"""Pretraining of the coloured-MNIST teachers: real diffusers pipelines of the SDXL and FLUX architectures.

The same component classes as SDXL base and FLUX.1, small enough to train on two CPU cores:

* ``sdxl``: ``AutoencoderKL`` (4 latent channels, 32 px -> 8x8), ``UNet2DConditionModel`` with SDXL's
  ``text_time`` addition embedding, ``CLIPTextModel`` + ``CLIPTextModelWithProjection`` (frozen random
  weights) with the real CLIP BPE tokenizer, SDXL base's ``EulerDiscreteScheduler`` config and
  ``force_zeros_for_empty_prompt``; epsilon loss with prompt dropout (the null condition is the
  all-zero embedding, as the pipeline's CFG uses it).
* ``flux``: ``AutoencoderKL`` with 16 latent channels and a measured ``shift_factor``,
  ``FluxTransformer2DModel``, CLIP + T5 encoders with local tokenizers, FLUX's
  ``FlowMatchEulerDiscreteScheduler`` config with dynamic shifting; rectified-flow (velocity) loss
  with prompt dropout to the encoded empty prompt. It is a plain CFG model (``guidance_embeds=False``),
  distilled with decoupled guidance: FLUX-dev's embedded guidance is itself a distillation of a CFG
  model, a second training stage this CPU budget does not have room for.

Both follow one recipe: train the VAE (L2 + KL), measure the latent statistics the way SD's
``scaling_factor`` (1 / std) and FLUX's ``shift_factor`` (mean) were measured, encode the training set
once, train the denoiser on the pipeline's own prompt encodings (:mod:`tdd_lab.conditioner`) with an EMA,
and ``save_pretrained`` the stock pipeline. ``pretrain.json`` holds the loss curves and timings,
``samples.png`` a 50-step CFG grid from the stock pipeline.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from tdd_lab.pretrain import ema_update
from tdd_lab.utils.threads import fixed_threads

log = logging.getLogger(__name__)

KINDS = ("sdxl", "flux")


# ---- components -------------------------------------------------------------------------------------
def build_vae(channels, latent_channels: int, flux: bool):
    from diffusers import AutoencoderKL

    n = len(channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=list(channels), layers_per_block=1,
        down_block_types=["DownEncoderBlock2D"] * n, up_block_types=["UpDecoderBlock2D"] * n,
        latent_channels=latent_channels, sample_size=32, norm_num_groups=min(16, channels[0]),
        # FLUX's VAE has no quant convs and a shift factor; both factors are measured after training
        use_quant_conv=not flux, use_post_quant_conv=not flux, scaling_factor=1.0, shift_factor=0.0 if flux else None,
    )


def build_clip_text_encoder(cls, text_dim: int, max_length: int, seed: int, projection_dim: int | None = None):
    """A 2-layer CLIP text encoder over the full CLIP vocabulary (frozen random weights fixed by ``seed``)."""
    from transformers import CLIPTextConfig

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=text_dim, intermediate_size=2 * text_dim,
                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=max_length,
                         bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
                         projection_dim=projection_dim or text_dim)
    return cls(cfg).eval().requires_grad_(False)


def t5_word_tokenizer():
    """A real ``T5TokenizerFast`` (Unigram) whose words cover the caption template; any lowercase word tokenizes."""
    from transformers import T5TokenizerFast

    from tdd_lab.data.digits import DIGIT_WORDS
    from tdd_lab.data.mnist_color import COLOR_NAMES

    words = ["a", "handwritten", "digit", *COLOR_NAMES, *DIGIT_WORDS]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(f"\u2581{w}", -float(i + 1)) for i, w in enumerate(words)]
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab += [(f"\u2581{c}", -20.0) for c in letters] + [(c, -25.0) for c in letters] + [("\u2581", -30.0)]
    return T5TokenizerFast(vocab=vocab, extra_ids=0)


def build_components(kind: str, c: dict, tok_dir: Path) -> dict:
    """Untrained components of the ``kind`` pipeline described by config ``c``."""
    from tdd_lab.utils.tokenizer import load_clip_tokenizer

    torch.manual_seed(c["seed"])
    vae = build_vae(c["vae_channels"], c["latent_channels"], kind == "flux")
    clip_tok = load_clip_tokenizer(tok_dir, model_max_length=c["max_length"])
    d = c["text_dim"]
    if kind == "sdxl":
        from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection

        torch.manual_seed(c["seed"] + 1)
        ch = tuple(c["denoiser_channels"])
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=c["latent_channels"], out_channels=c["latent_channels"], block_out_channels=ch,
            layers_per_block=c["layers_per_block"], down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
            transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=6 * 8 + d,
            cross_attention_dim=2 * d, norm_num_groups=min(32, ch[0]),
        )
        # SDXL base's scheduler config
        scheduler = EulerDiscreteScheduler(
            num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
            steps_offset=1, timestep_spacing="leading", prediction_type="epsilon", interpolation_type="linear",
            use_karras_sigmas=False)
        return {"vae": vae, "unet": unet, "scheduler": scheduler,
                "text_encoder": build_clip_text_encoder(CLIPTextModel, d, c["max_length"], c["seed"] + 2),
                "text_encoder_2": build_clip_text_encoder(CLIPTextModelWithProjection, d, c["max_length"],
                                                          c["seed"] + 3, projection_dim=d),
                "tokenizer": clip_tok, "tokenizer_2": clip_tok}
    if kind == "flux":
        from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
        from transformers import CLIPTextModel, T5Config, T5EncoderModel

        torch.manual_seed(c["seed"] + 1)
        heads, head_dim = 4, c["denoiser_channels"][0] // 4
        rope_t = 2 * (head_dim // 8)                          # rotary dims per axis (text/index, row, col): even
        rope_h = 2 * ((head_dim - rope_t) // 4)
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=4 * c["latent_channels"], num_layers=c["layers_per_block"],
            num_single_layers=c["layers_per_block"], attention_head_dim=head_dim, num_attention_heads=heads,
            joint_attention_dim=d, pooled_projection_dim=d, guidance_embeds=False,
            axes_dims_rope=(rope_t, rope_h, head_dim - rope_t - rope_h))
        # FLUX.1's scheduler config (dynamic shifting from the image token count)
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                                                    base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                                                    max_image_seq_len=4096)
        t5_tok = t5_word_tokenizer()
        torch.manual_seed(c["seed"] + 3)
        t5 = T5EncoderModel(T5Config(vocab_size=len(t5_tok), d_model=d, d_ff=2 * d, d_kv=d // 4, num_layers=2,
                                     num_heads=4, relative_attention_num_buckets=8, decoder_start_token_id=0))
        return {"vae": vae, "transformer": transformer, "scheduler": scheduler,
                "text_encoder": build_clip_text_encoder(CLIPTextModel, d, c["max_length"], c["seed"] + 2),
                "tokenizer": clip_tok, "text_encoder_2": t5.eval().requires_grad_(False), "tokenizer_2": t5_tok}
    raise ValueError(f"unknown pipeline kind {kind!r}; choose one of {KINDS}")


def pipeline_class(kind: str):
    import diffusers

    return {"sdxl": diffusers.StableDiffusionXLPipeline, "flux": diffusers.FluxPipeline}[kind]


# ---- training loops ---------------------------------------------------------------------------------
def train_vae(vae, images: torch.Tensor, c: dict, gen: torch.Generator) -> list[float]:
    """L2 reconstruction of the posterior sample + ``kl_weight`` x KL; returns the loss every 25 steps."""
    opt = torch.optim.AdamW(vae.parameters(), lr=c["lr"], weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=c["lr"], total_steps=max(c["steps"], 3),
                                                pct_start=max(0.05, 2.5 / max(c["steps"], 3)))
    vae.train().requires_grad_(True)
    curve, window = [], []
    for step in tqdm(range(c["steps"]), desc="pretraining VAE", mininterval=5.0):
        x = images[torch.randint(0, len(images), (c["batch"],), generator=gen)]
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        loss = torch.nn.functional.mse_loss(vae.decode(z).sample, x) + c["kl_weight"] * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        window.append(loss.item())
        if len(window) == 25 or step == c["steps"] - 1:
            curve.append(sum(window) / len(window))
            window = []
    vae.eval().requires_grad_(False)
    return curve


@torch.no_grad()
def latent_stats(vae, images: torch.Tensor, batch: int = 250) -> tuple[torch.Tensor, float, float]:
    """Posterior means (n, C, h, w) of ``images`` and their mean and std (SD measured 1/std on its data)."""
    z = torch.cat([vae.encode(images[i : i + batch]).latent_dist.mode() for i in range(0, len(images), batch)])
    return z, float(z.mean()), float(z.std())


def train_denoiser(kind: str, net, schedule, latents: torch.Tensor, conds, null, labels: torch.Tensor, c: dict,
                   gen: torch.Generator) -> tuple[torch.nn.Module, list[float]]:
    """The denoiser on normalised ``latents`` (n, C, h, w) of prompts ``labels`` (n,) (rows of the condition
    table ``conds``; ``null`` with probability ``cond_dropout``). Epsilon loss (sdxl) or velocity loss (flux),
    t uniform over the schedule's training grid. Returns the EMA network and the loss every 25 steps."""
    opt = torch.optim.AdamW(net.parameters(), lr=c["lr"], weight_decay=0.0)
    steps = max(c["steps"], 3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=c["lr"], total_steps=steps, pct_start=max(0.05, 2.5 / steps))
    ema = copy.deepcopy(net).requires_grad_(False)
    net.train().requires_grad_(True)
    n_null = labels.new_full((), -1)
    curve, window = [], []
    for step in tqdm(range(c["steps"]), desc=f"pretraining {kind} denoiser", mininterval=5.0):
        idx = torch.randint(0, len(latents), (c["batch"],), generator=gen)
        x0, y = latents[idx], labels[idx].clone()
        y[torch.rand(len(y), generator=gen) < c["cond_dropout"]] = n_null
        cond = table_rows(y, conds, null)
        t = torch.randint(0, schedule.num_train_timesteps, (len(y),), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        x_t = schedule.add_noise(x0, eps, t)
        out = net(x_t, schedule.model_time(t), cond)
        target = eps if kind == "sdxl" else eps - x0
        loss = torch.nn.functional.mse_loss(out, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        ema_update(ema, net, step, c["ema_decay"])
        window.append(loss.item())
        if len(window) == 25 or step == c["steps"] - 1:
            curve.append(sum(window) / len(window))
            window = []
    return ema, curve


def table_rows(y: torch.Tensor, conds, null):
    """Condition (B, ...) of labels ``y`` (B,): row ``y`` of the table ``conds`` (P, ...), ``null`` (1, ...) where y < 0."""
    from tdd_lab.conditioner import map_condition

    def pick(table, nul):
        keep = (y >= 0).view(-1, *([1] * (table.ndim - 1)))            # (B, 1, ...)
        return torch.where(keep, table[y.clamp_min(0)], nul)

    return map_condition(pick, conds, null)


# ---- the whole recipe -------------------------------------------------------------------------------
def pretrain_mnist_pipeline(out: Path, kind: str, config: dict) -> None:
    """Train the ``kind`` pipeline described by ``config`` and ``save_pretrained`` it into ``out``.

    Runs with ``config["threads"]`` torch threads (:mod:`tdd_lab.utils.threads`): the same config gives
    the same pipeline on any core count, and one thread keeps a busy 2-core machine from oversubscribing.
    """
    with fixed_threads(config["threads"]), torch.enable_grad():
        _pretrain(Path(out), kind, config)


def _pretrain(out: Path, kind: str, c: dict) -> None:
    from tdd_lab.data.mnist_color import dataset_tensors, label_prompts
    from tdd_lab.teachers.latent import FluxTeacher

    start = time.time()
    gen = torch.Generator().manual_seed(c["seed"])
    comps = build_components(kind, c, out / "_tokenizer_src")
    images, digits, colors = dataset_tensors("train", c["data_seed"])

    # 1. the VAE, then its latent statistics (SD: scaling_factor = 1 / std; FLUX: shift_factor = mean too)
    vae = comps["vae"]
    vae_curve = train_vae(vae, images, c["vae"], gen)
    raw, mean, std = latent_stats(vae, images)
    shift = mean if kind == "flux" else 0.0
    scaling = 1.0 / float((raw - shift).std())
    vae.register_to_config(scaling_factor=scaling, **({"shift_factor": shift} if kind == "flux" else {}))
    latents = (raw - shift) * scaling
    vae_seconds = time.time() - start

    # 2. the denoiser, on the pipeline's own prompt encodings
    pipe = pipeline_class(kind)(**comps)
    prompts = label_prompts()
    labels = colors * 10 + digits                                    # (n,) index into label_prompts()
    if kind == "sdxl":
        from tdd_lab.conditioner import SDXLConditioner
        from tdd_lab.nets.unet import UNetDenoiser
        from tdd_lab.schedules import VPSchedule

        conditioner = SDXLConditioner(pipe, prompts, 32)
        schedule = VPSchedule.from_diffusers_config(comps["scheduler"].config)
        net = UNetDenoiser(comps["unet"])
    else:
        from tdd_lab.conditioner import FluxConditioner
        from tdd_lab.nets.flux import FluxDenoiser

        conditioner = FluxConditioner(pipe, prompts, 32, max_sequence_length=c["max_length"])
        schedule = FluxTeacher.flow_schedule(comps["scheduler"].config, tuple(latents.shape[1:]))
        net = FluxDenoiser(comps["transformer"], None, schedule.num_train_timesteps)
    with torch.no_grad():
        conds = conditioner.encode(prompts)                          # (50, ...) condition table
        null = conditioner.null_condition()                          # (1, ...)
    ema, den_curve = train_denoiser(kind, net, schedule, latents, conds, null, labels, c["denoiser"], gen)
    model_attr = "unet" if kind == "sdxl" else "transformer"
    comps[model_attr] = getattr(ema, model_attr).eval()
    pipe = pipeline_class(kind)(**comps)
    if kind == "sdxl":
        pipe.register_to_config(force_zeros_for_empty_prompt=True)
    pipe.save_pretrained(out)
    import shutil

    shutil.rmtree(out / "_tokenizer_src", ignore_errors=True)
    seconds = time.time() - start
    (out / "pretrain.json").write_text(json.dumps({
        "kind": kind, "seconds": seconds, "vae_seconds": vae_seconds, "denoiser_seconds": seconds - vae_seconds,
        "vae_loss": vae_curve, "denoiser_loss": den_curve, "loss_every": 25, "scaling_factor": scaling,
        "shift_factor": shift, "latent_mean": mean, "latent_std": std, "threads": c["threads"]}, indent=1))
    log.info("pretrained the mnist_%s pipeline in %.0f s (VAE %.0f s)", kind, seconds, vae_seconds)
