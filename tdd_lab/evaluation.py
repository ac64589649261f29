"""Evaluation of a student and of its teacher at several step counts, with per-sample fixed seeds.

Every arm of an ablation sees the same initial noise: sample i is drawn from a generator seeded
with ``seed + i``; labels cycle over the classes, or with a ``prompt_file`` (the text-to-image protocol)
label i is prompt line i. Stochastic samplers draw their re-noising noise from a generator seeded with
``seed + b`` for batch b of the global batching (``batch_size`` samples each), so a sample's randomness
depends on its index, the seed and ``batch_size`` only. That makes sampling splittable over ranks
(:meth:`Evaluator.split_over_ranks`): rank r generates batches r, r + W, ...; rank 0 gathers them in
order and computes every metric once, and the numbers equal a single-process run. Teacher numbers are
computed once per (teacher, sampler, evaluation settings) and cached as JSON.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator, Sequence
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


def rank_batches(num_batches: int, rank: int, world_size: int) -> range:
    """The batches of the global batching that ``rank`` of ``world_size`` generates: rank, rank + W, ..."""
    return range(rank, num_batches, world_size)


def _world(group) -> tuple[int, int]:
    """(rank, world size) in ``group``; (0, 1) without one."""
    if group is None:
        return 0, 1
    import torch.distributed as dist

    return dist.get_rank(group), dist.get_world_size(group)


class Evaluator:
    """Samples student and teacher and computes ``metrics``; keys ``eval/<m>@K`` and ``teacher/<m>@K``.

    The teacher's guidance strength comes from the run's guidance component (``Guidance.teacher_w``):
    the teacher is sampled with that guider, and the metrics compare against the trajectory it defines.
    With ``prompt_file`` (``metrics=coco``) label i is caption line i of that file, which must also be the
    teacher's evaluation prompt file (the diffusers teachers' ``eval_prompt_file`` defaults to it).
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
        prompt_file: str | None = None,    # text-to-image protocol: sample i has prompt line i (no cycling)
    ):
        self.metrics, self.steps = metrics, [int(k) for k in steps]
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.guidance_scale, self.teacher_steps = guidance_scale, teacher_steps
        self.cache_dir, self.progress = cache_dir, progress
        self.prompt_file, self._prompts = None, None
        if prompt_file is not None:
            from tdd_lab.teachers.latent import read_prompt_file

            self.prompt_file, self._prompts = str(prompt_file), read_prompt_file(prompt_file)
            if num_samples > len(self._prompts):
                raise ValueError(f"prompt_file {self.prompt_file} holds {len(self._prompts)} prompts, fewer than "
                                 f"num_samples={num_samples} (sample i has prompt line i)")
        self._group = None  # a torch.distributed group while inside split_over_ranks()

    @contextlib.contextmanager
    def split_over_ranks(self, group=None) -> Iterator[None]:
        """Inside, sampling is split over the ranks of ``group`` (default: the world) when torch.distributed is
        initialised with more than one rank: every rank must make the same calls; rank 0 gets the results and the
        samples, the other ranks empty dicts. Outside (or with one rank) nothing changes."""
        import torch.distributed as dist

        active = dist.is_available() and dist.is_initialized()
        if active and dist.get_world_size(group) > 1:
            self._group = group if group is not None else dist.group.WORLD
            rank, world = _world(self._group)
            log.info("evaluation sampling split over %d ranks: rank %d makes batches %d, %d, ...", world, rank, rank,
                     rank + world)
        try:
            yield
        finally:
            self._group = None

    @property
    def is_main(self) -> bool:
        """Rank 0 of the split (always True outside :meth:`split_over_ranks`): it computes metrics and writes."""
        return _world(self._group)[0] == 0

    def inputs(self, teacher: Teacher) -> tuple[torch.Tensor, torch.Tensor]:
        """The fixed noise (n, ...) and labels (n,): class label i % classes, or prompt index i with a prompt file."""
        noise = fixed_noise(self.num_samples, teacher.sample_shape, self.seed)
        if self._prompts is None:
            return noise, torch.arange(self.num_samples) % teacher.num_classes
        teacher_prompts = list(teacher.conditioner.label_prompts[: self.num_samples])
        if teacher_prompts != self._prompts[: self.num_samples]:
            raise ValueError(f"metrics.prompt_file={self.prompt_file}: the teacher's evaluation prompts are not this "
                             "file's lines (set teacher.eval_prompt_file to the same file; the diffusers teachers' "
                             "configs default to it)")
        return noise, torch.arange(self.num_samples)

    def _agree(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every rank of the split (e.g. "the cache exists"), so all ranks take the same path."""
        if self._group is None:
            return flag
        import torch.distributed as dist

        obj = [flag]
        dist.broadcast_object_list(obj, src=dist.get_global_rank(self._group, 0), group=self._group)
        return bool(obj[0])

    def _generate(self, denoiser, teacher: Teacher, sampler: Sampler, k: int, guider: Guider, noise, labels,
                  timestep_cond_fn: Callable | None, device) -> torch.Tensor | None:
        """Samples (n, ...) of batches of ``batch_size``; batch b re-noises from a generator seeded ``seed + b``.
        Split over ranks: this rank's batches, gathered in order on rank 0 (the other ranks return None)."""
        conditioner = teacher.conditioner
        rank, world = _world(self._group)
        n_batches = -(-len(noise) // self.batch_size)
        out = []
        for b in rank_batches(n_batches, rank, world):
            i = b * self.batch_size
            z, y = noise[i : i + self.batch_size].to(device), labels[i : i + self.batch_size].to(device)
            gen = torch.Generator(device=device).manual_seed(self.seed + b)
            tc = timestep_cond_fn(len(z), device) if timestep_cond_fn else None
            cond = conditioner.conditions(y)
            out.append(sampler.sample(denoiser, z, cond, conditioner.null_like(cond), k, guider, tc, gen).cpu())
        if world == 1:
            return torch.cat(out)
        import torch.distributed as dist

        shards = [None] * world if rank == 0 else None
        dist.gather_object(out, shards, dst=dist.get_global_rank(self._group, 0), group=self._group)
        if rank != 0:
            return None
        # batch b was made by rank b % W as its (b // W)-th batch
        return torch.cat([shards[b % world][b // world] for b in range(n_batches)])

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
                          device="cpu") -> torch.Tensor | None:
        """The teacher's own samples (n, ...): ``teacher_steps`` steps of its reference sampler (DDIM), guided at the
        run's ``teacher_w``, from the evaluation noise and labels; the reference of ``fid_teacher``. Cached (the
        deterministic reference sampler draws no re-noising noise: the key predates per-batch generators).
        Split over ranks: None on ranks other than 0."""
        sampler = teacher.reference_sampler(num_ddim_timesteps)
        key = self._cache_key(teacher, guidance, sampler, device, steps=self.teacher_steps, v=2)
        file = Path(self.cache_dir or default_cache_dir()) / "teacher-reference" / f"{key}.safetensors"
        if self._agree(file.exists()):
            return load_file(str(file))["samples"] if self.is_main else None
        noise, labels = self.inputs(teacher)
        x = self._generate(teacher.denoiser, teacher, sampler, self.teacher_steps, guidance.teacher_guider(), noise,
                           labels, None, device)
        if not self.is_main:
            return None
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(f".{file.name}.tmp")
        save_file({"samples": x.contiguous()}, str(tmp))
        tmp.replace(file)
        return x

    def _prepare_metrics(self, teacher: Teacher, guidance: Guidance, num_ddim_timesteps: int, device) -> None:
        """Hand metrics that compare against the teacher's own samples their reference (made on every rank)."""
        if self.metrics.needs_teacher_samples:
            reference = self.teacher_reference(teacher, guidance, num_ddim_timesteps, device)
            if self.is_main:
                self.metrics.set_teacher_samples(reference, teacher)

    @torch.no_grad()
    def evaluate_student(self, denoiser, teacher: Teacher, guidance: Guidance, sampler: Sampler,
                         device="cpu") -> tuple[dict[str, float], dict[int, torch.Tensor]]:
        """Metrics ``eval/<m>@K`` of the student ``denoiser`` and its samples per K (split over ranks: on rank 0;
        the other ranks get empty dicts)."""
        sampler = sampler.deterministic() if self.metrics.deterministic else sampler
        self._prepare_metrics(teacher, guidance, sampler.num_ddim_timesteps, device)
        noise, labels = self.inputs(teacher)
        guider, tc_fn = guidance.student_sampling(self.guidance_scale)
        reference = guidance.teacher_guider()
        results, samples = {}, {}
        for k in tqdm(self.steps, desc="evaluating student", disable=not (self.progress and self.is_main)):
            x = self._generate(denoiser, teacher, sampler, k, guider, noise, labels, tc_fn, device)
            if not self.is_main:
                continue
            samples[k] = x
            scores = self._score("eval", k, x, labels, noise, teacher, reference)
            results.update(scores)
            log.info("student %d steps: %s", k, {n: round(v, 4) for n, v in scores.items()})
        return results, samples

    @torch.no_grad()
    def evaluate_teacher(self, teacher: Teacher, guidance: Guidance, sampler: Sampler,
                         device="cpu") -> tuple[dict[str, float], dict[int, torch.Tensor]]:
        """``teacher/<m>@K`` with the student's sampler at its step counts and ``teacher/<m>@50`` with the reference
        sampler, both guided at ``teacher_w``; cached (split over ranks: on rank 0; the others get empty dicts)."""
        sampler = sampler.deterministic() if self.metrics.deterministic else sampler
        # the re-noising stream of stochastic samplers depends on batching and device: both are in the key;
        # v4: one generator per batch (seed + b) instead of one stream through all batches
        key = self._cache_key(teacher, guidance, sampler, device, metrics=self.metrics.describe(), steps=self.steps,
                              teacher_steps=self.teacher_steps, v=4)
        cache = Path(self.cache_dir or default_cache_dir()) / "teacher-metrics" / f"{key}.json"
        sample_file = cache.with_suffix(".safetensors")
        if self._agree(cache.exists() and sample_file.exists()):
            if not self.is_main:
                return {}, {}
            loaded = load_file(str(sample_file))
            return json.loads(cache.read_text()), {int(k): v for k, v in loaded.items()}
        n_ddim = sampler.num_ddim_timesteps
        self._prepare_metrics(teacher, guidance, n_ddim, device)
        noise, labels = self.inputs(teacher)
        guider = guidance.teacher_guider()
        runs = [(k, sampler) for k in self.steps] + [(self.teacher_steps, None)]
        results, samples = {}, {}
        for k, smp in tqdm(runs, desc="evaluating teacher (cached afterwards)",
                           disable=not (self.progress and self.is_main)):
            if smp is None:  # the reference run, shared with teacher_reference (same noise, sampler and guidance)
                x = self.teacher_reference(teacher, guidance, n_ddim, device)
            else:
                x = self._generate(teacher.denoiser, teacher, smp, k, guider, noise, labels, None, device)
            if self.is_main:
                samples[k] = x
                results.update(self._score("teacher", k, x, labels, noise, teacher, guider))
        if not self.is_main:
            return {}, {}
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = sample_file.with_name(f".{sample_file.name}.tmp")
        save_file({str(k): v.contiguous() for k, v in samples.items()}, str(tmp))
        tmp.replace(sample_file)
        atomic_write_json(cache, results)  # written last: its presence means both files are complete
        return results, samples
