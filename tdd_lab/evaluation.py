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
from tdd_lab.metrics.base import Metrics
from tdd_lab.samplers.base import Sampler
from tdd_lab.teachers.base import Teacher
from tdd_lab.utils.cache import atomic_write_json, config_key, default_cache_dir

log = logging.getLogger(__name__)


def build_evaluator(metrics_cfg) -> Evaluator:
    """Instantiate ``cfg.metrics``; a missing file (weights, reference, prompts) raises its own FileNotFoundError,
    not Hydra's wrapper, so the entry points report it as ``error: ...`` before any compute."""
    import hydra
    from hydra.errors import InstantiationException

    try:
        return hydra.utils.instantiate(metrics_cfg)
    except InstantiationException as e:
        cause = e
        while cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, FileNotFoundError):
            raise cause from None
        raise


def fixed_noise(n: int, shape: Sequence[int], seed: int) -> torch.Tensor:
    """(n, *shape) noise; row i depends only on ``seed + i``."""
    return torch.stack([torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed + i)) for i in range(n)])


class Evaluator:
    """Samples student and teacher and computes ``metrics``; keys ``eval/<m>@K`` and ``teacher/<m>@K``."""

    def __init__(
        self,
        metrics: Metrics,
        steps: Sequence[int] = (2, 4, 8),  # student step counts
        num_samples: int = 1000,
        batch_size: int = 500,
        seed: int = 0,                     # base of the per-sample seeds
        teacher_w: float = 3.5,            # teacher CFG, "w + 1" form (the trajectory the student distils)
        guidance_scale: float = 1.0,       # CFG applied to the student at sampling (standard form; 1 = off)
        teacher_steps: int = 50,           # the teacher's reference sampling: DDIM with this many steps
        cache_dir: str | None = None,
        progress: bool = True,
    ):
        self.metrics, self.steps = metrics, [int(k) for k in steps]
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.teacher_w, self.guidance_scale, self.teacher_steps = teacher_w, guidance_scale, teacher_steps
        self.cache_dir, self.progress = cache_dir, progress

    def inputs(self, teacher: Teacher) -> tuple[torch.Tensor, torch.Tensor]:
        noise = fixed_noise(self.num_samples, teacher.sample_shape, self.seed)
        labels = torch.arange(self.num_samples) % teacher.num_classes
        return noise, labels

    def _generate(self, eps_fn: Callable, teacher: Teacher, sampler: Sampler, k: int, n_ddim: int, guidance_scale: float,
                  noise, labels, timestep_cond_fn: Callable | None, device) -> torch.Tensor:
        out = []
        gen = torch.Generator(device=device).manual_seed(self.seed)
        null = teacher.null_condition(device)
        for i in range(0, len(noise), self.batch_size):
            z, y = noise[i : i + self.batch_size].to(device), labels[i : i + self.batch_size].to(device)
            tc = timestep_cond_fn(len(z), device) if timestep_cond_fn else None
            out.append(sampler.sample(eps_fn, z, teacher.conditions(y), null, k, teacher.schedule.diffusers_config(),
                                      n_ddim, guidance_scale, tc, gen).cpu())
        return torch.cat(out)

    def _score(self, prefix: str, k: int, samples, labels, noise, teacher) -> dict[str, float]:
        """Metrics of one sample set, named ``<prefix>/<metric>@<k>``."""
        scores = self.metrics.compute(samples, labels, noise, teacher, self.teacher_w)
        return {f"{prefix}/{name}@{k}": v for name, v in scores.items()}

    def _cache_key(self, teacher: Teacher, sampler_desc, num_ddim_timesteps: int, device, **extra) -> str:
        describe = getattr(teacher, "describe", lambda: {"class": type(teacher).__name__})
        return config_key({"teacher": describe(), "sampler": sampler_desc, "n_ddim": num_ddim_timesteps,
                           "n": self.num_samples, "seed": self.seed, "w": self.teacher_w,
                           "batch_size": self.batch_size, "device": torch.device(device).type, **extra})

    @torch.no_grad()
    def teacher_reference(self, teacher: Teacher, num_ddim_timesteps: int, device="cpu") -> torch.Tensor:
        """The teacher's own samples (n, ...): ``teacher_steps`` DDIM steps with CFG ``teacher_w + 1`` from the
        evaluation noise and labels; the reference of ``fid_teacher`` (distillation fidelity). Cached."""
        key = self._cache_key(teacher, teacher.reference_sampler().describe(), num_ddim_timesteps, device,
                              steps=self.teacher_steps, v=1)
        file = Path(self.cache_dir or default_cache_dir()) / "teacher-reference" / f"{key}.safetensors"
        if file.exists():
            return load_file(str(file))["samples"]
        noise, labels = self.inputs(teacher)
        eps_fn = lambda x, t, c, tc: teacher.denoise(x, t, c)  # noqa: E731  (x0, eps): flow samplers need both
        x = self._generate(eps_fn, teacher, teacher.reference_sampler(), self.teacher_steps, num_ddim_timesteps,
                           self.teacher_w + 1.0, noise, labels, None, device)
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(f".{file.name}.tmp")
        save_file({"samples": x.contiguous()}, str(tmp))
        tmp.replace(file)
        return x

    def _prepare_metrics(self, teacher: Teacher, num_ddim_timesteps: int, device) -> None:
        """Hand metrics that compare against the teacher (``needs_teacher_samples``) its reference samples."""
        if getattr(self.metrics, "needs_teacher_samples", False):
            self.metrics.set_teacher_samples(self.teacher_reference(teacher, num_ddim_timesteps, device), teacher)

    @torch.no_grad()
    def evaluate_student(self, eps_fn: Callable, teacher: Teacher, guidance: Guidance, sampler: Sampler,
                         num_ddim_timesteps: int, device="cpu") -> tuple[dict[str, float], dict[int, torch.Tensor]]:
        """Metrics ``eval/<m>@K`` of the student and its samples per K."""
        sampler = sampler.deterministic() if self.metrics.deterministic else sampler
        self._prepare_metrics(teacher, num_ddim_timesteps, device)
        noise, labels = self.inputs(teacher)
        scale, tc_fn = guidance.student_sampling(self.teacher_w, self.guidance_scale)
        results, samples = {}, {}
        for k in tqdm(self.steps, desc="evaluating student", disable=not self.progress):
            x = self._generate(eps_fn, teacher, sampler, k, num_ddim_timesteps, scale, noise, labels, tc_fn, device)
            samples[k] = x
            scores = self._score("eval", k, x, labels, noise, teacher)
            results.update(scores)
            log.info("student %d steps: %s", k, {n: round(v, 4) for n, v in scores.items()})
        return results, samples

    @torch.no_grad()
    def evaluate_teacher(self, teacher: Teacher, sampler: Sampler, num_ddim_timesteps: int,
                         device="cpu") -> tuple[dict[str, float], dict[int, torch.Tensor]]:
        """``teacher/<m>@K`` with the student's sampler at its step counts and ``teacher/<m>@50`` with DDIM, cached."""
        sampler = sampler.deterministic() if self.metrics.deterministic else sampler
        describe = getattr(teacher, "describe", lambda: {"class": type(teacher).__name__})
        key = config_key({"teacher": describe(), "sampler": sampler.describe(), "n_ddim": num_ddim_timesteps,
                          "metrics": self.metrics.describe(), "steps": self.steps, "n": self.num_samples,
                          "seed": self.seed, "w": self.teacher_w, "teacher_steps": self.teacher_steps,
                          # the re-noising stream of stochastic samplers depends on batching and device
                          "batch_size": self.batch_size, "device": torch.device(device).type, "v": 2})
        cache = Path(self.cache_dir or default_cache_dir()) / "teacher-metrics" / f"{key}.json"
        noise, labels = self.inputs(teacher)
        eps_fn = lambda x, t, c, tc: teacher.denoise(x, t, c)  # noqa: E731  (x0, eps): flow samplers need both
        cfg = self.teacher_w + 1.0  # "w + 1" form -> standard CFG scale
        sample_file = cache.with_suffix(".safetensors")
        if cache.exists() and sample_file.exists():
            loaded = load_file(str(sample_file))
            return json.loads(cache.read_text()), {int(k): v for k, v in loaded.items()}
        self._prepare_metrics(teacher, num_ddim_timesteps, device)
        runs = [(k, sampler) for k in self.steps] + [(self.teacher_steps, None)]
        results, samples = {}, {}
        for k, smp in tqdm(runs, desc="evaluating teacher (cached afterwards)", disable=not self.progress):
            if smp is None:  # the DDIM reference run, shared with teacher_reference (same noise, sampler and CFG)
                x = self.teacher_reference(teacher, num_ddim_timesteps, device)
            else:
                x = self._generate(eps_fn, teacher, smp, k, num_ddim_timesteps, cfg, noise, labels, None, device)
            samples[k] = x
            results.update(self._score("teacher", k, x, labels, noise, teacher))
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = sample_file.with_name(f".{sample_file.name}.tmp")
        save_file({str(k): v.contiguous() for k, v in samples.items()}, str(tmp))
        tmp.replace(sample_file)
        atomic_write_json(cache, results)  # written last: its presence means both files are complete
        return results, samples
