"""CLIP score through open_clip from a local checkpoint, over a prompt file (one prompt per line).

Sample i, generated for class label ``y``, is scored against prompt line ``y`` (the evaluator cycles
labels over the teacher's classes, i.e. over the prompt list). Score: 100 * max(cos(image, text), 0)
averaged over samples (Hessel et al. 2021; torchmetrics' ``CLIPScore`` convention).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from tdd_lab.metrics.base import Metrics
from tdd_lab.metrics.features import require_file, resolve_device, to_uint8_images


def read_prompts(path: str | Path) -> list[str]:
    """Non-empty stripped lines of a prompt file (COCO-caption or Parti style)."""
    file = Path(str(path)).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"prompt file {str(file)!r} not found (one prompt per line)")
    prompts = [ln.strip() for ln in file.read_text().splitlines() if ln.strip()]
    if not prompts:
        raise ValueError(f"prompt file {str(file)!r} holds no prompt")
    return prompts


def clip_metric_name(model_name: str) -> str:
    """``ViT-g-14`` -> ``clip_vitg14``."""
    return "clip_" + re.sub(r"[^a-z0-9]", "", model_name.lower())


class CLIPScore(Metrics):
    """``clip_<model>``: CLIP score of samples against their prompts with an open_clip model."""

    weight_files = ("checkpoint",)  # the open_clip weights (fingerprinted in the cache keys of teacher numbers)

    def __init__(
        self,
        prompt_file: str,                  # one prompt per line; line y is the prompt of class label y
        checkpoint: str | None = None,     # local open_clip weights (.safetensors / .bin / .pt); never downloaded
        model_name: str = "ViT-g-14",      # open_clip architecture
        model_config: str | None = None,   # optional JSON of a custom architecture (registered under its file stem)
        name: str | None = None,           # default clip_<model>, e.g. clip_vitg14
        batch_size: int = 64,
        device: str = "auto",           # auto: cuda when available
    ):
        import open_clip

        if model_config is not None:
            cfg_file = Path(str(model_config)).expanduser()
            if not cfg_file.is_file():
                raise FileNotFoundError(f"open_clip model config {str(cfg_file)!r} not found")
            open_clip.add_model_config(str(cfg_file))
            model_name = cfg_file.stem
        require_file(checkpoint, f"CLIP score ({model_name})",
                     f"open_clip would download the {model_name} weights from the Hugging Face hub")
        self.prompts = read_prompts(prompt_file)
        self.prompt_file, self.checkpoint, self.model_name = str(prompt_file), str(checkpoint), model_name
        self.name, self.batch_size = name or clip_metric_name(model_name), batch_size
        self.device = resolve_device(device)
        self._model, _, self._preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=str(Path(self.checkpoint).expanduser()), device=self.device)
        self._model.eval()
        self._tokenizer = open_clip.get_tokenizer(model_name)

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> unit-norm image embeddings (B, E), through open_clip's own preprocessing."""
        from PIL import Image

        out = []
        for i in range(0, len(images), self.batch_size):
            pil = [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in images[i : i + self.batch_size]]
            x = torch.stack([self._preprocess(p) for p in pil]).to(self.device)
            out.append(self._model.encode_image(x).float().cpu())
        return torch.nn.functional.normalize(torch.cat(out), dim=-1)

    @torch.no_grad()
    def embed_texts(self, prompts: list[str]) -> torch.Tensor:
        """Unit-norm text embeddings (B, E)."""
        out = [self._model.encode_text(self._tokenizer(prompts[i : i + self.batch_size]).to(self.device)).float().cpu()
               for i in range(0, len(prompts), self.batch_size)]
        return torch.nn.functional.normalize(torch.cat(out), dim=-1)

    def prompts_for(self, labels: torch.Tensor) -> list[str]:
        labels = labels.cpu().tolist()
        bad = [y for y in labels if not 0 <= y < len(self.prompts)]
        if bad:
            raise ValueError(f"{self.name}: label {bad[0]} has no prompt: {self.prompt_file} has {len(self.prompts)} "
                             "lines (line y is the prompt of label y)")
        return [self.prompts[y] for y in labels]

    def compute(self, samples, labels, noise, teacher, guider):
        image_emb = self.embed_images(to_uint8_images(samples, teacher))  # (n, E)
        text_emb = self.embed_texts(self.prompts_for(labels))             # (n, E)
        cos = (image_emb * text_emb).sum(-1)
        return {self.name: float(100 * cos.clamp(min=0).mean())}
