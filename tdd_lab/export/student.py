"""The exported student (``run_dir/student``): writing it atomically and loading it back, one type for all.

The folder holds the network files written by the teacher's :class:`Exporter` (native: the merged
network and its conditioner; diffusers teachers: the LoRA in the stock pipeline's format), a
``scheduler/`` config of the sampler the metrics were measured with (every setting read from the
trained config), ``student.json`` (schedule, grid, prediction type, the teacher's guidance and the
recommended settings) and, where the exporter writes one, a model card ``README.md``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_class

from tdd_lab.conditioner import Conditioner
from tdd_lab.denoiser import Denoiser


@dataclass
class ExportedStudent:
    """A loaded student: its denoiser, the conditioner that makes its conditions, and its settings.

    ``pipeline`` is the stock diffusers pipeline with the student loaded (students of SD1.5 / SDXL /
    FLUX teachers; ``None`` for the embedded teachers), the way a user samples such a student.
    """

    denoiser: Denoiser
    conditioner: Conditioner
    sample_shape: tuple[int, ...]
    save_samples: Callable[[torch.Tensor, Any, Path], None]   # (samples, labels or prompts, path)
    meta: dict[str, Any] = field(default_factory=dict)        # student.json
    pipeline: Any = None
    info: dict[str, Any] = field(default_factory=dict)        # teacher.json of pipeline students

    @property
    def num_ddim_timesteps(self) -> int:
        return int(self.meta["num_ddim_timesteps"])

    @property
    def recommended(self) -> dict[str, Any]:
        return self.meta.get("recommended", {})

    @property
    def teacher_w(self) -> float:
        """The teacher's guidance strength w the student distilled (the guider's convention)."""
        return float(self.meta["teacher_w"])


class Exporter(ABC):
    """Writes the network files of a student into an export folder and loads them back."""

    @abstractmethod
    def write(self, directory: Path, net: torch.nn.Module, factory, kohya: bool = False, fused: bool = False) -> None:
        """Network files of the trained raw network ``net`` (built by the student ``factory``)."""

    @classmethod
    @abstractmethod
    def load(cls, directory: Path, meta: dict, device: str = "cpu") -> ExportedStudent:
        """The :class:`ExportedStudent` of an export folder written by :meth:`write`."""

    def model_card(self, meta: dict) -> str | None:
        """A README for the export folder, or None."""
        return None


def export_student(directory: str | Path, student: Denoiser, factory, teacher, sampler, guidance,
                   recommended: dict[str, Any], kohya: bool = False, fused: bool = False) -> Path:
    """Write the export of the trained ``student`` denoiser atomically (temporary folder, then rename)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".student-", dir=directory.parent))
    exporter = teacher.exporter()
    try:
        exporter.write(tmp, student.net, factory, kohya=kohya, fused=fused)
        schedule_config = {**student.schedule.diffusers_config(), "prediction_type": student.prediction_type}
        sampler.make_scheduler(schedule_config).save_pretrained(tmp / "scheduler")
        meta = {
            "exporter": f"{type(exporter).__module__}.{type(exporter).__qualname__}",
            "teacher_class": f"{type(teacher).__module__}.{type(teacher).__qualname__}",
            "prediction_type": student.prediction_type,
            "num_ddim_timesteps": sampler.num_ddim_timesteps,
            "schedule": student.schedule.diffusers_config(),
            "sample_shape": list(teacher.sample_shape),
            "time_cond_dim": guidance.embedding_dim,
            "teacher_w": guidance.teacher_w,
            "recommended": recommended,
        }
        (tmp / "student.json").write_text(json.dumps(meta, indent=2, default=str))
        card = exporter.model_card(meta)
        if card is not None:
            (tmp / "README.md").write_text(card)
        if directory.exists():
            shutil.rmtree(directory)
        tmp.rename(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def student_dir(path: str | Path) -> Path:
    """``run_dir/student`` (or ``path`` itself when it is an export folder)."""
    path = Path(path)
    if (path / "student" / "student.json").exists():
        path = path / "student"
    if not (path / "student.json").exists():
        raise FileNotFoundError(f"{path / 'student.json'} not found: pass a run directory or its student/ export")
    return path


def load_student(path: str | Path, device: str = "cpu") -> ExportedStudent:
    """Load ``run_dir/student`` (or the export folder itself) through the exporter that wrote it."""
    directory = student_dir(path)
    meta = json.loads((directory / "student.json").read_text())
    return get_class(meta["exporter"]).load(directory, meta, device)
