"""Generate with an exported student: ``python -m tdd_lab.sample RUN_DIR [--prompt ...] [--steps 4] [--eta 0.2]``.

RUN_DIR is a training run directory or its ``student/`` export. Digits students take prompts
("a handwritten digit seven"); gmm2d students take class labels. Per-sample seeds (``--seed + i``).
Students of SD1.5 / SDXL / FLUX teachers are sampled inside the stock diffusers pipeline with the
exported LoRA and TDD scheduler (exactly what the export's README shows a user).
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path

import torch

from tdd_lab.evaluation import fixed_noise
from tdd_lab.export import load_student
from tdd_lab.samplers import SAMPLERS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tdd_lab.sample", description=__doc__.splitlines()[0])
    p.add_argument("student", type=Path, help="run directory or its student/ export")
    p.add_argument("--prompt", action="append", default=None, help="prompt (repeatable); digits students")
    p.add_argument("--prompt-file", type=Path, help="one prompt per line")
    p.add_argument("--labels", type=int, nargs="+", help="class labels; gmm2d students")
    p.add_argument("--num-per-prompt", type=int, default=1)
    p.add_argument("--steps", type=int, default=None,
                   help="sampling steps (default: 4 if the export recommends it, else its first recommended)")
    p.add_argument("--sampler", choices=sorted(SAMPLERS), default=None,
                   help="default: the sampler the student was evaluated with (recorded in the export)")
    p.add_argument("--eta", type=float, default=None, help="stochasticity for tdd/tcd/ddim (default: sampler's)")
    p.add_argument("--guidance-scale", type=float, default=None, help="CFG on the student (1 = off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("samples.png"))
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def build_sampler(name: str | None, eta: float | None, recorded: dict):
    """The named sampler, or the recorded one with its settings; ``eta`` overrides where it exists."""
    if name is None:
        by_class = {cls.__name__: cls for cls in SAMPLERS.values()}
        cls = by_class.get(recorded.get("class"), SAMPLERS["tdd"])
        kwargs = {k: v for k, v in recorded.items() if k != "class"} if cls.__name__ == recorded.get("class") else {}
    else:
        cls, kwargs = SAMPLERS[name], {}
    if eta is not None:
        if "eta" not in inspect.signature(cls).parameters:
            raise ValueError(f"--eta does not apply to the {cls.__name__} (it has no eta)")
        kwargs["eta"] = eta
    return cls(**kwargs)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        student = load_student(args.student, args.device)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rec = student.meta.get("recommended", {})
    pipeline = hasattr(student, "pipeline")
    conds = requested_conditions(args, labels=not pipeline)
    if not conds:
        what = "--prompt or --prompt-file" if pipeline else "--prompt/--prompt-file (digits) or --labels (gmm2d)"
        print(f"error: give {what}", file=sys.stderr)
        return 2
    steps = args.steps or recommended_steps(rec)
    if pipeline:
        return sample_pipeline(args, student, rec, conds, steps)
    try:
        sampler = build_sampler(args.sampler, args.eta, rec.get("sampler") or {})
    except (TypeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    scale = args.guidance_scale if args.guidance_scale is not None else float(rec.get("guidance_scale", 1.0))
    noise = fixed_noise(len(conds), student.sample_shape, args.seed).to(args.device)
    tc = None
    if student.meta.get("time_cond_dim"):
        from tdd_lab.guidance.lcm_w import guidance_scale_embedding

        w = torch.full((len(conds),), float(rec.get("teacher_w", 3.5)), device=args.device)
        tc, scale = guidance_scale_embedding(w, student.meta["time_cond_dim"]), 1.0
    with torch.no_grad():
        x = sampler.sample(student.eps_fn, noise, student.encode(conds), student.null, steps,
                           student.schedule.diffusers_config(), student.num_ddim_timesteps, scale, tc,
                           torch.Generator(device=args.device).manual_seed(args.seed))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    student.save_samples(x.cpu(), conds, args.out)
    torch.save({"samples": x.cpu(), "conditions": conds, "steps": steps}, args.out.with_suffix(".pt"))
    print(f"wrote {len(conds)} samples ({steps} steps, {type(sampler).__name__}) to {args.out}")
    return 0


def requested_conditions(args: argparse.Namespace, labels: bool = True) -> list:
    """Prompts (``--prompt``, ``--prompt-file``) and, where they apply, ``--labels``, each ``--num-per-prompt`` times."""
    conds = list(args.prompt or [])
    if args.prompt_file:
        conds += [ln.strip() for ln in args.prompt_file.read_text().splitlines() if ln.strip()]
    if labels and args.labels:
        conds += args.labels
    return [c for c in conds for _ in range(args.num_per_prompt)]


def recommended_steps(rec: dict) -> int:
    """4 if the export recommends it, else its first recommended step count."""
    rec_steps = rec.get("steps") or [4]
    return 4 if 4 in rec_steps else rec_steps[0]


def sample_pipeline(args: argparse.Namespace, student, rec: dict, prompts: list[str], steps: int) -> int:
    """Prompts -> images with the stock pipeline; writes the PNG grid and a ``.pt`` of the images."""
    from torchvision.utils import save_image

    eta = args.eta if args.eta is not None else (rec.get("sampler") or {}).get("eta")
    scale = args.guidance_scale if args.guidance_scale is not None else float(rec.get("guidance_scale", 1.0))
    images = student.generate(prompts, steps, scale, eta, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_image(images, str(args.out), nrow=min(4, len(images)), padding=2)
    torch.save({"images": images, "prompts": prompts, "steps": steps, "eta": eta, "guidance_scale": scale},
               args.out.with_suffix(".pt"))
    print(f"wrote {len(prompts)} images ({steps} steps, eta {eta}, guidance {scale}) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
