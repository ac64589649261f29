"""Metrics of the coloured-MNIST teachers (no external weights): decode, then score with tdd_lab's own models.

* ``class_acc``: a digit classifier that tdd_lab trains on the 4,000 training digits (grayscale) reads
  the prompted digit (its held-out accuracy on the other 1,000 is recorded with it);
* ``color_acc``: the ink colour read from the pixels (:func:`~tdd_lab.data.mnist_color.read_colors`)
  is the prompted one;
* ``fid_teacher``: Fréchet distance in the classifier's feature space against the teacher's own
  50-step CFG samples from the same noise and prompts (distillation fidelity, the primary number);
* ``fid``: the same against the 1,000 held-out real digits.

The digit and colour of evaluation label i come from parsing the teacher's prompt i with the
caption template; a prompt outside the template is refused by name.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from tdd_lab.data.mnist_color import DATA_VERSION, dataset_tensors, grayscale, parse_prompt, read_colors
from tdd_lab.metrics.base import Metrics
from tdd_lab.utils.cache import cached_dir, default_cache_dir, tensor_fingerprint


class MnistClassifier(nn.Module):
    """CNN on grayscale digits (B, 1, 32, 32) in [-1, 1]; ``features`` are the 64-d penultimate activations."""

    num_features = 64

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.SiLU(),
            nn.Conv2d(32, 64, 3, padding=1, stride=2), nn.SiLU(),                # 16x16
            nn.Conv2d(64, 64, 3, padding=1, stride=2), nn.SiLU(),                # 8x8
            nn.Conv2d(64, 128, 3, padding=1), nn.SiLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 64), nn.SiLU(),
        )
        self.head = nn.Linear(64, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 32, 32) in [-1, 1] -> (B, 64)."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@torch.enable_grad()  # may be reached from no_grad evaluation code
def _train_classifier(out: Path, seed: int, epochs: int) -> None:
    from tdd_lab.utils.threads import fixed_threads

    with fixed_threads(1):
        torch.manual_seed(seed)
        images, digits, _ = dataset_tensors("train")
        x_all = grayscale(images)
        model = MnistClassifier()
        opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
        gen = torch.Generator().manual_seed(seed)
        for _ in tqdm(range(epochs), desc="training MNIST classifier (cached afterwards)", mininterval=5.0):
            perm = torch.randperm(len(x_all), generator=gen)
            for i in range(0, len(perm), 64):
                b = perm[i : i + 64]
                dx, dy = torch.randint(-2, 3, (2,), generator=gen).tolist()    # +-2 px shifts
                x = torch.roll(x_all[b], shifts=(dx, dy), dims=(2, 3))
                loss = nn.functional.cross_entropy(model(x), digits[b])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        model.eval()
        held, held_digits, _ = dataset_tensors("heldout")
        with torch.no_grad():
            acc = (model(grayscale(held)).argmax(1) == held_digits).float().mean().item()
    save_file(model.state_dict(), str(out / "classifier.safetensors"))
    (out / "classifier.json").write_text(json.dumps({"heldout_accuracy": acc, "epochs": epochs, "seed": seed}))


def load_mnist_classifier(cache_dir: str | Path | None = None, seed: int = 0, epochs: int = 15) -> MnistClassifier:
    """The cached classifier (trained on first use); ``.heldout_accuracy``: accuracy on the 1,000 held-out digits."""
    key = {"seed": seed, "epochs": epochs, "data": DATA_VERSION, "v": 1}
    path = cached_dir(cache_dir or default_cache_dir(), "mnist-classifier", key,
                      lambda out: _train_classifier(out, seed, epochs))
    model = MnistClassifier()
    model.load_state_dict(load_file(str(path / "classifier.safetensors")))
    model.heldout_accuracy = json.loads((path / "classifier.json").read_text())["heldout_accuracy"]
    return model.eval().requires_grad_(False)


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets (N, D) and (M, D) (clean-fid's formula)."""
    from cleanfid.fid import frechet_distance

    return float(frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)))


def prompt_targets(prompts: list[str], labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Digit (n,) and colour index (n,) of each sample's prompt (``prompts[label]``)."""
    parsed = torch.tensor([parse_prompt(p) for p in prompts])        # (P, 2)
    rows = parsed[labels.cpu().long()]
    return rows[:, 0], rows[:, 1]


class MnistMetrics(Metrics):
    """``class_acc``, ``color_acc``, ``fid_teacher`` and ``fid`` of decoded coloured-MNIST samples."""

    needs_teacher_samples = True

    def __init__(self, cache_dir: str | None = None, classifier_seed: int = 0, classifier_epochs: int = 15,
                 decode_batch: int = 250):
        self.cache_dir, self.classifier_seed, self.classifier_epochs = cache_dir, classifier_seed, classifier_epochs
        self.decode_batch = decode_batch
        self._classifier: MnistClassifier | None = None
        self._real: np.ndarray | None = None
        self._teacher_feats: np.ndarray | None = None
        self._teacher_key: str | None = None

    @property
    def classifier(self) -> MnistClassifier:
        if self._classifier is None:
            self._classifier = load_mnist_classifier(self.cache_dir, self.classifier_seed, self.classifier_epochs)
        return self._classifier

    @torch.no_grad()
    def images(self, samples: torch.Tensor, teacher) -> torch.Tensor:
        """Latents (n, C, h, w) -> decoded images (n, 3, 32, 32) in [-1, 1] on the CPU."""
        return torch.cat([teacher.decode(samples[i : i + self.decode_batch].to(teacher.device)).float().cpu()
                          for i in range(0, len(samples), self.decode_batch)])

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> np.ndarray:
        return self.classifier.features(grayscale(images)).double().numpy()

    def real_features(self) -> np.ndarray:
        if self._real is None:
            self._real = self.features(dataset_tensors("heldout")[0])
        return self._real

    def set_teacher_samples(self, samples, teacher=None) -> None:
        if teacher is None:
            raise ValueError("MnistMetrics needs the teacher to decode its reference samples")
        key = tensor_fingerprint(samples)
        if key != self._teacher_key:
            self._teacher_feats, self._teacher_key = self.features(self.images(samples, teacher)), key

    @torch.no_grad()
    def compute(self, samples, labels, noise, teacher, guider):
        if self._teacher_feats is None:
            raise RuntimeError("MnistMetrics: set_teacher_samples was not called (the evaluator hands the teacher's "
                               "reference samples to metrics with needs_teacher_samples)")
        images = self.images(samples, teacher)
        digit, color = prompt_targets(list(teacher.eval_prompts), labels)
        feats = self.features(images)
        pred = self.classifier.head(torch.from_numpy(feats).float()).argmax(1)
        return {"class_acc": float((pred == digit).float().mean()),
                "color_acc": float((read_colors(images) == color).float().mean()),
                "fid_teacher": frechet(feats, self._teacher_feats),
                "fid": frechet(feats, self.real_features())}

    def describe(self) -> dict:
        return {"class": type(self).__name__, "classifier_seed": self.classifier_seed,
                "classifier_epochs": self.classifier_epochs, "data": DATA_VERSION}


@torch.no_grad()
def stock_pipeline_scores(pipe, n: int = 500, steps: int = 4, guidance_scale: float = 1.0, eta: float | None = None,
                          seed: int = 0, batch: int = 250, max_sequence_length: int = 16, cache_dir: str | None = None,
                          classifier_epochs: int = 15) -> dict[str, float]:
    """``class_acc`` and ``color_acc`` of a stock ``StableDiffusionXLPipeline`` / ``FluxPipeline`` (e.g. a student
    loaded with ``load_lora_weights`` and its exported scheduler) on the evaluator's inputs: sample i has prompt
    ``label_prompts()[i % 50]``, initial noise seeded with ``seed + i`` and one re-noising generator seeded with
    ``seed`` across batches (as :class:`~tdd_lab.evaluation.Evaluator` draws them), so the numbers are comparable
    to a run's ``eval/class_acc@K`` and ``eval/color_acc@K`` sample for sample."""
    from tdd_lab.data.mnist_color import label_prompts
    from tdd_lab.evaluation import fixed_noise
    from tdd_lab.nets.flux import pack_latents

    flux = type(pipe).__name__.startswith("Flux")
    vae = pipe.vae.config
    side = 32 // 2 ** (len(vae.block_out_channels) - 1)
    noise = fixed_noise(n, (vae.latent_channels, side, side), seed)
    labels = torch.arange(n) % 50
    prompts = label_prompts()
    gen = torch.Generator().manual_seed(seed)
    images = []
    for i in range(0, n, batch):
        z, p = noise[i : i + batch], [prompts[int(y)] for y in labels[i : i + batch]]
        kwargs: dict = dict(prompt=p, num_inference_steps=steps, height=32, width=32, output_type="pt")
        if flux:
            pipe.scheduler.generator = gen  # FluxPipeline does not hand its generator to step()
            if eta is not None:
                pipe.scheduler.register_to_config(eta=eta)
            kwargs.update(latents=pack_latents(z), max_sequence_length=max_sequence_length)
            if guidance_scale != 1.0:
                kwargs.update(true_cfg_scale=guidance_scale, negative_prompt=[""] * len(p))
        else:
            kwargs.update(latents=z, generator=gen, guidance_scale=guidance_scale)  # scaled by init_noise_sigma inside
            if eta is not None:
                kwargs["eta"] = eta
        images.append(pipe(**kwargs).images.float().cpu() * 2 - 1)
    x = torch.cat(images)
    clf = load_mnist_classifier(cache_dir, 0, classifier_epochs)
    digit, color = prompt_targets(prompts, labels)
    return {"class_acc": float((clf(grayscale(x)).argmax(1) == digit).float().mean()),
            "color_acc": float((read_colors(x) == color).float().mean())}
