"""Conditioners: prompts or labels -> the condition a network takes, the null condition, batch preparation.

A condition is a tensor with a leading batch dim or a (nested) dict of such tensors (SDXL:
``{"encoder_hidden_states", "added_cond_kwargs": {"text_embeds", "time_ids"}}``). The null condition
is *one* tensor (batch 1), used for CFG's unconditional branch and for dropped prompts alike.

A teacher is a conditioner plus a denoiser (:mod:`tdd_lab.denoiser`) plus the student's initial
network; exported students carry the same conditioner classes, so training, evaluation and
``tdd_lab.sample`` make conditions the same way. Conditioners are ``nn.Module`` s: their text
encoders, VAEs and embedding tables move with one ``.to(device)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from tdd_lab.utils.tensors import append_dims

Condition = Any  # torch.Tensor | dict[str, "Condition"]


# ---- condition pytrees -----------------------------------------------------------------------------
def map_condition(fn: Callable[..., torch.Tensor], *conds: Condition) -> Condition:
    """Apply ``fn`` leaf-wise to tensors of identically structured conditions."""
    first = conds[0]
    if isinstance(first, dict):
        return {k: map_condition(fn, *(c[k] for c in conds)) for k in first}
    if isinstance(first, (list, tuple)):
        return type(first)(map_condition(fn, *items) for items in zip(*conds))
    return fn(*conds)


def first_leaf(cond: Condition) -> torch.Tensor:
    """The first tensor of a (nested) condition."""
    while isinstance(cond, (dict, list, tuple)):
        cond = next(iter(cond.values())) if isinstance(cond, dict) else cond[0]
    return cond


def condition_batch_size(cond: Condition) -> int:
    """Leading dim of the first tensor leaf."""
    return first_leaf(cond).shape[0]


def expand_condition(cond: Condition, batch_size: int) -> Condition:
    """Broadcast a batch-1 condition to ``batch_size``: (1, ...) -> (B, ...)."""
    return map_condition(lambda x: x.expand(batch_size, *x.shape[1:]), cond)


def select_condition(mask: torch.Tensor, null: Condition, cond: Condition) -> Condition:
    """Per sample: the null condition where ``mask`` (B,) is True, else ``cond``."""
    return map_condition(lambda n, c: torch.where(append_dims(mask.to(c.device), c.ndim), n.to(c.dtype), c), null, cond)


def concat_conditions(a: Condition, b: Condition) -> Condition:
    """Stack two batches for one batched forward: (B, ...), (B, ...) -> (2B, ...)."""
    return map_condition(lambda x, y: torch.cat([x, y]), a, b)


def condition_to(cond: Condition, device) -> Condition:
    return map_condition(lambda x: x.to(device), cond)


# ---- the contract ----------------------------------------------------------------------------------
class Conditioner(nn.Module):
    """Makes conditions. Subclasses implement :meth:`encode` and :meth:`null_condition`.

    ``encode(items)``: a list of prompts (text conditioners) or class labels (label conditioners) ->
    condition (B, ...). ``conditions(labels)``: evaluation labels (B,) -> conditions of the evaluation
    prompts (label i -> prompt i; -1 -> the null condition). ``prepare_batch(batch)``: a data batch ->
    (x0 (B, ...), condition).
    """

    label_prompts: Sequence[str] = ()  # prompt of evaluation label i (text conditioners)

    @property
    def device(self) -> torch.device:
        leaf = next(iter(self.buffers()), None)
        if leaf is None:
            leaf = next(iter(self.parameters()), None)
        return leaf.device if leaf is not None else torch.device("cpu")

    def encode(self, items: Sequence) -> Condition:
        raise NotImplementedError

    def null_condition(self, device: torch.device | str | None = None) -> Condition:
        """The one unconditional condition (batch size 1)."""
        raise NotImplementedError

    def null_like(self, cond: Condition) -> Condition:
        """The null condition for the samples of ``cond`` (B, ...): the batch-1 null broadcast.

        Conditions that carry per-sample metadata that is not text (SDXL's ``time_ids``) keep it, as
        the stock pipelines do for their negative branch.
        """
        return expand_condition(self.null_condition(first_leaf(cond).device), condition_batch_size(cond))

    def empty_prompt_like(self, cond: Condition) -> Condition:
        """The text encoders' encoding of the empty prompt "" for the samples of ``cond`` (B, ...), which is not the
        null condition where the checkpoint forces zeros (SDXL); used by ablation switches only. Label
        conditioners have no empty prompt."""
        raise ValueError(f"{type(self).__name__} conditions on class labels: it has no encoded empty prompt")

    def conditions(self, labels: torch.Tensor) -> Condition:
        """Conditions of evaluation labels (B,); label -1 is the null condition."""
        items = [self.label_prompts[int(i)] if int(i) >= 0 else "" for i in labels.tolist()]
        cond = self.encode(items)
        drop = labels < 0
        if bool(drop.any()):
            cond = select_condition(drop, self.null_like(cond), cond)
        return condition_to(cond, labels.device)

    def prepare_batch(self, batch: dict[str, Any]) -> tuple[torch.Tensor, Condition]:
        """``{"x0", "label"}`` -> (x0, conditions of the labels)."""
        return batch["x0"], self.conditions(batch["label"])

    def describe(self) -> dict:
        return {"class": type(self).__name__, "label_prompts": list(self.label_prompts)}


class LabelConditioner(Conditioner):
    """Class labels are the condition (B,) int64; the null condition is ``null_label`` (-1)."""

    def __init__(self, num_classes: int, null_label: int = -1):
        super().__init__()
        self.num_classes, self.null_label = num_classes, null_label

    def encode(self, items):
        return torch.as_tensor([int(x) for x in items], dtype=torch.long)

    def null_condition(self, device=None):
        return torch.tensor([self.null_label], device=device)

    def conditions(self, labels):
        return labels.long()

    def describe(self):
        return {"class": type(self).__name__, "num_classes": self.num_classes}


class CLIPTextConditioner(Conditioner):
    """Prompts through a CLIP tokenizer and text encoder -> last hidden states (B, L, D).

    Evaluation labels map to ``label_prompts`` through a table of their embeddings (a buffer, so it
    follows the module's device); the empty prompt "" is the null condition.
    """

    def __init__(self, tokenizer, text_encoder: nn.Module, label_prompts: Sequence[str], max_length: int | None = None):
        super().__init__()
        self.tokenizer, self.text_encoder = tokenizer, text_encoder.eval().requires_grad_(False)
        self.max_length = int(max_length or tokenizer.model_max_length)
        self.label_prompts = tuple(label_prompts)
        self._memo: dict[str, torch.Tensor] = {}
        table = self.encode([*self.label_prompts, ""])  # (labels + 1, L, D); the last row is the null
        self.register_buffer("table", table, persistent=False)

    @classmethod
    def from_pretrained(cls, path, label_prompts: Sequence[str], max_length: int | None = None) -> CLIPTextConditioner:
        """Load ``path/text_encoder`` (transformers ``CLIPTextModel``) and ``path/tokenizer`` (checked against it)."""
        from pathlib import Path

        from transformers import CLIPTextModel, CLIPTokenizer

        from tdd_lab.utils.tokenizer import check_tokenizer

        path = Path(path)
        text_encoder = CLIPTextModel.from_pretrained(path / "text_encoder")
        tokenizer = check_tokenizer(CLIPTokenizer.from_pretrained(path / "tokenizer"), str(path / "tokenizer"),
                                    text_encoder.config.vocab_size)
        if max_length is not None:
            tokenizer.model_max_length = max_length
        return cls(tokenizer, text_encoder, label_prompts)

    @torch.no_grad()
    def _encode(self, prompts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.max_length, truncation=True,
                             return_tensors="pt").input_ids
        return self.text_encoder(ids.to(self.text_encoder.device)).last_hidden_state

    def encode(self, items):
        """Text embeddings (B, L, D) of prompts (memoised per prompt)."""
        missing = [p for p in dict.fromkeys(items) if p not in self._memo]
        if missing:
            for p, e in zip(missing, self._encode(missing)):
                self._memo[p] = e
        return torch.stack([self._memo[p].to(self.text_encoder.device) for p in items])

    def conditions(self, labels):
        return self.table[torch.where(labels < 0, len(self.label_prompts), labels).to(self.table.device)].to(labels.device)

    def null_condition(self, device=None):
        null = self.table[len(self.label_prompts):]
        return null if device is None else null.to(device)

    def describe(self):
        return {"class": type(self).__name__, "label_prompts": list(self.label_prompts), "max_length": self.max_length}


# ---- diffusers pipelines: latents and the pipelines' own prompt encoders --------------------------------
TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")  # the pipelines' text-encoder attributes


class PipelineConditioner(Conditioner):
    """Conditions of a stock diffusers pipeline (SD1.5 / SDXL / FLUX / SD3) through its own ``encode_prompt``.

    ``prepare_batch`` encodes images to normalised latents with the pipeline's VAE
    (``(z - shift_factor) * scaling_factor``), or takes a cached ``{"latents", "cond"}`` batch.
    Evaluation label i is ``label_prompts[i]``.
    """

    def __init__(self, pipe, label_prompts: Sequence[str], resolution: int, vae_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.pipe = pipe
        self.vae = pipe.vae.to(dtype=vae_dtype).eval().requires_grad_(False)
        self.vae_dtype = vae_dtype
        self.text_encoders = nn.ModuleList(
            [enc.eval().requires_grad_(False) for enc in (getattr(pipe, n, None) for n in TEXT_ENCODERS) if enc is not None])
        self.label_prompts, self.resolution = tuple(label_prompts), int(resolution)
        self._memo: dict[str, Condition] = {}
        self._null: Condition | None = None
        self._empty: Condition | None = None
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)  # follows the module's device

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    def _text_device(self) -> torch.device:
        return next(self.text_encoders[0].parameters()).device

    # -- latents ----------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> normalised latents (B, C, H/f, W/f) float32 (posterior mode)."""
        cfg = self.vae.config
        z = self.vae.encode(pixels.to(self.vae.device, self.vae_dtype)).latent_dist.mode().float()
        shift = getattr(cfg, "shift_factor", None) or 0.0
        return (z - shift) * cfg.scaling_factor

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents -> images (B, 3, H, W) in [-1, 1]."""
        cfg = self.vae.config
        shift = getattr(cfg, "shift_factor", None) or 0.0
        z = latents.to(self.vae.device, self.vae_dtype) / cfg.scaling_factor + shift
        return self.vae.decode(z).sample.float().clamp(-1, 1)

    # -- conditions ---------------------------------------------------------------------------------
    def encode_text(self, prompts: list[str], batch: dict[str, Any] | None = None) -> Condition:
        """Prompts (and per-sample metadata of a data batch) -> condition (B, ...), float32 on this device."""
        raise NotImplementedError

    memo_limit: int = 1024  # prompts memoised; beyond, encoded per call (a 30k-caption file would fill the device)

    def encode(self, items):
        """Conditions of prompts (B, ...), memoised per prompt (evaluation prompts repeat) up to ``memo_limit``."""
        missing = [p for p in dict.fromkeys(items) if p not in self._memo]
        fresh: dict[str, Condition] = {}
        if missing:
            enc = self.encode_text(missing)
            for i, p in enumerate(missing):
                fresh[p] = map_condition(lambda x, i=i: x[i : i + 1], enc)
            room = max(0, self.memo_limit - len(self._memo))
            self._memo.update(list(fresh.items())[:room])
        return map_condition(lambda *xs: torch.cat(xs).to(self.device),
                             *[self._memo[p] if p in self._memo else fresh[p] for p in items])

    def null_condition(self, device=None):
        if self._null is None:
            self._null = self.make_null()
        return condition_to(self._null, device or self.device)

    def make_null(self) -> Condition:
        return self.encode_text([""])

    def empty_prompt_like(self, cond):
        if self._empty is None:
            self._empty = self.encode_text([""])
        return expand_condition(condition_to(self._empty, first_leaf(cond).device), condition_batch_size(cond))

    def prepare_batch(self, batch):
        """``{"pixel_values", "prompt", ...}`` or a cached ``{"latents", "cond"}`` batch -> (latents, condition)."""
        if "latents" in batch:
            return batch["latents"].float(), batch["cond"]
        return self.encode_images(batch["pixel_values"]), self.encode_text(list(batch["prompt"]), batch)

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        self._memo, self._null, self._empty = {}, None, None  # re-encoded on the new device when next asked
        return self

    def describe(self):
        return {"class": type(self).__name__, "label_prompts": list(self.label_prompts), "resolution": self.resolution}


class SDConditioner(PipelineConditioner):
    """SD1.5 / SD2: one CLIP text encoder; the null condition is the encoded empty prompt."""

    def encode_text(self, prompts, batch=None):
        emb, _ = self.pipe.encode_prompt(list(prompts), self._text_device(), 1, False)
        return emb.float().to(self.device)


class SDXLConditioner(PipelineConditioner):
    """SDXL: two text encoders, pooled embeddings, micro-conditioning ``time_ids``.

    The null condition follows the checkpoint's ``force_zeros_for_empty_prompt`` (True for SDXL base):
    all-zero embeddings and pooled embeddings, used for the teacher's unconditional branch *and* for
    dropped captions alike (the public script mixed zeros and encoded "": TDD_SPEC 4). Unconditional
    samples keep their own ``time_ids``, as in the stock pipeline.
    """

    def __init__(self, pipe, label_prompts, resolution, vae_dtype=torch.float32):
        super().__init__(pipe, label_prompts, resolution, vae_dtype)
        self.force_zeros = bool(pipe.config.get("force_zeros_for_empty_prompt", True))

    def time_ids(self, batch: dict[str, Any] | None, n: int) -> torch.Tensor:
        """(B, 6): original size (h, w), crop top-left (top, left), target size (h, w)."""
        r, dev = self.resolution, self.device
        if batch is not None and "original_size" in batch:
            orig = torch.as_tensor(batch["original_size"]).to(dev, torch.float32).view(n, 2)
            crop = torch.as_tensor(batch["crop_top_left"]).to(dev, torch.float32).view(n, 2)
        else:
            orig, crop = torch.full((n, 2), float(r), device=dev), torch.zeros(n, 2, device=dev)
        return torch.cat([orig, crop, torch.full((n, 2), float(r), device=dev)], dim=1)

    def encode_text(self, prompts, batch=None):
        emb, _, pooled, _ = self.pipe.encode_prompt(list(prompts), device=self._text_device(),
                                                    do_classifier_free_guidance=False)
        return {"encoder_hidden_states": emb.float().to(self.device),
                "added_cond_kwargs": {"text_embeds": pooled.float().to(self.device),
                                      "time_ids": self.time_ids(batch, len(prompts))}}

    def make_null(self):
        null = self.encode_text([""])
        if self.force_zeros:
            null = {"encoder_hidden_states": torch.zeros_like(null["encoder_hidden_states"]),
                    "added_cond_kwargs": {"text_embeds": torch.zeros_like(null["added_cond_kwargs"]["text_embeds"]),
                                          "time_ids": null["added_cond_kwargs"]["time_ids"]}}
        return null

    def null_like(self, cond):
        return self._keep_time_ids(self.null_condition(cond["encoder_hidden_states"].device), cond)

    def empty_prompt_like(self, cond):
        return self._keep_time_ids(super().empty_prompt_like(cond), cond)

    @staticmethod
    def _keep_time_ids(text: Condition, cond: Condition) -> Condition:
        """``text``'s embeddings broadcast to the samples of ``cond``, with ``cond``'s own ``time_ids``."""
        b = condition_batch_size(cond)
        return {"encoder_hidden_states": text["encoder_hidden_states"].expand(b, -1, -1),
                "added_cond_kwargs": {"text_embeds": text["added_cond_kwargs"]["text_embeds"].expand(b, -1),
                                      "time_ids": cond["added_cond_kwargs"]["time_ids"]}}


class T5PipelineConditioner(PipelineConditioner):
    """Flow-transformer pipelines (FLUX, SD3): ``{"encoder_hidden_states" (B, L, D), "pooled_projections" (B, P)}``.

    The sequence holds T5 tokens padded to ``max_sequence_length`` (SD3: after the CLIP tokens); the null
    condition is the pipeline's encoding of the empty prompt (its negative prompt ""), for CFG's unconditional
    branch and dropped captions alike. Subclasses say which ``encode_prompt`` call makes the two tensors.
    """

    def __init__(self, pipe, label_prompts, resolution, vae_dtype=torch.float32, max_sequence_length: int = 512):
        super().__init__(pipe, label_prompts, resolution, vae_dtype)
        self.max_sequence_length = int(max_sequence_length)

    def encode_prompt(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The pipeline's own prompt encoding: (sequence embeddings (B, L, D), pooled embeddings (B, P))."""
        raise NotImplementedError

    def encode_text(self, prompts, batch=None):
        emb, pooled = self.encode_prompt(list(prompts))
        return {"encoder_hidden_states": emb.float().to(self.device),
                "pooled_projections": pooled.float().to(self.device)}

    def describe(self):
        return {**super().describe(), "max_sequence_length": self.max_sequence_length}


class FluxConditioner(T5PipelineConditioner):
    """FLUX: T5 sequence embeddings (padded to ``max_sequence_length``) and pooled CLIP embeddings."""

    def encode_prompt(self, prompts):
        emb, pooled, _ = self.pipe.encode_prompt(prompts, prompt_2=None, device=self._text_device(),
                                                 max_sequence_length=self.max_sequence_length)
        return emb, pooled


class SD3Conditioner(T5PipelineConditioner):
    """SD3 / SD3.5: CLIP-L and CLIP-G penultimate hidden states concatenated on the feature axis and zero-padded to
    T5's width, then the T5 tokens on the sequence axis: (B, 77 + max_sequence_length, D_T5); pooled = CLIP-L and
    CLIP-G pooled projections concatenated (B, P_L + P_G). Exactly ``StableDiffusion3Pipeline.encode_prompt``
    (one prompt for all three encoders), which is called here; the null condition is its encoding of "", the
    pipeline's default negative prompt (SD3 has no all-zero null, unlike SDXL).
    """

    def __init__(self, pipe, label_prompts, resolution, vae_dtype=torch.float32, max_sequence_length: int = 256):
        super().__init__(pipe, label_prompts, resolution, vae_dtype, max_sequence_length)

    def encode_prompt(self, prompts):
        emb, _, pooled, _ = self.pipe.encode_prompt(prompts, prompt_2=None, prompt_3=None, device=self._text_device(),
                                                    do_classifier_free_guidance=False,
                                                    max_sequence_length=self.max_sequence_length)
        return emb, pooled
