"""Students to files that stock pipelines and ``tdd_lab.sample`` load: diffusers LoRA, kohya, fused, model cards."""

from tdd_lab.export.student import ExportedStudent, Exporter, export_student, load_student, student_dir

__all__ = ["ExportedStudent", "Exporter", "export_student", "load_student", "student_dir"]
