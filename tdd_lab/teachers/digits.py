"""The embedded image teacher: a prompt-conditioned pixel-space UNet pretrained on 8x8 digits.

A diffusers ``UNet2DConditionModel`` conditioned through a small frozen CLIP-style text encoder
(``transformers.CLIPTextModel``, random weights fixed by the seed) on prompts such as
"a handwritten digit seven" tokenised by the real CLIP BPE tokenizer; the empty prompt is the
null condition (10% prompt dropout during pretraining, so CFG works). Pretraining runs once,
seeded, and is cached under ``cache_dir/teacher-digits-<key>`` (safetensors + configs).
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

from tdd_lab.data.digits import digit_prompt, load_digit_tensors
from tdd_lab.nets.unet import UNetDenoiser
from tdd_lab.prediction import to_x0_eps
from tdd_lab.schedules import VPSchedule
from tdd_lab.teachers.base import Teacher
from tdd_lab.utils.cache import cached_dir, default_cache_dir
from tdd_lab.utils.tokenizer import check_tokenizer, load_clip_tokenizer

log = logging.getLogger(__name__)


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


def save_digit_grid(samples: torch.Tensor, labels, path: Path, nrow: int = 10, max_images: int = 40) -> None:
    """Save the first ``max_images`` of (n, 1, 8, 8) samples in [-1, 1] as a PNG grid, upscaled 4x."""
    from torchvision.utils import save_image

    x = (samples[:max_images].float().clamp(-1, 1) + 1) / 2
    x = torch.nn.functional.interpolate(x, scale_factor=4, mode="nearest")
    save_image(x, str(path), nrow=nrow, padding=2, pad_value=0.5)


class DigitsTeacher(Teacher):
    """Pretrained (or loaded from cache) digits teacher; conditions are text embeddings (B, L, D)."""

    prediction_type = "epsilon"
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
        device: str = "cpu",
    ):
        self.pretrain_config = dict(
            seed=seed, train_steps=train_steps, batch_size=batch_size, lr=lr, ema_decay=ema_decay,
            cond_dropout=cond_dropout, channels=list(channels), text_dim=text_dim, max_length=max_length,
            beta_schedule=beta_schedule, beta_start=beta_start, beta_end=beta_end, version=1,
        )
        self.schedule = VPSchedule(1000, beta_start, beta_end, beta_schedule)
        self.device = torch.device(device)
        self.max_length = max_length
        cache = Path(cache_dir) if cache_dir else default_cache_dir()
        self.path = cached_dir(cache, "teacher-digits", self.pretrain_config, self._pretrain)
        self._load(self.path)
        self._prompt_cache: dict[str, torch.Tensor] = {}
        self._tables: dict[str, torch.Tensor] = {}

    # -- loading / pretraining --------------------------------------------------------------------
    def _load(self, path: Path) -> None:
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        self.unet = UNet2DConditionModel.from_pretrained(path / "unet").to(self.device).eval().requires_grad_(False)
        self.text_encoder = CLIPTextModel.from_pretrained(path / "text_encoder").to(self.device).eval()
        self.text_encoder.requires_grad_(False)
        self.tokenizer = check_tokenizer(CLIPTokenizer.from_pretrained(path / "tokenizer"), str(path / "tokenizer"))
        self.tokenizer.model_max_length = self.max_length
        self.net = UNetDenoiser(self.unet)
        self.info = json.loads((path / "pretrain.json").read_text())

    @torch.enable_grad()  # may be reached from no_grad evaluation code
    def _pretrain(self, out: Path) -> None:
        c = self.pretrain_config
        torch.manual_seed(c["seed"])
        tok = load_clip_tokenizer(out / "tokenizer_src", model_max_length=c["max_length"])
        tok.save_pretrained(out / "tokenizer")
        shutil.rmtree(out / "tokenizer_src")
        text_encoder = build_text_encoder(c["text_dim"], c["max_length"])
        text_encoder.save_pretrained(out / "text_encoder")
        self.tokenizer, self.text_encoder = tok, text_encoder
        images, labels = load_digit_tensors()
        with torch.no_grad():
            prompt_emb = self._encode([digit_prompt(i) for i in range(10)] + [""])  # (11, L, D)
        unet = build_digits_unet(tuple(c["channels"]), c["text_dim"])
        ema = copy.deepcopy(unet).requires_grad_(False)
        opt = torch.optim.AdamW(unet.parameters(), lr=c["lr"], weight_decay=0.0)
        steps = max(c["train_steps"], 3)  # train_steps = 0 gives random weights (benchmarks, tests)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=c["lr"], total_steps=steps,
                                                    pct_start=max(0.05, 2.5 / steps))
        gen = torch.Generator().manual_seed(c["seed"])
        abar = self.schedule.alphas_cumprod
        start, losses = time.time(), []
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
            with torch.no_grad():
                d = min(c["ema_decay"], (1 + step) / (10 + step))
                for pe, p in zip(ema.parameters(), unet.parameters()):
                    pe.lerp_(p, 1 - d)
            losses.append(loss.item())
            if step % 200 == 0:
                bar.set_postfix(loss=f"{sum(losses[-200:]) / len(losses[-200:]):.4f}")
        ema.save_pretrained(out / "unet")
        (out / "pretrain.json").write_text(json.dumps(
            {"final_loss": sum(losses[-200:]) / max(1, len(losses[-200:])), "seconds": time.time() - start, "steps": c["train_steps"]}))

    # -- the Teacher contract ---------------------------------------------------------------------
    @torch.no_grad()
    def _encode(self, prompts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.max_length, truncation=True,
                             return_tensors="pt").input_ids
        return self.text_encoder(ids.to(self.text_encoder.device)).last_hidden_state

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Text embeddings (B, L, D) of ``prompts`` (memoised per prompt)."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._prompt_cache]
        if missing:
            for p, e in zip(missing, self._encode(missing)):
                self._prompt_cache[p] = e
        return torch.stack([self._prompt_cache[p] for p in prompts])

    def _label_table(self, device) -> torch.Tensor:
        """Embeddings of the 10 digit prompts and the empty prompt: (11, L, D), computed once per device."""
        table = self._tables.get(str(device))
        if table is None:
            table = self.encode_prompts([digit_prompt(i) for i in range(10)] + [""]).to(device)
            self._tables[str(device)] = table
        return table

    def conditions(self, labels: torch.Tensor) -> torch.Tensor:
        """Conditions of dataset labels (B,) -> (B, L, D); label -1 gives the null (empty) prompt."""
        return self._label_table(labels.device)[torch.where(labels < 0, 10, labels)]

    def null_condition(self, device="cpu"):
        return self._label_table(device)[10:]

    @torch.no_grad()
    def denoise(self, x_t, t, cond):
        raw = self.teacher_forward(x_t, self.schedule.model_time(t), cond)
        a, s = self.schedule.alpha_sigma(t, x_t.ndim, x_t.dtype)
        return to_x0_eps(raw, x_t, a, s, self.prediction_type)

    def save_samples(self, samples, labels, path):
        save_digit_grid(samples, labels, path)

    def describe(self) -> dict:
        return {"kind": "digits", **self.pretrain_config, "schedule": self.schedule.diffusers_config()}

    def save_student(self, net, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        net.unet.save_pretrained(directory / "unet")
        self.text_encoder.save_pretrained(directory / "text_encoder")
        self.tokenizer.save_pretrained(directory / "tokenizer")

    @staticmethod
    def load_student(directory: Path, meta: dict, device="cpu") -> dict:
        """Network and text conditioning of an exported digits student (see ``tdd_lab.export``)."""
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        unet = UNet2DConditionModel.from_pretrained(directory / "unet").to(device).eval()
        text_encoder = CLIPTextModel.from_pretrained(directory / "text_encoder").to(device).eval()
        tokenizer = check_tokenizer(CLIPTokenizer.from_pretrained(directory / "tokenizer"), str(directory / "tokenizer"))

        @torch.no_grad()
        def encode(prompts: list[str]) -> torch.Tensor:
            ids = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids
            return text_encoder(ids.to(device)).last_hidden_state

        return {"net": UNetDenoiser(unet), "encode": encode, "null": encode([""]),
                "save_samples": save_digit_grid}

    def to(self, device):
        self.device = torch.device(device)
        self.unet.to(device)
        self.text_encoder.to(device)
        self._prompt_cache = {k: v.to(device) for k, v in self._prompt_cache.items()}
        self._tables = {}
        return self
