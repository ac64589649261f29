"""Tiny random-weight diffusers pipelines built from configs (no downloads).

They have the real architectures (UNet2DConditionModel with SDXL's text-time conditioning,
AutoencoderKL, two CLIP text encoders, the real CLIP BPE tokenizer; FLUX's and SD3's transformers with
shift_factor VAEs and CLIP + T5 encoders), saved with ``save_pretrained`` so tests load them through the
code path that loads real checkpoints.
``vocab_size`` gives the SDXL pipeline a small tokenizer (the first tokens of CLIP's BPE vocabulary)
with text encoders of the same vocabulary: a valid pipeline, as a research tokenizer would make one.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tdd_lab.utils.tokenizer import (
    CLIP_VOCAB_SIZE,
    check_tokenizer,
    load_clip_tokenizer,
    write_clip_tokenizer_files,
)

NUM_BYTE_TOKENS = 512  # CLIP's byte symbols and their end-of-word forms come before the merges


def _text_encoder(cls, seed: int, hidden: int = 32, projection_dim: int = 32, vocab_size: int = CLIP_VOCAB_SIZE):
    from transformers import CLIPTextConfig

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(
        bos_token_id=0, eos_token_id=2, pad_token_id=1, hidden_size=hidden, intermediate_size=37,
        layer_norm_eps=1e-5, num_attention_heads=4, num_hidden_layers=2, vocab_size=vocab_size,
        hidden_act="gelu", projection_dim=projection_dim, max_position_embeddings=77,
    )
    return cls(cfg).eval()


def small_clip_tokenizer(directory: str | Path, vocab_size: int, model_max_length: int = 77):
    """A ``CLIPTokenizer`` of ``vocab_size`` tokens: CLIP's byte symbols, its first merges, the two special tokens.

    The vocabulary is a prefix of CLIP's (merges in their order, so every merge's parts are in it),
    written as ``vocab.json``/``merges.txt`` into ``directory``.
    """
    import json

    from transformers import CLIPTokenizer

    n_merges = vocab_size - NUM_BYTE_TOKENS - 2
    if n_merges < 0:
        raise ValueError(f"vocab_size={vocab_size}: a CLIP tokenizer needs at least {NUM_BYTE_TOKENS + 2} tokens")
    directory = write_clip_tokenizer_files(directory)
    full = json.loads((directory / "vocab.json").read_text(encoding="utf-8"))
    by_id = sorted(full, key=full.get)
    tokens = by_id[: NUM_BYTE_TOKENS + n_merges] + ["<|startoftext|>", "<|endoftext|>"]
    (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    merges = (directory / "merges.txt").read_text(encoding="utf-8").split("\n")
    (directory / "merges.txt").write_text("\n".join(merges[: 1 + n_merges]) + "\n", encoding="utf-8")
    tok = CLIPTokenizer(vocab=str(directory / "vocab.json"), merges=str(directory / "merges.txt"),
                        model_max_length=model_max_length)
    return check_tokenizer(tok, str(directory), vocab_size)


def tiny_sdxl_components(seed: int = 0, tokenizer_dir: str | Path | None = None, vocab_size: int | None = None) -> dict:
    """Components of a tiny SDXL pipeline (UNet cross-attention dim 64 = 32 + 32 text features).

    ``vocab_size``: a small CLIP tokenizer of that many tokens and text encoders with as many token
    embeddings (None: the real 49,408-token CLIP vocabulary).
    """
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,  # 6 * 8 time ids + 32 pooled text features
        cross_attention_dim=64, norm_num_groups=8,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        block_out_channels=[16, 32], in_channels=3, out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"], latent_channels=4, sample_size=32,
        norm_num_groups=8,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
        timestep_spacing="leading", prediction_type="epsilon", interpolation_type="linear",
    )
    import tempfile

    tok_dir = Path(tokenizer_dir) if tokenizer_dir is not None else Path(tempfile.mkdtemp(prefix="clip_tok_"))
    if vocab_size is None:
        tokenizer, vocab_size = load_clip_tokenizer(tok_dir), CLIP_VOCAB_SIZE
    else:
        tokenizer = small_clip_tokenizer(tok_dir, vocab_size)
    return {
        "unet": unet.eval(),
        "vae": vae.eval(),
        "scheduler": scheduler,
        "text_encoder": _text_encoder(CLIPTextModel, seed + 2, vocab_size=vocab_size),
        "tokenizer": tokenizer,
        "text_encoder_2": _text_encoder(CLIPTextModelWithProjection, seed + 3, vocab_size=vocab_size),
        "tokenizer_2": tokenizer,
    }


def save_tiny_sdxl(directory: str | Path, seed: int = 0, vocab_size: int | None = None) -> Path:
    """Build the tiny SDXL pipeline and ``save_pretrained`` it into ``directory``; return the path."""
    from diffusers import StableDiffusionXLPipeline

    directory = Path(directory)
    pipe = StableDiffusionXLPipeline(**tiny_sdxl_components(seed, directory / "_tokenizer_src", vocab_size))
    pipe.save_pretrained(directory)
    return directory


def tiny_sd15_components(seed: int = 0, tokenizer_dir: str | Path | None = None,
                         prediction_type: str = "epsilon") -> dict:
    """Components of a tiny SD1.5-architecture pipeline (one CLIP text encoder, cross-attention dim 32)."""
    import tempfile

    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        block_out_channels=[16, 32], in_channels=3, out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"], latent_channels=4, sample_size=32, norm_num_groups=8,
    )
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type)
    tok_dir = Path(tokenizer_dir) if tokenizer_dir is not None else Path(tempfile.mkdtemp(prefix="clip_tok_"))
    return {"unet": unet.eval(), "vae": vae.eval(), "scheduler": scheduler,
            "text_encoder": _text_encoder(CLIPTextModel, seed + 2), "tokenizer": load_clip_tokenizer(tok_dir),
            "safety_checker": None, "feature_extractor": None, "image_encoder": None}


def save_tiny_sd15(directory: str | Path, seed: int = 0, prediction_type: str = "epsilon") -> Path:
    """Build the tiny SD1.5 pipeline and ``save_pretrained`` it into ``directory``; return the path."""
    from diffusers import StableDiffusionPipeline

    directory = Path(directory)
    comps = tiny_sd15_components(seed, directory / "_tokenizer_src", prediction_type)
    StableDiffusionPipeline(**comps, requires_safety_checker=False).save_pretrained(directory)
    return directory


def write_image_folder(directory: str | Path, n: int = 8, size: int = 40, seed: int = 0, corrupt: int = 0) -> Path:
    """``n`` random-colour captioned PNGs (``i.png`` + ``i.txt``) plus ``corrupt`` unreadable ones."""
    import numpy as np
    from PIL import Image

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    colours = ["red", "green", "blue", "yellow"]
    for i in range(n):
        c = i % len(colours)
        img = np.zeros((size, size + 8, 3), dtype=np.uint8)
        img[..., c % 3] = 200
        img += rng.integers(0, 40, img.shape, dtype=np.uint8)
        Image.fromarray(img).save(directory / f"{i:04d}.png")
        (directory / f"{i:04d}.txt").write_text(f"a {colours[c]} square")
    for j in range(corrupt):
        (directory / f"bad{j}.png").write_bytes(b"not a png")
        (directory / f"bad{j}.txt").write_text("broken")
    return directory


def tiny_t5_tokenizer():
    """A real ``T5TokenizerFast`` (Unigram) over a small word vocabulary: T5's vocab cannot be downloaded here.

    The tiny T5 encoder gets exactly ``len(tokenizer)`` token embeddings (what the tokenizer guard checks).
    """
    from transformers import T5TokenizerFast

    words = ("a an the of on in at with and photo painting portrait red green blue yellow square cat dog city "
             "night apple table lighthouse horse").split()
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(f"\u2581{w}", -float(i + 1)) for i, w in enumerate(words)]
    letters = "abcdefghijklmnopqrstuvwxyz"
    pieces = [a + b for a in letters for b in letters]  # every two-letter piece: any lowercase word tokenizes
    vocab += [(f"\u2581{p}", -20.0) for p in pieces] + [(p, -25.0) for p in pieces]
    vocab += [(ch, -30.0) for ch in letters + "\u2581"]
    return T5TokenizerFast(vocab=vocab, extra_ids=0)


def tiny_flux_components(seed: int = 0, tokenizer_dir: str | Path | None = None) -> dict:
    """Components of a tiny FLUX.1-dev-architecture pipeline (guidance embedding, shift_factor VAE, T5 + CLIP)."""
    import tempfile

    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
        axes_dims_rope=(4, 4, 8),
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        block_out_channels=[16, 32], in_channels=3, out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"], latent_channels=4, sample_size=32,
        norm_num_groups=8, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    t5_tok = tiny_t5_tokenizer()
    torch.manual_seed(seed + 3)
    t5 = T5EncoderModel(T5Config(vocab_size=len(t5_tok), d_model=32, d_ff=37, d_kv=8, num_layers=2, num_heads=4,
                                 relative_attention_num_buckets=8, decoder_start_token_id=0)).eval()
    tok_dir = Path(tokenizer_dir) if tokenizer_dir is not None else Path(tempfile.mkdtemp(prefix="clip_tok_"))
    return {"transformer": transformer.eval(), "vae": vae.eval(), "scheduler": scheduler,
            "text_encoder": _text_encoder(CLIPTextModel, seed + 2), "tokenizer": load_clip_tokenizer(tok_dir),
            "text_encoder_2": t5, "tokenizer_2": t5_tok}


def save_tiny_flux(directory: str | Path, seed: int = 0) -> Path:
    """Build the tiny FLUX pipeline and ``save_pretrained`` it into ``directory``; return the path."""
    from diffusers import FluxPipeline

    directory = Path(directory)
    FluxPipeline(**tiny_flux_components(seed, directory / "_tokenizer_src")).save_pretrained(directory)
    return directory


def tiny_sd3_components(seed: int = 0, tokenizer_dir: str | Path | None = None, vocab_size: int = 1000,
                        dual_attention_layers: tuple[int, ...] = (), qk_norm: str | None = None) -> dict:
    """Components of a tiny SD3-architecture pipeline: MMDiT with 2x2 patches, a 16-channel shift_factor VAE,
    CLIP-L and CLIP-G (both with projections) and T5, SD3's static-shift scheduler (shift 3.0).

    The widths differ on purpose, so a wrong concatenation or padding fails loudly: CLIP-L hidden 16 and
    CLIP-G hidden 32 (48 together, padded to T5's 64 = ``joint_attention_dim``), pooled 16 + 24 = 40
    (``pooled_projection_dim``). ``dual_attention_layers=(0,)`` and ``qk_norm="rms_norm"`` give SD3.5-Medium's
    block layout. ``vocab_size``: a small CLIP tokenizer (a prefix of CLIP's BPE vocabulary) and text encoders
    with as many token embeddings.
    """
    import tempfile

    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=16, out_channels=16, num_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=64, caption_projection_dim=32, pooled_projection_dim=40,
        pos_embed_max_size=32, dual_attention_layers=tuple(dual_attention_layers), qk_norm=qk_norm,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        block_out_channels=[16, 32], in_channels=3, out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"], latent_channels=16, sample_size=32,
        norm_num_groups=8, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5305,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)  # SD3 / SD3.5's config
    tok_dir = Path(tokenizer_dir) if tokenizer_dir is not None else Path(tempfile.mkdtemp(prefix="clip_tok_"))
    tokenizer = small_clip_tokenizer(tok_dir, vocab_size)
    t5_tok = tiny_t5_tokenizer()
    torch.manual_seed(seed + 4)
    t5 = T5EncoderModel(T5Config(vocab_size=len(t5_tok), d_model=64, d_ff=37, d_kv=8, num_layers=2, num_heads=4,
                                 relative_attention_num_buckets=8, decoder_start_token_id=0)).eval()
    return {"transformer": transformer.eval(), "vae": vae.eval(), "scheduler": scheduler,
            "text_encoder": _text_encoder(CLIPTextModelWithProjection, seed + 2, 16, 16, vocab_size),
            "tokenizer": tokenizer,
            "text_encoder_2": _text_encoder(CLIPTextModelWithProjection, seed + 3, 32, 24, vocab_size),
            "tokenizer_2": tokenizer, "text_encoder_3": t5, "tokenizer_3": t5_tok}


def save_tiny_sd3(directory: str | Path, seed: int = 0, **kwargs) -> Path:
    """Build the tiny SD3 pipeline (``kwargs``: :func:`tiny_sd3_components`) and ``save_pretrained`` it; return the path."""
    from diffusers import StableDiffusion3Pipeline

    directory = Path(directory)
    StableDiffusion3Pipeline(**tiny_sd3_components(seed, directory / "_tokenizer_src", **kwargs)).save_pretrained(directory)
    return directory
