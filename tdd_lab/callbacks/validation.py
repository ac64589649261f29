"""In-training validation: learning curves of the student on a small fixed set.

Every ``validation.every_n_steps`` optimizer steps, and once at step 0 of a fresh run, the current student is
evaluated with the run's own metrics, sampler and guidance on ``num_samples`` fixed samples. Their noise comes from
their own seed (a validation set, distinct from the final evaluation's test set); the teacher's reference samples of
the set are computed at the first validation and cached by ``Evaluator.teacher_reference``. Each validation logs
``val/<metric>@K`` and ``val/seconds`` at the trainer's global step to every logger, a sample grid per step count
(``RUN/val_samples/step_<NNNNNN>/``, and ``val/samples@K`` images on W&B), and rewrites ``RUN/validation.json``
({step: {metric: value}}) atomically. At the end of fit it logs ``val/time_fraction``: the share of the training
loop's time spent validating.

Training is not disturbed: sampling runs under forked RNG states (torch CPU and CUDA, numpy, Python) and no_grad,
and the student is put back in its mode, so a run's losses are the same with validation on or off. Rank 0
evaluates while the other ranks wait at a barrier. The validated steps are kept in checkpoints, so after
``resume=auto`` the curve continues from the checkpoint's step with no point repeated or missing.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import WandbLogger

from tdd_lab.utils.cache import atomic_write_text
from tdd_lab.utils.validation import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ValidationSettings:
    """The ``validation`` block of ``conf/train.yaml`` (its field types check the block's values)."""

    every_n_steps: int = 250              # validate every this many optimizer steps (and at step 0); 0 = off
    num_samples: int = 200                # size of the fixed validation set
    steps: Sequence[int] | None = None    # student step counts; null: the run's metrics.steps
    seed: int = 10000                     # base of the set's per-sample noise seeds (not the final evaluation's)
    batch_size: int | None = None         # sampling batch; null: the run's metrics.batch_size

    @classmethod
    def from_config(cls, node: Any) -> ValidationSettings:
        """Settings from a config node (None: off); ``ConfigError`` naming the key on a bad value."""
        if node is None:
            return cls(every_n_steps=0)
        values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"validation: unknown key validation.{sorted(unknown)[0]} "
                              f"(keys: {', '.join(cls.__dataclass_fields__)})")
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        if int(self.every_n_steps) < 0:
            raise ConfigError(f"validation.every_n_steps must be >= 0 (0 = off), got {self.every_n_steps}")
        if int(self.num_samples) < 2:
            raise ConfigError(f"validation.num_samples must be >= 2 (FID needs two samples), got {self.num_samples}")
        if self.batch_size is not None and int(self.batch_size) < 1:
            raise ConfigError(f"validation.batch_size must be >= 1 or null, got {self.batch_size}")
        if self.steps is not None:
            ok = isinstance(self.steps, (list, tuple)) and all(isinstance(k, int) and not isinstance(k, bool)
                                                                for k in self.steps)
            if not ok or not self.steps:
                raise ConfigError(f"validation.steps: give a list of step counts (e.g. [2, 4]) or null for "
                                  f"metrics.steps, got {self.steps!r}")

    def evaluator_config(self, metrics: DictConfig) -> DictConfig:
        """The run's ``metrics`` (an :class:`~tdd_lab.evaluation.Evaluator` node), resolved, with this set's size,
        seed, step counts and batch size (null: the run's) and no progress bar."""
        node = OmegaConf.to_container(metrics, resolve=True)
        node.update(num_samples=int(self.num_samples), seed=int(self.seed), progress=False)
        if self.steps is not None:
            node["steps"] = [int(k) for k in self.steps]
        if self.batch_size is not None:
            node["batch_size"] = int(self.batch_size)
        return OmegaConf.create(node)


@contextlib.contextmanager
def forked_rng(device: torch.device):
    """Restore every RNG training draws from (torch CPU and ``device``'s CUDA stream, numpy, Python) on exit."""
    np_state, py_state = np.random.get_state(), random.getstate()
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


class ValidationCallback(pl.Callback):
    """Evaluates the student every ``every_n_steps`` steps; see the module docstring for what it logs and writes."""

    def __init__(
        self,
        build_evaluator: Callable[[], Any],  # zero-argument builder of the validation Evaluator (rank 0, first use)
        sampler,                             # the run's sampler (the object the final evaluation uses)
        guidance,                            # the run's guidance component
        out_dir: str | Path,                 # run dir: validation.json and val_samples/ go here
        every_n_steps: int = 250,
    ):
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.build_evaluator, self.sampler, self.guidance = build_evaluator, sampler, guidance
        self.out_dir, self.every_n_steps = Path(out_dir), int(every_n_steps)
        self.evaluator = None
        self.validated: set[int] = set()     # steps validated by this run (and before its checkpoint)
        self.history: dict[int, dict[str, float]] = {}
        self.seconds, self._fit_start = 0.0, 0.0

    @property
    def json_path(self) -> Path:
        return self.out_dir / "validation.json"

    # -- checkpoints: which steps are done -----------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"validated": sorted(self.validated)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.validated = {int(s) for s in state_dict.get("validated", [])}

    # -- hooks ----------------------------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_start, self.seconds = time.perf_counter(), 0.0
        step = int(trainer.global_step)
        if trainer.is_global_zero:
            self.history = self._read_history(step) if trainer.ckpt_path else {}  # a fresh run starts a new curve
        if self._due(step):  # step 0 of a fresh run; the checkpoint's step if it was not validated before it
            self._validate(trainer, pl_module)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args) -> None:
        if self._due(int(trainer.global_step)):
            self._validate(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        total = time.perf_counter() - self._fit_start
        fraction = self.seconds / total if total > 0 else 0.0
        for lg in trainer.loggers:
            lg.log_metrics({"val/time_fraction": fraction}, step=int(trainer.global_step))
        if trainer.is_global_zero:
            log.info("validation took %.1f s of the training loop's %.1f s (%.1f%%)", self.seconds, total,
                     100 * fraction)

    # -- one validation ----------------------------------------------------------------------------------
    def _due(self, step: int) -> bool:
        """Same answer on every rank (it decides who waits at the barrier): a multiple of every_n_steps not done."""
        return step % self.every_n_steps == 0 and step not in self.validated

    def _validate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step = int(trainer.global_step)
        self.validated.add(step)
        if trainer.is_global_zero:
            start = time.perf_counter()
            student = pl_module.student
            was_training = student.training
            try:
                with forked_rng(pl_module.device), torch.no_grad():
                    student.eval()
                    metrics, samples = self._evaluate(pl_module)
                    grids = self._save_grids(pl_module.teacher, step, samples)
            finally:
                student.train(was_training)
            values = {f"val/{name.split('/', 1)[1]}": v for name, v in metrics.items()}  # eval/fid@4 -> val/fid@4
            values["val/seconds"] = time.perf_counter() - start
            self._write(trainer, step, values, grids)
            self.seconds += time.perf_counter() - start
            log.info("validation at step %d (%.1f s): %s", step, values["val/seconds"],
                     {k: round(v, 4) for k, v in values.items() if k != "val/seconds"})
        trainer.strategy.barrier("tdd_lab_validation")

    def _evaluate(self, pl_module) -> tuple[dict[str, float], dict[int, torch.Tensor]]:
        if self.evaluator is None:  # built here, on rank 0 only, under the forked RNG
            self.evaluator = self.build_evaluator()
        return self.evaluator.evaluate_student(pl_module.student, pl_module.teacher, self.guidance, self.sampler,
                                               pl_module.device)

    def _save_grids(self, teacher, step: int, samples: dict[int, torch.Tensor]) -> dict[int, Path]:
        """PNG per step count under ``val_samples/step_<NNNNNN>/``, captioned with who, when and how."""
        from tdd_lab.outputs import caption_image, describe_sampler

        directory = self.out_dir / "val_samples" / f"step_{step:06d}"
        directory.mkdir(parents=True, exist_ok=True)
        _, labels = self.evaluator.inputs(teacher)
        image_like = len(teacher.sample_shape) == 3
        paths = {}
        for k, x in samples.items():
            path = directory / f"student_{k}steps.png"
            teacher.save_samples(x, labels[: len(x)], path)
            caption_image(path, f"student | step {step} | {k} steps | {describe_sampler(self.sampler.describe())}",
                          min_width=640 if image_like else 0)
            paths[k] = path
        return paths

    def _write(self, trainer: pl.Trainer, step: int, values: dict[str, float], grids: dict[int, Path]) -> None:
        for lg in trainer.loggers:
            lg.log_metrics(values, step=step)
            if isinstance(lg, WandbLogger):
                for k, path in grids.items():
                    lg.log_image(key=f"val/samples@{k}", images=[str(path)], step=step)
        self.history[step] = values
        # steps in numeric order (sort_keys would put "1000" before "250")
        atomic_write_text(self.json_path, json.dumps({str(s): dict(sorted(self.history[s].items()))
                                                      for s in sorted(self.history)}, indent=2) + "\n")

    def _read_history(self, resume_step: int) -> dict[int, dict[str, float]]:
        """The points of ``validation.json`` up to the checkpoint's step (later ones belong to the interrupted run's
        steps after its checkpoint, which this run redoes)."""
        if not self.json_path.exists():
            return {}
        try:
            data = json.loads(self.json_path.read_text())
        except json.JSONDecodeError as e:
            log.warning("%s is not valid JSON (%s): the validation curve restarts at step %d", self.json_path, e,
                        resume_step)
            return {}
        return {int(s): v for s, v in data.items() if int(s) <= resume_step}


def validation_callback(cfg: DictConfig, sampler, guidance, out_dir: str | Path) -> ValidationCallback | None:
    """The run's :class:`ValidationCallback` from ``cfg.validation`` (None when off); the Evaluator is the run's
    ``metrics`` config instantiated a second time with the validation set's settings, on first use."""
    settings = ValidationSettings.from_config(cfg.get("validation"))
    if not settings.every_n_steps:
        return None
    from tdd_lab.validate import instantiate

    build = functools.partial(instantiate, settings.evaluator_config(cfg.metrics), "validation")
    return ValidationCallback(build, sampler, guidance, out_dir, every_n_steps=int(settings.every_n_steps))
