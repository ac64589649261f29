"""Run outputs: sample grids, logger payloads and the printed student-vs-teacher table."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from hydra.utils import get_class
from pytorch_lightning.loggers import WandbLogger


def describe_sampler(desc: dict) -> str:
    """``{"class": "TDDSampler", "eta": 0.2, ...}`` -> ``TDDSampler eta 0.2``."""
    eta = desc.get("eta")
    return f"{desc.get('class', 'sampler')}" + ("" if eta is None else f" eta {eta:g}")


def caption_image(path: Path, caption: str, min_width: int = 0) -> None:
    """Rewrite the PNG at ``path`` with ``caption`` in a strip above it; images narrower than ``min_width`` are
    first enlarged by an integer factor with nearest-neighbour sampling (8x8 digits stay crisp)."""
    import textwrap

    from PIL import Image, ImageDraw, ImageFont

    with Image.open(path) as im:
        im = im.convert("RGB")
    if min_width and im.width < min_width:
        f = -(-min_width // im.width)
        im = im.resize((im.width * f, im.height * f), Image.Resampling.NEAREST)
    font = ImageFont.load_default(size=14)
    left, top, right, bottom = font.getbbox("Ag")
    line_h, char_w = bottom - top + 4, max(1, (font.getbbox("abcdefghij")[2] - left) / 10)
    lines = textwrap.wrap(caption, width=max(10, int((im.width - 8) / char_w))) or [""]
    band = line_h * len(lines) + 6
    out = Image.new("RGB", (im.width, im.height + band), "white")
    out.paste(im, (0, band))
    draw = ImageDraw.Draw(out)
    for i, line in enumerate(lines):
        draw.text((4, 3 + i * line_h - top), line, fill="black", font=font)
    out.save(path)


def save_sample_grids(directory: Path, teacher, evaluator, student: dict[int, torch.Tensor],
                      teacher_samples: dict[int, torch.Tensor], sampler: dict | None = None,
                      guidance=None) -> dict[str, Path]:
    """PNG per step count (digits: image grids; gmm2d: scatter plots) with a caption strip saying who sampled,
    how many steps, the sampler and the guidance, and a JSON sidecar with the same and the samples' labels
    (``label_prompts[label]`` is a sample's prompt for text teachers); returns {name: path}."""
    import json

    directory.mkdir(parents=True, exist_ok=True)
    _, labels = evaluator.inputs(teacher)
    prompts = list(teacher.conditioner.label_prompts)
    image_like = len(teacher.sample_shape) == 3
    sampler_text = describe_sampler(sampler or {})
    teacher_w = None if guidance is None else float(guidance.teacher_w)
    paths = {}
    for prefix, samples in (("student", student), ("teacher", teacher_samples)):
        for k, x in samples.items():
            path = directory / f"{prefix}_{k}steps.png"
            teacher.save_samples(x, labels[: len(x)], path)
            reference = prefix == "teacher" and k == evaluator.teacher_steps and k not in evaluator.steps
            how = ("reference DDIM" if reference else sampler_text) + (
                f", CFG scale {evaluator.guidance_scale:g}" if prefix == "student"
                else "" if teacher_w is None else f", CFG w {teacher_w:g}")
            what = (f"prompts: {prompts[0]!r} ... {prompts[-1]!r} in turn" if prompts and len(prompts) > 1
                    else f"prompt: {prompts[0]!r}" if prompts else f"class labels 0..{int(labels.max())} in turn")
            caption_image(path, f"{prefix} | {k} steps | {how} | {what}", min_width=640 if image_like else 0)
            path.with_suffix(".json").write_text(json.dumps(
                {"who": prefix, "steps": k, "sampler": "reference DDIM" if reference else sampler,
                 "guidance_scale": evaluator.guidance_scale if prefix == "student" else None, "teacher_w": teacher_w,
                 "label_prompts": prompts, "labels": labels[: len(x)].tolist()}, indent=1, default=str))
            paths[f"samples/{prefix}@{k}"] = path
    return paths


def log_results(loggers, metrics: dict[str, float], images: dict[str, Path], steps) -> None:
    """Send metrics (same keys as metrics.json), a per-step table and sample images to the loggers."""
    for lg in loggers:
        lg.log_metrics(metrics)
        if isinstance(lg, WandbLogger):
            rows, names = _table_rows(metrics, steps)
            lg.log_table(key="eval/by_steps", columns=["steps", *names], data=rows)
            for key, path in images.items():
                lg.log_image(key=key, images=[str(path)])
            lg.experiment.summary.update(metrics)


# distillation is judged first by fidelity to the teacher: these lead the tables, in this order
FIDELITY_METRICS = ("fid_teacher", "kid/teacher", "teacher_rmse", "ode_error", "ode_rmse")


def _metric_names(metrics) -> list[str]:
    """``eval/fid@4``, ``teacher/fid@50`` -> ``fid``: the metric names present, fidelity to the teacher first
    (:data:`FIDELITY_METRICS`), then the others (real-data metrics, accuracies) sorted."""
    names = {re.sub(r"^(eval|teacher)/|@\d+$", "", k) for k in metrics if "@" in k}
    return [m for m in FIDELITY_METRICS if m in names] + sorted(names - set(FIDELITY_METRICS))


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


# ---- loggers: one W&B group per sweep, ablation axes as tags and config fields ----------------------
ABLATION_GROUPS = ("experiment", "teacher", "strategy", "guidance", "sampler", "solver", "loss", "student", "target",
                   "metrics")


def wandb_group(task_name: str, multirun: bool, sweep_dir: str | None, output_dir: str | None) -> str:
    """The W&B group of a run: a multirun's jobs share the sweep dir's name; a single run is grouped under its
    run dir's name (the evaluations ``tdd_lab.evaluate`` logs later join it)."""
    if multirun and sweep_dir:
        return Path(str(sweep_dir)).name
    return Path(str(output_dir)).name if output_dir else str(task_name)


def run_identity(cfg) -> dict:
    """{"group", "tags", "choices", "classes", "overrides"} of the current Hydra job (config only if no Hydra)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    choices, overrides, multirun, sweep_dir = {}, {}, False, None
    output_dir = OmegaConf.select(cfg, "paths.output_dir", default=None, throw_on_resolution_failure=False)
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        choices = {g: str(hc.runtime.choices[g]) for g in ABLATION_GROUPS if hc.runtime.choices.get(g) is not None}
        multirun = hc.mode == RunMode.MULTIRUN
        sweep_dir = OmegaConf.select(hc, "sweep.dir", default=None, throw_on_resolution_failure=False)
        for item in hc.overrides.task:
            key, _, value = str(item).lstrip("+~").partition("=")
            if not key.startswith(("hydra", "debug", "logger", "paths")) and key not in choices:
                overrides[key] = value
    classes = {g: str(cfg[g]["_target_"]).rsplit(".", 1)[-1] for g in ABLATION_GROUPS
               if g != "metrics" and OmegaConf.is_dict(cfg.get(g)) and "_target_" in cfg[g]}
    tags = [f"{g}:{c}" for g, c in choices.items()] + [f"{k}={v}" for k, v in overrides.items()]
    tags += [c for c in classes.values()]
    group = wandb_group(cfg.get("task_name", "train"), multirun, sweep_dir, output_dir)
    return {"group": group, "tags": [t[:64] for t in dict.fromkeys(tags)], "choices": choices, "classes": classes,
            "overrides": overrides}


def _finish_wandb() -> None:
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()


# ---- W&B run identity across resumes: the id lives in the run dir, history is never written twice ----------
WANDB_ID_FILE = "wandb_id"


def wandb_run_id(run_dir: str | Path | None, continuing: bool) -> str | None:
    """The W&B run id of ``run_dir``: the one in ``<run dir>/wandb_id`` when the run continues from a checkpoint
    (``resume=auto``), else a new one written there (atomically, by rank 0 only; other ranks log nothing)."""
    import os
    import uuid

    from lightning_fabric.utilities.rank_zero import rank_zero_only

    if run_dir is None:
        return None
    path = Path(str(run_dir)) / WANDB_ID_FILE
    if continuing and path.exists():
        return path.read_text().strip()
    if getattr(rank_zero_only, "rank", 0) != 0:
        return None
    run_id = uuid.uuid4().hex[:8]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(run_id + "\n")
    tmp.replace(path)
    return run_id


def wandb_records(path: Path) -> list[dict]:
    """The records of one ``run-<id>.wandb`` transaction log, read with wandb's own reader
    (``wandb leet inspect --json``; it stops cleanly at the end of a file cut short by a killed process)."""
    import json
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(path)], capture_output=True,
                         text=True, timeout=600)
    if res.returncode != 0:
        raise RuntimeError(f"wandb leet inspect {path}: {res.stderr.strip()[-500:]}")
    return [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]


def logged_steps(wandb_dir: str | Path, run_id: str) -> dict[str, int]:
    """{metric key: the last ``trainer/global_step`` it was logged at} in the W&B run ``run_id``'s transaction logs
    under ``wandb_dir`` (each earlier process of a resumed run wrote one, offline or online).

    Per key, because a process stopped inside a step may have logged part of it (the learning rate at the step's
    start, not yet its loss). The reader flattens media values (``samples@2._type``): their prefixes count too.
    """
    import logging

    last: dict[str, int] = {}
    for f in sorted(Path(str(wandb_dir)).glob(f"*run-*-{run_id}/run-{run_id}.wandb")):
        try:
            records = wandb_records(f)
        except (RuntimeError, OSError, ValueError) as e:  # an old wandb without `leet`: history may repeat steps
            logging.getLogger(__name__).warning("W&B resume: cannot read %s (%s); steps may be logged twice", f, e)
            continue
        for r in records:
            item = r["history"]["item"] if r.get("type") == "history" else {}
            if "trainer/global_step" not in item:
                continue
            step = int(item["trainer/global_step"])
            for key in item:
                if key.startswith("_") or key == "trainer/global_step":
                    continue
                parts = key.split(".")
                for i in range(1, len(parts) + 1):
                    name = ".".join(parts[:i])
                    last[name] = max(step, last.get(name, step))
    return last


class ResumableWandbLogger(WandbLogger):
    """A ``WandbLogger`` that does not log a point its W&B run already holds.

    A run continued from a checkpoint at step S (``resume=auto``) repeats steps S+1.. that the stopped process may
    already have logged; given ``logged`` ({key: last step logged}, :func:`logged_steps`) each such point is kept
    once, from the process that logged it first, and the rest of the step is logged. Metrics logged without a step
    (the final evaluation) pass.
    """

    def __init__(self, *args, logged: dict[str, int] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.logged = dict(logged or {})

    def log_metrics(self, metrics, step: int | None = None) -> None:
        if step is not None and self.logged:
            metrics = {k: v for k, v in metrics.items() if step > self.logged.get(k, -1)}
            if not metrics:
                return
        super().log_metrics(metrics, step)


def make_loggers(cfg, resumed_from: str | None = None) -> list:
    """Instantiate ``cfg.logger``; the W&B logger gets the sweep's group (unless set) and the ablation axes as tags
    (``strategy:tdd``, ``seed=1``, class names) and config fields (``ablation``). Its run id is kept in the run dir:
    a run continued from checkpoint ``resumed_from`` continues its W&B run, without logging a step twice."""
    import hydra
    from omegaconf import OmegaConf

    loggers = []
    for spec in (cfg.get("logger") or {}).values():
        cls = get_class(spec._target_)
        if not issubclass(cls, WandbLogger):
            loggers.append(hydra.utils.instantiate(spec))
            continue
        _finish_wandb()  # a previous job of this process (basic-launcher multirun) must not be reused
        ident = run_identity(cfg)
        tags = list(dict.fromkeys([*(spec.get("tags") or []), *ident["tags"]]))
        run_dir = OmegaConf.select(cfg, "paths.output_dir", default=None, throw_on_resolution_failure=False)
        extra = {}
        if not (spec.get("id") or spec.get("version")):
            extra["id"] = wandb_run_id(run_dir, resumed_from is not None)
            if resumed_from is not None and extra["id"] and issubclass(cls, ResumableWandbLogger):
                wandb_dir = Path(str(spec.get("save_dir") or spec.get("dir") or run_dir)) / "wandb"
                extra["logged"] = logged_steps(wandb_dir, extra["id"])
        lg = hydra.utils.instantiate(spec, group=spec.get("group") or ident["group"], tags=tags, **extra)
        lg.log_hyperparams({"ablation": {**ident["choices"], **ident["overrides"]}, "classes": ident["classes"],
                            "wandb_group": spec.get("group") or ident["group"]})
        loggers.append(lg)
    return loggers


def finish_loggers(loggers, status: str = "success") -> None:
    """Finalize every logger and close the W&B run, so the next job of a multirun starts its own."""
    for lg in loggers:
        lg.finalize(status)
        if isinstance(lg, WandbLogger):
            lg.experiment.finish()
