"""PCM's discriminator (Wang et al. 2024, Phased Consistency Model; reused by TDD-adv): heads on the frozen teacher's
encoder features at a re-noised sample.

A teacher UNet runs its down blocks and mid block only (forward hooks collect each block's output; the pass
stops after the last of them, so the up blocks never run); a FLUX/SD3 transformer runs up to the last of the
config-chosen blocks, whose image-token hidden states are read. Each feature map gets a trainable head (1x1 convs,
per-position logits). Real = the consistency target at s, fake = the student's prediction at s; both are
re-noised from s to t_gan, uniform in [s, s + T / K_min), with fresh noise (:func:`~.losses.forward_jump`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tdd_lab.adversarial.base import Adversarial
from tdd_lab.adversarial.losses import forward_jump, hinge_d_loss, hinge_g_loss, sample_t_gan
from tdd_lab.conditioner import Condition
from tdd_lab.utils.validation import ConfigError, check_choice, check_int, check_range

SCHEDULES = ("alternate", "simultaneous")


class FeatureHead(nn.Module):
    """One feature map (B, C, h, w) -> logits (B, 1, h, w): 1x1 conv, GroupNorm, LeakyReLU, residual 1x1 block, 1x1 conv."""

    def __init__(self, channels: int, negative_slope: float = 0.2):
        super().__init__()
        groups = math.gcd(32, channels)  # GroupNorm needs channels divisible by the group count
        self.proj = nn.Sequential(nn.Conv2d(channels, channels, 1), nn.GroupNorm(groups, channels),
                                  nn.LeakyReLU(negative_slope))
        self.block = nn.Sequential(nn.Conv2d(channels, channels, 1), nn.GroupNorm(groups, channels),
                                   nn.LeakyReLU(negative_slope))
        self.out = nn.Conv2d(channels, 1, 1)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        h = self.proj(f)                                                 # (B, C, h, w)
        h = h + self.block(h)                                            # residual 1x1 block
        return self.out(h)                                               # (B, 1, h, w)


class _EncoderDone(Exception):
    """Raised by the hook on the last tapped block: the rest of the network is not needed."""


class FeatureTaps:
    """Which blocks of a teacher network the discriminator reads, their channels, and each output as a map (B, C, h, w).

    UNet (:func:`unet_taps`): the down blocks' and the mid block's outputs. Flow transformers
    (:class:`TokenTaps`, :func:`transformer_taps`): the image-token hidden states (B, N, D) of chosen blocks.
    """

    def __init__(self, model: nn.Module, blocks: list[nn.Module], channels: list[int]):
        self.model, self.blocks, self.channels = model, blocks, channels  # model: the diffusers ModelMixin

    def feature(self, output) -> torch.Tensor:
        return output[0] if isinstance(output, tuple) else output        # down block: (hidden, residuals)


class TokenTaps(FeatureTaps):
    """Transformer blocks: diffusers' joint/single blocks return (encoder_hidden_states, hidden_states); the image
    tokens (B, N, D) are read as (B, D, N, 1), so the heads' 1x1 convolutions act per token."""

    def feature(self, output) -> torch.Tensor:
        return output[1].transpose(1, 2).unsqueeze(-1)                   # (B, N, D) -> (B, D, N, 1)


def unet_taps(unet) -> FeatureTaps:
    """A diffusers UNet's down blocks and mid block (not the up blocks) and their output channels."""
    channels = list(unet.config.block_out_channels)
    blocks, out = list(unet.down_blocks), channels[: len(unet.down_blocks)]
    if unet.mid_block is not None:
        blocks.append(unet.mid_block)
        out.append(channels[-1])
    return FeatureTaps(unet, blocks, out)


def transformer_taps(model, indices: list[int] | None) -> FeatureTaps:
    """Blocks ``indices`` of a FLUX / SD3 transformer, counted in execution order (FLUX: the dual-stream blocks, then
    the single-stream ones); None: the first, middle and last dual-stream block."""
    from diffusers import FluxTransformer2DModel

    blocks = list(model.transformer_blocks)
    if isinstance(model, FluxTransformer2DModel):
        blocks += list(model.single_transformer_blocks)
    n_dual = len(model.transformer_blocks)
    chosen = sorted({0, n_dual // 2, n_dual - 1} if indices is None else {int(i) for i in indices})
    bad = [i for i in chosen if not 0 <= i < len(blocks)]
    if bad or not chosen:
        raise ConfigError(f"adversarial.transformer_blocks: {list(indices or [])} must be block indices in "
                          f"[0, {len(blocks)}) of this {type(model).__name__}")
    width = int(model.config.num_attention_heads * model.config.attention_head_dim)
    return TokenTaps(model, [blocks[i] for i in chosen], [width] * len(chosen))


def encoder_taps(net: nn.Module, transformer_blocks: list[int] | None = None) -> FeatureTaps:
    """The discriminator's taps on the diffusers model inside a teacher's raw network."""
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel, UNet2DConditionModel

    for m in net.modules():
        if isinstance(m, UNet2DConditionModel):
            return unet_taps(m)
        if isinstance(m, (FluxTransformer2DModel, SD3Transformer2DModel)):
            return transformer_taps(m, transformer_blocks)
    raise ConfigError(f"adversarial=pcm reads a diffusers UNet or FLUX/SD3 transformer; the teacher network is "
                      f"{type(net).__name__} (an analytic or MLP teacher such as gmm2d has no encoder features)")


class PCMDiscriminator(Adversarial):
    """Hinge GAN on the frozen teacher's encoder features; its own AdamW for the heads."""

    trains = True

    def __init__(
        self,
        adv_weight: float = 0.1,                 # weight of the generator hinge term added to the consistency loss
        lr: float = 1e-5,                        # AdamW learning rate of the heads
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 1e-2,
        schedule: str = "alternate",             # alternate: even batches update D, odd the student; simultaneous
        num_inference_steps_min: int = 4,        # K_min: t_gan is uniform in [s, s + T / K_min)
        negative_slope: float = 0.2,             # LeakyReLU of the heads
        transformer_blocks: list[int] | None = None,  # FLUX/SD3: blocks read (None: first, middle, last dual-stream)
    ):
        super().__init__()
        check_range("adversarial.adv_weight", adv_weight, 0.0)
        check_range("adversarial.lr", lr, 0.0, low_inclusive=False)
        check_choice("adversarial.schedule", schedule, SCHEDULES)
        check_int("adversarial.num_inference_steps_min", num_inference_steps_min, 1)
        self.adv_weight, self.lr, self.betas, self.weight_decay = float(adv_weight), lr, tuple(betas), weight_decay
        self.schedule_name, self.k_min, self.negative_slope = schedule, num_inference_steps_min, negative_slope
        self.transformer_blocks = None if transformer_blocks is None else [int(i) for i in transformer_blocks]
        self.batches = 0  # training batches seen (extra state: the alternation and the data position on resume)
        self.heads = nn.ModuleList()
        self.span: int | None = None  # T // K_min, set by bind

    def bind(self, teacher) -> PCMDiscriminator:
        taps = encoder_taps(teacher.denoiser.net, self.transformer_blocks)
        object.__setattr__(self, "_denoiser", teacher.denoiser)  # frozen teacher: a reference, not a submodule
        object.__setattr__(self, "_taps", taps)
        self.heads = nn.ModuleList(FeatureHead(c, self.negative_slope) for c in taps.channels)
        self.span = max(1, teacher.schedule.num_train_timesteps // self.k_min)
        return self

    def make_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.heads.parameters(), lr=self.lr, betas=self.betas, weight_decay=self.weight_decay)

    # -- schedule -----------------------------------------------------------------------------------
    def updates(self) -> tuple[bool, bool]:
        if self.schedule_name == "simultaneous":
            return True, True
        d_turn = self.batches % 2 == 0  # the public code: even steps D only, odd steps the student only
        return d_turn, not d_turn

    def advance(self) -> None:
        self.batches += 1

    def batches_consumed(self) -> int:
        return self.batches

    def get_extra_state(self):
        return {"batches": self.batches}

    def set_extra_state(self, state) -> None:
        self.batches = int(state["batches"])

    # -- discriminator ------------------------------------------------------------------------------
    def features(self, x: torch.Tensor, t: torch.Tensor, cond: Condition) -> list[torch.Tensor]:
        """The teacher's feature maps at (x, t, cond), one per tapped block, each (B, C_i, h_i, w_i)."""
        feats: list[torch.Tensor] = []
        taps = self._taps

        def grab(_module, _inputs, output):
            feats.append(taps.feature(output))

        def grab_and_stop(module, inputs, output):
            grab(module, inputs, output)
            raise _EncoderDone

        # no activation checkpointing in this pass: a recomputation in backward would run without the hooks and, on a
        # LoRA student's shared base, with the adapters back on (model.gradient_checkpointing, e.g. tdd_flux)
        checkpointing = taps.model.is_gradient_checkpointing
        if checkpointing:
            taps.model.disable_gradient_checkpointing()
        handles = [b.register_forward_hook(grab) for b in taps.blocks[:-1]]
        handles.append(taps.blocks[-1].register_forward_hook(grab_and_stop))
        try:
            self._denoiser.raw(x, t, cond)
        except _EncoderDone:
            pass
        finally:
            for h in handles:
                h.remove()
            if checkpointing:
                taps.model.enable_gradient_checkpointing()
        return feats

    def logits(self, x: torch.Tensor, t: torch.Tensor, cond: Condition) -> list[torch.Tensor]:
        """One logit map per head, each (B, 1, h_i, w_i) in the heads' dtype."""
        dtype = self.heads[0].out.weight.dtype
        return [head(f.to(dtype)) for head, f in zip(self.heads, self.features(x, t, cond))]

    def renoise(self, x_s: torch.Tensor, s: torch.Tensor, t_gan: torch.Tensor) -> torch.Tensor:
        """x_s (B, ...) at s -> x at t_gan with fresh noise (global RNG: seeded and checkpointed with the run)."""
        return forward_jump(x_s, s, t_gan, self._denoiser.schedule, torch.randn_like(x_s))

    def sample_t_gan(self, s: torch.Tensor) -> torch.Tensor:
        u = torch.rand(s.shape, device=s.device)                          # (B,)
        return sample_t_gan(s, self.span, self._denoiser.schedule.num_train_timesteps, u)

    def discriminator_loss(self, real, fake, s, cond):
        t_gan = self.sample_t_gan(s)                                     # (B,) one level per sample for both
        real_g, fake_g = self.renoise(real.detach(), s, t_gan), self.renoise(fake.detach(), s, t_gan)
        return hinge_d_loss(self.logits(real_g, t_gan, cond), self.logits(fake_g, t_gan, cond))

    def generator_loss(self, fake, s, cond):
        t_gan = self.sample_t_gan(s)
        fake_g = self.renoise(fake, s, t_gan)
        self.heads.requires_grad_(False)  # the student's loss must not reach the heads
        try:
            return hinge_g_loss(self.logits(fake_g, t_gan, cond))
        finally:
            self.heads.requires_grad_(True)

    def extra_repr(self) -> str:
        return (f"adv_weight={self.adv_weight}, lr={self.lr}, schedule={self.schedule_name!r}, "
                f"t_gan_span={self.span}")
