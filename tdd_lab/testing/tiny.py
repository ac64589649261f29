"""Tiny random-weight diffusers pipelines built from configs (no downloads).

They have the real architectures (UNet2DConditionModel with SDXL's text-time conditioning,
AutoencoderKL, two CLIP text encoders, the real CLIP BPE tokenizer), saved with
``save_pretrained`` so tests load them through the code path that loads real checkpoints.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tdd_lab.utils.tokenizer import load_clip_tokenizer


def _text_encoder(cls, seed: int, hidden: int = 32, projection_dim: int = 32):
    from transformers import CLIPTextConfig

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(
        bos_token_id=0, eos_token_id=2, pad_token_id=1, hidden_size=hidden, intermediate_size=37,
        layer_norm_eps=1e-5, num_attention_heads=4, num_hidden_layers=2, vocab_size=49408,
        hidden_act="gelu", projection_dim=projection_dim, max_position_embeddings=77,
    )
    return cls(cfg).eval()


def tiny_sdxl_components(seed: int = 0, tokenizer_dir: str | Path | None = None) -> dict:
    """Components of a tiny SDXL pipeline (UNet cross-attention dim 64 = 32 + 32 text features)."""
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
    tokenizer = load_clip_tokenizer(tok_dir)
    return {
        "unet": unet.eval(),
        "vae": vae.eval(),
        "scheduler": scheduler,
        "text_encoder": _text_encoder(CLIPTextModel, seed + 2),
        "tokenizer": tokenizer,
        "text_encoder_2": _text_encoder(CLIPTextModelWithProjection, seed + 3),
        "tokenizer_2": tokenizer,
    }


def save_tiny_sdxl(directory: str | Path, seed: int = 0) -> Path:
    """Build the tiny SDXL pipeline and ``save_pretrained`` it into ``directory``; return the path."""
    from diffusers import StableDiffusionXLPipeline

    directory = Path(directory)
    pipe = StableDiffusionXLPipeline(**tiny_sdxl_components(seed, directory / "_tokenizer_src"))
    pipe.save_pretrained(directory)
    return directory
