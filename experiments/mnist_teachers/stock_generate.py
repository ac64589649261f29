"""Generate coloured-MNIST digits with a STOCK diffusers pipeline, without importing tdd_lab.

The proof that a teacher folder tdd_lab built is a real pipeline: only torch and diffusers are imported
(the script fails if tdd_lab gets imported). Prompts follow the caption template, sample i has prompt
i % 50 (colour (i // 10) % 5, digit i % 10) and initial noise drawn from a generator seeded with seed + i, as
tdd_lab's evaluator draws it. Writes a .pt with images (n, 3, 32, 32) in [0, 1] and the prompt indices.

    python experiments/mnist_teachers/stock_generate.py FOLDER --kind sdxl --n 500 --steps 50 --scale 4.5 --out x.pt
"""

from __future__ import annotations

import argparse
import sys

import torch

COLORS = ("white", "red", "green", "blue", "yellow")
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
PROMPTS = [f"a {c} handwritten digit {w}" for c in COLORS for w in WORDS]


def pack(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> FluxPipeline's packed latents (B, H/2 * W/2, 4C)."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folder")
    p.add_argument("--kind", choices=("sdxl", "flux"), required=True)
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--scale", type=float, default=4.5, help="CFG scale (diffusers convention; 1 = off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    import diffusers

    torch.set_num_threads(1)
    cls = diffusers.StableDiffusionXLPipeline if a.kind == "sdxl" else diffusers.FluxPipeline
    pipe = cls.from_pretrained(a.folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    assert not any(m.startswith("tdd_lab") for m in sys.modules), "tdd_lab was imported"
    vae_cfg = pipe.vae.config
    f = 2 ** (len(vae_cfg.block_out_channels) - 1)
    shape = (vae_cfg.latent_channels, 32 // f, 32 // f)
    noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(a.seed + i)) for i in range(a.n)])
    labels = torch.arange(a.n) % len(PROMPTS)
    out = []
    for i in range(0, a.n, a.batch):
        z, prompts = noise[i : i + a.batch], [PROMPTS[int(y)] for y in labels[i : i + a.batch]]
        if a.kind == "sdxl":
            kw = dict(guidance_scale=a.scale, latents=z)  # the pipeline scales by init_noise_sigma itself
        else:
            kw = dict(guidance_scale=1.0, true_cfg_scale=a.scale, negative_prompt=[""] * len(prompts),
                      max_sequence_length=pipe.tokenizer.model_max_length, latents=pack(z))
        out.append(pipe(prompt=prompts, num_inference_steps=a.steps, height=32, width=32, output_type="pt", **kw)
                   .images.float().cpu())
    torch.save({"images": torch.cat(out), "labels": labels, "prompts": PROMPTS}, a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
