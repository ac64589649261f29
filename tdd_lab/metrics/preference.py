"""Human-preference scores of samples against their prompts, from local weights only (never downloaded).

- ``hpsv2``: Human Preference Score v2.1 (Wu et al. 2023, arXiv 2306.09341), an open_clip ViT-H-14 whose weights
  are the HPS checkpoint (``HPS_v2.1_compressed.pt``, a dict whose ``state_dict`` is open_clip's CLIP). The public
  ``hpsv2`` scorer takes the unit-norm image and text features and reads the diagonal of ``image @ text.T``: the
  cosine of each (image, prompt) pair, without the logit scale; its benchmark tables print 100 x the mean.
- ``pickscore``: PickScore_v1 (Kirstain et al. 2023, arXiv 2305.01569), a CLIP-H fine-tuned on Pick-a-Pic, through
  transformers' ``CLIPModel`` and the ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` processor; per sample
  ``logit_scale.exp() * cos(image, text)`` (the model card's score), averaged.

Sample i is scored against its prompt exactly as :class:`~tdd_lab.metrics.clip.CLIPScore` does (the same
``prompts_for``). ImageReward is not offered: see the README ("Metrics for real teachers") for the pins that
keep it out.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tdd_lab.metrics.base import Metrics
from tdd_lab.metrics.clip import CLIPScore, read_prompts
from tdd_lab.metrics.features import MissingWeightsError, require_file, resolve_device, to_uint8_images

HPSV2_SOURCE = "HPS_v2.1_compressed.pt from the Hugging Face repo xswu/HPSv2"
PICKSCORE_SOURCE = "the Hugging Face repo yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR_SOURCE = "the processor files of the Hugging Face repo laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
PROCESSOR_CONFIGS = ("preprocessor_config.json", "processor_config.json")  # the hub's, transformers 5's save
WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                "pytorch_model.bin.index.json")


def alignment_scores(image_emb: torch.Tensor, text_emb: torch.Tensor,
                     scale: float | torch.Tensor = 1.0) -> torch.Tensor:
    """``scale * cos(image_i, text_i)`` per pair: (n, E), (n, E) -> (n,). The diagonal of ``scale * I @ T.T`` for
    row-normalised I and T (HPSv2: scale 1; PickScore: ``logit_scale.exp()``; CLIP score: 100, then clamped at 0)."""
    image_emb = torch.nn.functional.normalize(image_emb.float(), dim=-1)  # (n, E)
    text_emb = torch.nn.functional.normalize(text_emb.float(), dim=-1)    # (n, E)
    return scale * (image_emb * text_emb).sum(-1)                         # (n,)


def require_folder(path: str | Path | None, what: str, source: str, needs: tuple[tuple[str, ...], ...]) -> Path:
    """``path`` as a Path if it is a folder holding one file of each group of ``needs`` (alternative names), else
    :class:`MissingWeightsError` naming the folder, what it lacks and where it comes from."""
    folder = Path(str(path)).expanduser()
    if path is None or not folder.is_dir():
        lack = "not found"
    else:
        missing = [" or ".join(names) for names in needs if not any((folder / n).is_file() for n in names)]
        lack = f"lacks {', '.join(missing)}" if missing else ""
    if lack:
        raise MissingWeightsError(f"{what}: weights folder {str(path)!r} {lack}. Provide it locally ({source}); "
                                  "tdd_lab never downloads weights")
    return folder


class HPSv2(CLIPScore):
    """``hpsv2``: HPS v2.1 of samples against their prompts (open_clip ViT-H-14 with the HPS checkpoint).

    Preprocessing is the HPS scorer's: the longest side resized to the model's 224 px (bicubic), padded to a
    square (a plain resize for the square samples of a diffusion model), the CLIP mean/std. Features in float32.
    """

    def __init__(
        self,
        prompt_file: str,                 # one prompt per line; sample i is scored against its prompt (as CLIPScore)
        checkpoint: str | None = None,    # local HPS_v2.1_compressed.pt ({"state_dict": open_clip CLIP weights})
        model_name: str = "ViT-H-14",     # open_clip architecture of the checkpoint
        model_config: str | None = None,  # optional JSON of a custom architecture (tests; registered under its stem)
        scale: float = 100.0,             # 100: the HPSv2 benchmark tables' percent; 1: the raw hpsv2.score value
        name: str = "hpsv2",
        batch_size: int = 32,
        device: str = "auto",           # auto: cuda when available
    ):
        import open_clip

        require_file(checkpoint, "HPSv2", HPSV2_SOURCE)
        super().__init__(prompt_file, checkpoint=checkpoint, model_name=model_name, model_config=model_config,
                         name=name, batch_size=batch_size, device=device)
        self.scale = float(scale)
        self._preprocess = open_clip.image_transform(
            self._model.visual.image_size, is_train=False, mean=open_clip.OPENAI_DATASET_MEAN,
            std=open_clip.OPENAI_DATASET_STD, resize_mode="longest", interpolation="bicubic")

    def compute(self, samples, labels, noise, teacher, guider):
        image_emb = self.embed_images(to_uint8_images(samples, teacher))  # (n, E)
        text_emb = self.embed_texts(self.prompts_for(labels))             # (n, E)
        return {self.name: float(alignment_scores(image_emb, text_emb, self.scale).mean())}


class PickScore(Metrics):
    """``pickscore``: PickScore_v1 of samples against their prompts through transformers' CLIP.

    ``model_dir`` holds ``yuvalkirstain/PickScore_v1`` (config.json and the weights), ``processor_dir`` the
    processor of ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` (image processor and tokenizer files); both are read with
    ``local_files_only``. Prompts are tokenised as the model card does (padding, truncation to 77 tokens).
    """

    weight_files = ("model_dir", "processor_dir")  # fingerprinted in the cache keys of teacher numbers
    prompts_for = CLIPScore.prompts_for             # sample i -> its prompt, the same rule as CLIPScore

    def __init__(
        self,
        prompt_file: str,            # one prompt per line; sample i is scored against its prompt (as CLIPScore)
        model_dir: str | None,       # local folder of yuvalkirstain/PickScore_v1
        processor_dir: str | None,   # local folder of laion/CLIP-ViT-H-14-laion2B-s32B-b79K's processor files
        name: str = "pickscore",
        batch_size: int = 32,
        device: str = "auto",        # auto: cuda when available
    ):
        from transformers import CLIPModel, CLIPProcessor

        from tdd_lab.utils.tokenizer import check_tokenizer

        model_folder = require_folder(model_dir, "PickScore", PICKSCORE_SOURCE, (("config.json",), WEIGHT_NAMES))
        proc_folder = require_folder(processor_dir, "PickScore processor", PICKSCORE_PROCESSOR_SOURCE,
                                     (PROCESSOR_CONFIGS, ("tokenizer.json", "vocab.json")))
        self.prompts = read_prompts(prompt_file)
        self.prompt_file, self.model_dir, self.processor_dir = str(prompt_file), str(model_dir), str(processor_dir)
        self.name, self.batch_size, self.device = name, batch_size, resolve_device(device)
        self._model = CLIPModel.from_pretrained(str(model_folder), local_files_only=True).eval().to(self.device)
        self._processor = CLIPProcessor.from_pretrained(str(proc_folder), local_files_only=True)
        check_tokenizer(self._processor.tokenizer, str(proc_folder), self._model.config.text_config.vocab_size)

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> image embeddings (B, E) (projected, not normalised), through the processor."""
        from PIL import Image

        out = []
        for i in range(0, len(images), self.batch_size):
            pil = [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in images[i : i + self.batch_size]]
            pixels = self._processor(images=pil, return_tensors="pt")["pixel_values"].to(self.device)
            pooled = self._model.vision_model(pixel_values=pixels).pooler_output  # (b, D_vision)
            out.append(self._model.visual_projection(pooled).float().cpu())      # (b, E)
        return torch.cat(out)

    @torch.no_grad()
    def embed_texts(self, prompts: list[str]) -> torch.Tensor:
        """Prompt embeddings (B, E) (projected, not normalised)."""
        out = []
        for i in range(0, len(prompts), self.batch_size):
            tokens = self._processor(text=prompts[i : i + self.batch_size], padding=True, truncation=True,
                                     max_length=77, return_tensors="pt").to(self.device)
            pooled = self._model.text_model(input_ids=tokens["input_ids"],
                                            attention_mask=tokens["attention_mask"]).pooler_output  # (b, D_text)
            out.append(self._model.text_projection(pooled).float().cpu())                         # (b, E)
        return torch.cat(out)

    def compute(self, samples, labels, noise, teacher, guider):
        image_emb = self.embed_images(to_uint8_images(samples, teacher))  # (n, E)
        text_emb = self.embed_texts(self.prompts_for(labels))             # (n, E)
        scale = self._model.logit_scale.detach().float().exp().cpu()
        return {self.name: float(alignment_scores(image_emb, text_emb, scale).mean())}
