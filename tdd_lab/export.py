"""Export of a trained student (``run_dir/student``) and loading it back for ``tdd_lab.sample``.

The folder holds the teacher-specific network files (``Teacher.save_student``), a
``scheduler/`` config of the TDDScheduler for the student's grid, and ``student.json`` with
what sampling needs and the recommended settings.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_class

from tdd_lab.prediction import to_x0_eps
from tdd_lab.schedules import VPSchedule


@dataclass
class ExportedStudent:
    """A loaded student: its network, schedule, and how to make conditions."""

    net: torch.nn.Module
    schedule: VPSchedule
    prediction_type: str
    num_ddim_timesteps: int
    sample_shape: tuple[int, ...]
    encode: Any                 # callable: list of prompts / labels -> condition (B, ...)
    null: Any                   # the null condition (1, ...)
    save_samples: Any           # callable(samples, labels_or_prompts, path)
    meta: dict[str, Any] = field(default_factory=dict)

    @torch.no_grad()
    def eps_fn(self, x_t, t, cond, timestep_cond=None):
        raw = self.net(x_t, self.schedule.model_time(t), cond, timestep_cond)
        a, s = self.schedule.alpha_sigma(t, x_t.ndim, x_t.dtype)
        return to_x0_eps(raw, x_t, a, s, self.prediction_type)[1]


def export_student(directory: str | Path, student: torch.nn.Module, factory, teacher, num_ddim_timesteps: int,
                   time_cond_dim: int | None, recommended: dict[str, Any], kohya: bool = False,
                   fused: bool = False, sampler=None) -> Path:
    """Write the student export atomically (temporary folder, then rename)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".student-", dir=directory.parent))
    try:
        teacher.export(student, factory, tmp, kohya=kohya, fused=fused)
        teacher.sampling_scheduler(num_ddim_timesteps, sampler).save_pretrained(tmp / "scheduler")
        meta = {
            "teacher_class": f"{type(teacher).__module__}.{type(teacher).__qualname__}",
            "prediction_type": teacher.prediction_type,
            "num_ddim_timesteps": num_ddim_timesteps,
            "schedule": teacher.schedule.diffusers_config(),
            "sample_shape": list(teacher.sample_shape),
            "time_cond_dim": time_cond_dim,
            "recommended": recommended,
        }
        (tmp / "student.json").write_text(json.dumps(meta, indent=2, default=str))
        card = getattr(teacher, "model_card", None)
        if card is not None:
            (tmp / "README.md").write_text(card(meta))
        if directory.exists():
            shutil.rmtree(directory)
        tmp.rename(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def load_student(directory: str | Path, device: str = "cpu") -> ExportedStudent:
    """Load ``run_dir/student`` (or the run dir itself) through its teacher class's ``load_student``."""
    directory = Path(directory)
    if (directory / "student" / "student.json").exists():
        directory = directory / "student"
    meta_path = directory / "student.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{meta_path} not found: pass a run directory or its student/ export")
    meta = json.loads(meta_path.read_text())
    cls = get_class(meta["teacher_class"])
    if hasattr(cls, "pipeline_class"):  # a stock-pipeline student (SD1.5 / SDXL / FLUX)
        from tdd_lab.teachers.pipelines import PipelineStudent

        return PipelineStudent.load(directory, meta, device)
    parts = cls.load_student(directory, meta, device)
    sched = VPSchedule(**{k: v for k, v in meta["schedule"].items() if k != "prediction_type"})
    return ExportedStudent(schedule=sched, prediction_type=meta["prediction_type"],
                           num_ddim_timesteps=meta["num_ddim_timesteps"], sample_shape=tuple(meta["sample_shape"]),
                           meta=meta, **parts)
