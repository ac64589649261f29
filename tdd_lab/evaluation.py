"""Evaluation of a student and of its teacher at several step counts, with per-sample fixed seeds.

Every arm of an ablation sees the same initial noise: sample i is drawn from a generator seeded
with ``seed + i``; labels cycle over the classes. Teacher numbers are computed once per
(teacher, sampler, evaluation settings) and cached as JSON.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from tdd_lab.guidance.base import Guidance
from tdd_lab.guider import Guider
from tdd_lab.metrics.base import Metrics
from tdd_lab.samplers.base import Sampler
from tdd_lab.teachers.base import Teacher
from tdd_lab.utils.cache import atomic_write_json, config_key, default_cache_dir

log = logging.getLogger(__name__)


def fixed_noise(n: int, shape: Sequence[int], seed: int) -> torch.Tensor:
    """(n, *shape) noise; row i depends only on ``seed + i``."""
    return torch.stack([torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed + i)) for i in range(n)])


class Evaluator:
    """Samples student and teacher and computes ``metrics``; keys ``eval/<m>@K`` and ``teacher/<m>@K``.

    The teacher's guidance strength comes from the run's guidance component (``Guidance.teacher_w``):
    the teacher is sampled with that guider, and the metrics compare against the trajectory it defines.
    """

    def __init__(
        self,
        metrics: Metrics,
        steps: Sequence[int] = (2, 4, 8),  # student step counts
        num_samples: int = 1000,
        batch_size: int = 500,
        seed: int = 0,                     # base of the per-sample seeds
        guidance_scale: float = 1.0,       # CFG on the student at sampling (diffusers' convention; 1 = off)
        teacher_steps: int = 50,           # the teacher's reference sampling: DDIM with this many steps
        cache_dir: str | None = None,
        progress: bool = True,
    ):
        self.metrics, self.steps = metrics, [int(k) for k in steps]
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.guidance_scale, self.teacher_steps = guidance_scale, teacher_steps
        self.cache_dir, self.progress = cache_dir, progress

    def inputs(self, teacher: Teacher) -> tuple[torch.Tensor, torch.Tensor]:
        noise = fixed_noise(self.num_samples, teacher.sample_shape, self.seed)
        labels = torch.arange(self.num_samples) % teacher.num_classes
        return noise, labels

    def _generate(self, denoiser, teacher: Teacher, sampler: Sampler, k: int, guider: Guider, noise, labels,
                  timestep_cond_fn: Callable | None, device) -> torch.Tensor:
        out = []
        gen = torch.Generator(device=device).manual_seed(self.seed)
        conditioner = teacher.conditioner
        for i in range(0, len(noise), self.batch_size):
            z, y = noise[i : i + self.batch_size].to(device), labels[i : i + self.batch_size].to(device)
            tc = timestep_cond_fn(len(z), device) if timestep_cond_fn else None
            cond = conditioner.conditions(y)
            out.append(sampler.sample(denoiser, z, cond, conditioner.null_like(cond), k, guider, tc, gen).cpu())
        return torch.cat(out)

    def _score(self, prefix: str, k: int, samples, labels, noise, teacher, guider: Guider) -> dict[str, float]:
        """Metrics of one sample set, named ``<prefix>/<metric>@<k>``."""
        scores = self.metrics.compute(samples, labels, noise, teacher, guider)
        return {f"{prefix}/{name}@{k}": v for name, v in scores.items()}

    def _cache_key(self, teacher: Teacher, guidance: Guidance, sampler: Sampler, device, **extra) -> str:
        return config_key({"teacher": teacher.describe(), "sampler": sampler.describe(), "n": self.num_samples,
                           "seed": self.seed, "w": guidance.teacher_w, "batch_size": self.batch_size,
                           "device": torch.device(device).type, **extra,
                           # samplers step FLUX in the pipeline's packed layout (re-noising draws moved): new numbers
                           **({"layout": "packed"} if hasattr(teacher.denoiser.net, "to_scheduler_layout") else {})})

    @torch.no_grad()
    def teacher_reference(self, teacher: Teacher, guidance: Guidance, num_ddim_timesteps: int,
                          device="cpu") -> torch.Tensor:
        """The teacher's own samples (n, ...): ``teacher_steps`` steps of its reference sampler (DDIM), guided at the
        run's ``teacher_w``, from the evaluation noise and labels; the reference of ``fid_teacher``. Cached."""
        sampler = teacher.reference_sampler(num_ddim_timesteps)
        key = self._cache_key(teacher, guidance, sampler, device, steps=self.teacher_steps, v=2)
        file = Path(self.cache_dir or default_cache_dir()) / "teacher-reference" / f"{key}.safetensors"
        if file.exists():
            return load_file(str(file))["samples"]
        noise, labels = self.inputs(teacher)
        x = self._generate(teacher.denoiser, teacher, sampler, self.teacher_steps, guidance.teacher_guider(), noise,
                           labels, None, device)
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(f".{file.name}.tmp")
        save_file({"samples": x.contiguous()}, str(tmp))
        tmp.replace(file)
        return x

    def _prepare_metrics(self, teacher: Teacher, guidance: Guidance, num_ddim_timesteps: int, device) -> None:
        """Hand metrics that compare against the teacher's own samples their reference."""
        if self.metrics.needs_teacher_samples:
            self.metrics.set_teacher_samples(self.teacher_reference(teacher, guidance, num_ddim_timesteps, device), teacher)

    @torch.no_grad()
    def evaluate_student(self, denoiser, teacher: Teacher, guidance: Guidance, sampler: Sampler,
                         device="cpu") -> tuple[dict[str, float], dict[int, torch.Tensor]]:
        """Metrics ``eval/<m>@K`` of the student ``denoiser`` and its samples per K."""
        sampler = sampler.deterministic() if self.metrics.deterministic else sampler
        self._prepare_metrics(teacher, guidance, sampler.num_ddim_timesteps, device)
        noise, labels = self.inputs(teacher)
        guider, tc_fn = guidance.student_sampling(self.guidance_scale)
        reference = guidance.teacher_guider()
        results, samples = {}, {}
        for k in tqdm(self.steps, desc="evaluating student", disable=not self.progress):
            x = self._generate(denoiser, teacher, sampler, k, guider, noise, labels, tc_fn, device)
            samples[k] = x
            scores = self._score("eval", k, x, labels, noise, teacher, reference)
            results.update(scores)
            log.info("student %d steps: %s", k, {n: round(v, 4) for n, v in scores.items()})
        return results, samples

    @torch.no_grad()
    def evaluate_teacher(self, teacher: Teacher, guidance: Guidance, sampler: Sampler,
                         device="cpu") -> tuple[dict[str, float], dict[int, torch.Tensor]]:
        """``teacher/<m>@K`` with the student's sampler at its step counts and ``teacher/<m>@50`` with the reference
        sampler, both guided at ``teacher_w``; cached."""
        sampler = sampler.deterministic() if self.metrics.deterministic else sampler
        # the re-noising stream of stochastic samplers depends on batching and device: both are in the key
        key = self._cache_key(teacher, guidance, sampler, device, metrics=self.metrics.describe(), steps=self.steps,
                              teacher_steps=self.teacher_steps, v=3)
        cache = Path(self.cache_dir or default_cache_dir()) / "teacher-metrics" / f"{key}.json"
        sample_file = cache.with_suffix(".safetensors")
        if cache.exists() and sample_file.exists():
            loaded = load_file(str(sample_file))
            return json.loads(cache.read_text()), {int(k): v for k, v in loaded.items()}
        n_ddim = sampler.num_ddim_timesteps
        self._prepare_metrics(teacher, guidance, n_ddim, device)
        noise, labels = self.inputs(teacher)
        guider = guidance.teacher_guider()
        runs = [(k, sampler) for k in self.steps] + [(self.teacher_steps, None)]
        results, samples = {}, {}
        for k, smp in tqdm(runs, desc="evaluating teacher (cached afterwards)", disable=not self.progress):
            if smp is None:  # the reference run, shared with teacher_reference (same noise, sampler and guidance)
                x = self.teacher_reference(teacher, guidance, n_ddim, device)
            else:
                x = self._generate(teacher.denoiser, teacher, smp, k, guider, noise, labels, None, device)
            samples[k] = x
            results.update(self._score("teacher", k, x, labels, noise, teacher, guider))
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = sample_file.with_name(f".{sample_file.name}.tmp")
        save_file({str(k): v.contiguous() for k, v in samples.items()}, str(tmp))
        tmp.replace(sample_file)
        atomic_write_json(cache, results)  # written last: its presence means both files are complete
        return results, samples
