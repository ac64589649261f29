"""The embedded image teacher: a prompt-conditioned pixel-space UNet pretrained on 8x8 digits.

A diffusers ``UNet2DConditionModel`` conditioned through a small frozen CLIP-style text encoder
(``transformers.CLIPTextModel``, random weights fixed by the seed) on prompts such as
"a handwritten digit seven" tokenised by the real CLIP BPE tokenizer; the empty prompt is the
null condition (10% prompt dropout during pretraining, so CFG works). Pretraining runs once,
seeded, and is cached under ``cache_dir/teacher-digits-<key>`` (safetensors + configs).
"""

from __future__ import annotations

import json
from pathlib import Path

from tdd_lab.conditioner import CLIPTextConditioner
from tdd_lab.data.digits import digit_prompt
from tdd_lab.denoiser import Denoiser
from tdd_lab.nets.unet import UNetDenoiser
from tdd_lab.pretrain import pretrain_digits_teacher
from tdd_lab.schedules import VPSchedule
from tdd_lab.teachers.base import Teacher
from tdd_lab.utils.cache import cached_dir, default_cache_dir
from tdd_lab.utils.images import save_digit_grid

# code version of the cached teacher (part of its cache key and of describe(), hence of the teacher-number caches):
# bump when the pretraining loop (tdd_lab.pretrain.pretrain_digits_teacher) or the UNet / text encoder it builds changes
PRETRAIN_VERSION = 1


def load_digits_conditioner(path: Path, max_length: int | None = None) -> CLIPTextConditioner:
    """The frozen CLIP-style text conditioner saved under ``path`` (``text_encoder/``, ``tokenizer/``)."""
    return CLIPTextConditioner.from_pretrained(path, [digit_prompt(i) for i in range(10)], max_length)


class DigitsTeacher(Teacher):
    """Pretrained (or loaded from cache) digits teacher; conditions are text embeddings (B, L, D)."""

    sample_shape = (1, 8, 8)
    num_classes = 10

    def __init__(
        self,
        cache_dir: str | None = None,    # where the pretrained teacher is cached (default $TDD_LAB_CACHE)
        seed: int = 0,                   # pretraining seed
        train_steps: int = 3000,         # pretraining optimizer steps (0: random weights, for benchmarks)
        batch_size: int = 128,
        lr: float = 2e-3,
        ema_decay: float = 0.999,        # the teacher is the EMA of the pretraining weights
        cond_dropout: float = 0.1,       # prompt dropout so CFG works
        channels: tuple[int, int] = (32, 64),
        text_dim: int = 64,
        max_length: int = 16,            # tokenizer length
        beta_schedule: str = "linear",
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
    ):
        super().__init__()
        self.pretrain_config = dict(
            seed=seed, train_steps=train_steps, batch_size=batch_size, lr=lr, ema_decay=ema_decay,
            cond_dropout=cond_dropout, channels=list(channels), text_dim=text_dim, max_length=max_length,
            beta_schedule=beta_schedule, beta_start=beta_start, beta_end=beta_end, version=PRETRAIN_VERSION,
        )
        schedule = VPSchedule(1000, beta_start, beta_end, beta_schedule)
        cache = Path(cache_dir) if cache_dir else default_cache_dir()
        self.path = cached_dir(cache, "teacher-digits", self.pretrain_config,
                               lambda out: pretrain_digits_teacher(out, self.pretrain_config, schedule.alphas_cumprod))
        from diffusers import UNet2DConditionModel

        self.unet = UNet2DConditionModel.from_pretrained(self.path / "unet").eval().requires_grad_(False)
        self.conditioner = load_digits_conditioner(self.path, max_length)
        self.denoiser = Denoiser(UNetDenoiser(self.unet), schedule, "epsilon")
        self.info = json.loads((self.path / "pretrain.json").read_text())

    def save_samples(self, samples, labels, path):
        save_digit_grid(samples, labels, path)

    def describe(self) -> dict:
        return {"kind": "digits", **self.pretrain_config, "schedule": self.schedule.diffusers_config()}

    def exporter(self):
        from tdd_lab.export.native import DigitsExporter

        return DigitsExporter(self.conditioner)
