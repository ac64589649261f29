"""GPU benchmark of the SDXL architecture: distillation step time / peak memory and sampling speed.

Random weights (nothing downloaded), LoRA rank 64 on the UNet sharing the frozen base with the
teacher (adapters disabled for teacher calls), bf16. Prints one JSON object as the last line.

    python experiments/bench/gpu_sdxl.py                  # 1024 px (latents 128x128), batch 4
    python experiments/bench/gpu_sdxl.py --tiny --device cpu   # a seconds-long check of the script itself

Measured: `step_s` / `peak_mem_gb` of one distillation step (student fwd+bwd, teacher cond+uncond,
target fwd, AdamW) without and with the fast paths (batched 2B CFG forward, channels_last,
torch.compile), and 4-step student vs 50-step CFG teacher sampling (UNet passes, images/s).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

SDXL_UNET = dict(
    act_fn="silu", addition_embed_type="text_time", addition_embed_type_num_heads=64, addition_time_embed_dim=256,
    attention_head_dim=[5, 10, 20], block_out_channels=[320, 640, 1280], cross_attention_dim=2048,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"], flip_sin_to_cos=True,
    freq_shift=0, in_channels=4, layers_per_block=2, mid_block_type="UNetMidBlock2DCrossAttn", norm_eps=1e-5,
    norm_num_groups=32, out_channels=4, projection_class_embeddings_input_dim=2816, sample_size=128,
    transformer_layers_per_block=[1, 2, 10], up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    use_linear_projection=True,
)
TINY_UNET = dict(SDXL_UNET, attention_head_dim=[2, 4], block_out_channels=[32, 64], cross_attention_dim=64,
                 down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"], up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
                 transformer_layers_per_block=[1, 1], projection_class_embeddings_input_dim=80,
                 addition_time_embed_dim=8, addition_embed_type_num_heads=2, layers_per_block=1, norm_num_groups=16,
                 sample_size=16)
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
                "conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj"]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, warmup=2, reps=5):
    for _ in range(warmup):
        fn()
    sync(device)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync(device)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main() -> None:
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    p = argparse.ArgumentParser()
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int, default=4)  # the issue: batch 4 at 1024 px
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cfg = TINY_UNET if args.tiny else SDXL_UNET
    unet = UNet2DConditionModel(**cfg).to(device, dtype).requires_grad_(False)
    unet.add_adapter(LoraConfig(r=64 if not args.tiny else 4, lora_alpha=64 if not args.tiny else 4,
                                target_modules=LORA_TARGETS, init_lora_weights="gaussian"))
    lora = [p for n, p in unet.named_parameters() if "lora" in n]
    for p_ in lora:
        p_.data = p_.data.float()  # fp32 adapters, bf16 base
        p_.requires_grad_(True)
    unet.enable_gradient_checkpointing()
    opt = torch.optim.AdamW(lora, lr=1e-6, fused=device.type == "cuda")
    b, hw = args.batch, cfg["sample_size"]
    text_dim, pooled = cfg["cross_attention_dim"], cfg["projection_class_embeddings_input_dim"] - 6 * cfg["addition_time_embed_dim"]
    x = torch.randn(b, 4, hw, hw, device=device, dtype=dtype)
    emb = torch.randn(b, 77, text_dim, device=device, dtype=dtype)
    cond = {"text_embeds": torch.randn(b, pooled, device=device, dtype=dtype),
            "time_ids": torch.tensor([[hw * 8, hw * 8, 0, 0, hw * 8, hw * 8]] * b, device=device, dtype=dtype)}
    t = torch.full((b,), 499, device=device)

    def call(xx, tt, ee, cc):
        return unet(xx, tt, encoder_hidden_states=ee, added_cond_kwargs=cc).sample

    def step(batched: bool):
        out = call(x, t, emb, cond)
        with torch.no_grad():
            unet.disable_adapters()
            if batched:
                tc = call(torch.cat([x, x]), torch.cat([t, t]), torch.cat([emb, emb]),
                          {k: torch.cat([v, v]) for k, v in cond.items()})
            else:
                tc = torch.cat([call(x, t, emb, cond), call(x, t, emb, cond)])
            unet.enable_adapters()
            tgt = call(x, t - 4, emb, cond)
        loss = (torch.sqrt((out.float() - tgt.float() - 0.01 * tc[:b].float()) ** 2 + 1e-6) - 1e-3).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    res = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "batch": b,
           "latent": hw, "tiny": args.tiny, "dtype": str(dtype), "lora_params_m": sum(p_.numel() for p_ in lora) / 1e6}
    for name, batched, fast in [("baseline", False, False), ("fast", True, True)]:
        if fast:
            unet.to(memory_format=torch.channels_last)
            if device.type == "cuda":
                unet.compile()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        res[f"{name}_step_s"] = timed(lambda b=batched: step(b), device, reps=args.reps)
        if device.type == "cuda":
            res[f"{name}_peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
    unet.disable_gradient_checkpointing()

    @torch.no_grad()
    def sample(steps, cfg_scale):
        xx = x.clone()
        for _ in range(steps):
            if cfg_scale == 1.0:
                eps = call(xx, t, emb, cond)
            else:
                e = call(torch.cat([xx, xx]), torch.cat([t, t]), torch.cat([emb, emb]),
                         {k: torch.cat([v, v]) for k, v in cond.items()})
                eps = e[b:] + cfg_scale * (e[:b] - e[b:])
            xx = xx - 0.01 * eps
        return xx

    s4 = timed(lambda: sample(4, 1.0), device, warmup=1, reps=args.reps)
    unet.disable_adapters()
    s50 = timed(lambda: sample(50, 4.5), device, warmup=1, reps=max(1, args.reps // 2))
    res.update({"student_4step_images_per_s": b / s4, "teacher_50step_cfg_images_per_s": b / s50,
                "sample_speedup_4_vs_50cfg": s50 / s4})
    print(json.dumps(res))


if __name__ == "__main__":
    main()
