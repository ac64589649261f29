"""Generate with an exported student: ``python -m tdd_lab.sample run_dir=RUN prompt="..." [key=value ...]``.

A Hydra app (``conf/sample.yaml``). ``run_dir`` is a training run directory or its ``student/`` export.
Digits students take prompts (``prompt="a handwritten digit seven"``, a list, or ``prompt_file``); gmm2d
students take class labels (``labels=[0,1,2,3]``). Sample i starts from noise seeded ``seed + i``. Unset
keys take the export's settings (``student.json``: recommended steps, sampler and guidance scale; the
teacher's w for students with a w-embedding). Native students are sampled with the recorded sampler (or a
``sampler=`` option); students of SD1.5 / SDXL / FLUX teachers inside the stock diffusers pipeline with the
exported LoRA and scheduler, exactly what the export's model card shows a user. Writes ``out`` (PNG, with a
caption strip: student, steps, sampler, prompt; small image grids enlarged with nearest-neighbour sampling) and
a ``.pt`` of the samples next to it, and prints the PNG's full path. Bad input exits with 2 and one line
``error: ...`` naming the key: a wrong type, labels outside the student's classes, a prompt for a student
conditioned on class labels, ``steps`` outside [1, N], a negative guidance scale, a run without ``student/``.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.utils import get_class
from omegaconf import DictConfig, ListConfig, OmegaConf

from tdd_lab import samplers
from tdd_lab.conditioner import condition_to
from tdd_lab.evaluation import fixed_noise
from tdd_lab.export import ExportedStudent, load_student
from tdd_lab.guider import ClassifierFreeGuidance
from tdd_lab.outputs import caption_image, describe_sampler
from tdd_lab.validate import JOB_STARTED, ConfigError, check_keys, exit_2_on_bad_command_line

SAMPLERS = {name: getattr(samplers, name) for name in samplers.__all__ if name != "Sampler"}  # class name -> class
KEYS = {"steps": {int}, "eta": {float}, "guidance_scale": {float}, "seed": {int}, "num_per_prompt": {int},
        "labels": {int}}  # the numeric keys of conf/sample.yaml (labels: each item)


def as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (ListConfig, list, tuple)) else [value]


def num_labels(conditioner) -> int:
    """How many class labels a student takes: its evaluation prompts (text students: label i = prompt i) or
    its classes (label students)."""
    return len(conditioner.label_prompts) or int(conditioner.describe().get("num_classes", 0))


def requested_items(cfg: DictConfig, label_prompts, n_labels: int | None = None) -> list:
    """Prompts (``prompt``, ``prompt_file``) and labels (text students: their evaluation prompts), each
    ``num_per_prompt`` times. ``label_prompts`` empty: a student conditioned on ``n_labels`` class labels, which
    takes no prompt."""
    items = [str(p) for p in as_list(cfg.prompt)]
    if cfg.prompt_file is not None:
        path = Path(str(cfg.prompt_file))
        if not path.is_file():
            raise ConfigError(f"prompt_file: {path} not found")
        items += [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    if items and not label_prompts and n_labels:
        key = "prompt" if cfg.prompt is not None else "prompt_file"
        raise ConfigError(f"{key}: this student is conditioned on class labels, not prompts: give "
                          f"labels=[...] in [0, {n_labels - 1}]")
    count = len(label_prompts) or n_labels
    for label in as_list(cfg.labels):
        if count is not None and not 0 <= int(label) < count:
            raise ConfigError(f"labels: {label} outside [0, {count - 1}]"
                              + (" (label i is evaluation prompt i of this text student)" if label_prompts else ""))
        items.append(label_prompts[int(label)] if label_prompts else int(label))
    if not items:
        raise ConfigError("give prompt=..., prompt_file=... or labels=[...] (gmm2d students take labels)")
    if cfg.num_per_prompt < 1:
        raise ConfigError(f"num_per_prompt must be >= 1, got {cfg.num_per_prompt}")
    return [x for x in items for _ in range(cfg.num_per_prompt)]


def find_export(run_dir: str) -> Path:
    """The export folder of ``run_dir`` (a run directory or its ``student/``); a :class:`ConfigError` that says
    why there is none and how to get one."""
    path = Path(run_dir).expanduser()
    if not path.exists():
        raise ConfigError(f"run_dir: {path} does not exist (pass a training run directory or its student/ export, "
                          "the folder with student.json)")
    for candidate in (path, path / "student"):
        if (candidate / "student.json").exists():
            return candidate
    if (path / ".hydra" / "config.yaml").exists() or (path / "checkpoints").is_dir():
        raise ConfigError(f"run_dir: {path} has no student/ export: training writes it when it finishes "
                          "(export=true, the default); finish the run with `python -m tdd_lab.train <its overrides> "
                          f"resume=auto hydra.run.dir={path}`")
    raise ConfigError(f"run_dir: {path} is neither a training run directory nor a student/ export "
                      "(no student.json)")


def caption(kind: str, items: list, steps: int, how: str) -> str:
    """The caption strip of a sample grid: who, how many steps, which sampler, what was asked for."""
    asked = list(dict.fromkeys(items))
    what = ("prompt" if isinstance(asked[0], str) else "label") + ("s" if len(asked) > 1 else "")
    shown = ", ".join(repr(a) if isinstance(a, str) else str(a) for a in asked[:4]) + (" ..." if len(asked) > 4 else "")
    return f"{kind} | {steps} steps | {how} | {what}: {shown}"


def recommended_steps(rec: dict) -> int:
    """4 if the export recommends it, else its first recommended step count."""
    rec_steps = rec.get("steps") or [4]
    return 4 if 4 in rec_steps else rec_steps[0]


def build_sampler(option: DictConfig | None, recorded: dict, num_ddim_timesteps: int, eta: float | None):
    """The sampler recorded in the export (class and settings), or a conf/sampler ``option`` (with the recorded
    settings when it is the recorded class); ``eta`` overrides where the sampler has one."""
    if option is None:
        if recorded.get("class") not in SAMPLERS:
            raise ConfigError(f"student.json: recorded sampler {recorded.get('class')!r} is not one of "
                              f"tdd_lab.samplers ({', '.join(SAMPLERS)})")
        cls = SAMPLERS[recorded["class"]]
    else:
        cls = get_class(option._target_)
    params = inspect.signature(cls).parameters
    if cls.__name__ == recorded.get("class"):
        kwargs = {k: v for k, v in recorded.items() if k in params}
    else:  # the option's settings, on the student's grid
        node = OmegaConf.to_container(option, resolve=False)
        node.update(_target_=None, num_ddim_timesteps=num_ddim_timesteps)
        kwargs = {k: v for k, v in OmegaConf.to_container(OmegaConf.create(node), resolve=True).items() if k in params}
    if eta is not None:
        if "eta" not in params:
            raise ConfigError(f"eta: the {cls.__name__} has no eta")
        kwargs["eta"] = eta
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None


def sample_native(cfg: DictConfig, student: ExportedStudent, items: list, steps: int, scale: float) -> str:
    """Items -> samples with the recorded (or chosen) sampler; writes the PNG and the ``.pt``."""
    sampler = build_sampler(cfg.get("sampler"), student.recommended.get("sampler") or {}, student.num_ddim_timesteps,
                            cfg.eta)
    try:
        sampler.check_schedule(student.denoiser.schedule.diffusers_config())
    except ValueError as e:
        raise ConfigError(f"sampler: {e}") from None
    conditioner, device = student.conditioner, cfg.device
    try:
        cond = condition_to(conditioner.encode(items), device)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"prompt/labels: {type(conditioner).__name__} cannot encode {items[0]!r} ({e}); "
                          "gmm2d students take labels=[...], text students prompts") from None
    tc = None
    if student.meta.get("time_cond_dim"):  # lcm_w students: the teacher's w through the w-embedding, no CFG
        from tdd_lab.guidance.lcm_w import guidance_scale_embedding

        if scale != 1.0:
            raise ConfigError("guidance_scale: this student takes w through its w-embedding (guidance=lcm_w); "
                              "sample it with guidance_scale=1")
        w = torch.full((len(items),), student.teacher_w, device=device)
        tc = guidance_scale_embedding(w, int(student.meta["time_cond_dim"]))
    noise = fixed_noise(len(items), student.sample_shape, cfg.seed).to(device)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    with torch.no_grad():
        x = sampler.sample(student.denoiser, noise, cond, conditioner.null_like(cond), steps,
                           ClassifierFreeGuidance.from_scale(scale), tc, gen).cpu()
    out = Path(str(cfg.out))
    student.save_samples(x, items, out)
    how = f"{describe_sampler(sampler.describe())}, CFG scale {scale:g}"
    caption_image(out, caption("student", items, steps, how), min_width=640 if len(student.sample_shape) == 3 else 0)
    torch.save({"samples": x, "conditions": items, "steps": steps}, out.with_suffix(".pt"))
    return f"{steps} steps, {type(sampler).__name__}"


def sample_pipeline(cfg: DictConfig, student: ExportedStudent, prompts: list[str], steps: int, scale: float) -> str:
    """Prompts -> images with the stock pipeline and the exported scheduler; writes the PNG and the ``.pt``."""
    from tdd_lab.export.pipeline import generate

    if cfg.get("sampler") is not None:
        raise ConfigError("sampler: students of diffusers teachers sample with their exported scheduler "
                          "(student/scheduler) in the stock pipeline; sampler= applies to native students")
    eta = cfg.eta if cfg.eta is not None else (student.recommended.get("sampler") or {}).get("eta")
    images = generate(student, prompts, steps, scale, eta, cfg.seed, cfg.device)
    out = Path(str(cfg.out))
    student.save_samples(images, prompts, out)
    how = f"{student.info.get('pipeline_class', 'pipeline')} + exported scheduler, eta {eta}, CFG scale {scale:g}"
    caption_image(out, caption("student", prompts, steps, how), min_width=640)
    torch.save({"images": images, "prompts": prompts, "steps": steps, "eta": eta, "guidance_scale": scale},
               out.with_suffix(".pt"))
    return f"{steps} steps, eta {eta}, guidance {scale}"


def sample(cfg: DictConfig) -> Path:
    """Generate as ``cfg`` says; returns the PNG's path. Raises :class:`ConfigError` on bad input."""
    if OmegaConf.is_missing(cfg, "run_dir"):
        raise ConfigError("run_dir: required, a training run directory or its student/ export")
    check_keys(cfg, KEYS)
    if cfg.guidance_scale is not None and cfg.guidance_scale < 0:
        raise ConfigError(f"guidance_scale must be >= 0 (diffusers' convention, 1 = no CFG), got {cfg.guidance_scale}")
    student = load_student(find_export(str(cfg.run_dir)), cfg.device)
    items = requested_items(cfg, tuple(student.conditioner.label_prompts), num_labels(student.conditioner))
    steps = int(cfg.steps) if cfg.steps is not None else recommended_steps(student.recommended)
    if not 1 <= steps <= student.num_ddim_timesteps:
        raise ConfigError(f"steps: {steps} outside [1, {student.num_ddim_timesteps}] (the student's grid size)")
    scale = float(cfg.guidance_scale if cfg.guidance_scale is not None
                  else student.recommended.get("guidance_scale", 1.0))
    out = Path(str(cfg.out)).expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    run = sample_pipeline if student.pipeline is not None else sample_native
    what = run(cfg, student, items, steps, scale)
    print(f"wrote {len(items)} samples ({what}) to {out}")
    return out


@hydra.main(version_base="1.3", config_path="../conf", config_name="sample")
def main(cfg: DictConfig) -> None:
    JOB_STARTED.set()
    try:
        sample(cfg)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    exit_2_on_bad_command_line(main, "tdd_lab.sample")
