"""Run outputs: sample grids, logger payloads and the printed student-vs-teacher table."""

from __future__ import annotations

import re
from pathlib import Path

import torch


def save_sample_grids(directory: Path, teacher, evaluator, student: dict[int, torch.Tensor],
                      teacher_samples: dict[int, torch.Tensor]) -> dict[str, Path]:
    """PNG per step count (digits: image grids; gmm2d: scatter plots); returns {name: path}."""
    directory.mkdir(parents=True, exist_ok=True)
    _, labels = evaluator.inputs(teacher)
    paths = {}
    for prefix, samples in (("student", student), ("teacher", teacher_samples)):
        for k, x in samples.items():
            path = directory / f"{prefix}_{k}steps.png"
            teacher.save_samples(x, labels[: len(x)], path)
            paths[f"samples/{prefix}@{k}"] = path
    return paths


def log_results(loggers, metrics: dict[str, float], images: dict[str, Path], steps) -> None:
    """Send metrics (same keys as metrics.json), a per-step table and sample images to the loggers."""
    for lg in loggers:
        lg.log_metrics(metrics)
        if type(lg).__name__ == "WandbLogger":
            rows, names = _table_rows(metrics, steps)
            lg.log_table(key="eval/by_steps", columns=["steps", *names], data=rows)
            for key, path in images.items():
                lg.log_image(key=key, images=[str(path)])
            lg.experiment.summary.update(metrics)


def _metric_names(metrics) -> list[str]:
    """``eval/fid@4``, ``teacher/fid@50`` -> ``fid``: the metric names present, sorted."""
    return sorted({re.sub(r"^(eval|teacher)/|@\d+$", "", k) for k in metrics if "@" in k})


def _table_rows(metrics, steps):
    names = _metric_names(metrics)
    cols = [f"{who}/{m}" for m in names for who in ("eval", "teacher")]
    return [[k, *[metrics.get(f"{c}@{k}") for c in cols]] for k in steps], cols


def print_table(metrics: dict[str, float], steps, reference_steps: int = 50) -> str:
    """Markdown table: student vs teacher per metric and step count (the teacher's reference run last)."""
    names = _metric_names(metrics)
    header = "| steps | " + " | ".join(f"student {m} | teacher {m}" for m in names) + " |"
    lines = [header, "|" + "---|" * (1 + 2 * len(names))]
    fmt = lambda v: "-" if v is None else f"{v:.4g}"  # noqa: E731
    for k in [*steps, reference_steps]:
        cells = [f"{fmt(metrics.get(f'eval/{m}@{k}'))} | {fmt(metrics.get(f'teacher/{m}@{k}'))}" for m in names]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    print(text)
    return text
