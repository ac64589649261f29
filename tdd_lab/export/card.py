"""The model card (``student/README.md``) of a student of a diffusers teacher."""

from __future__ import annotations


def model_card(info: dict, meta: dict) -> str:
    """How to load the student into the stock pipeline, and the settings its metrics were measured with.

    ``info``: ``teacher.json`` (pipeline class, base weights, dtype, FLUX's embedded guidance);
    ``meta``: ``student.json`` (recommended steps, sampler, guidance scale; the grid size N).
    """
    rec = meta.get("recommended", {})
    steps = rec.get("steps") or [4]
    eta = (rec.get("sampler") or {}).get("eta", 0.2)
    g = rec.get("guidance_scale", 1.0)
    flow = meta.get("prediction_type") == "flow"
    gen_line = "\npipe.scheduler.generator = torch.Generator().manual_seed(0)  # re-noising seed (eta > 0)" if flow else ""
    sched = "FlowTDDScheduler" if flow else "TDDScheduler"
    if flow and info.get("embedded_guidance") is not None:  # FLUX: embedded guidance, CFG as true_cfg_scale
        call = f"guidance_scale={info['embedded_guidance']}" + (f", true_cfg_scale={g}, negative_prompt=\"\"" if g != 1 else "")
    elif flow:  # SD3: guidance_scale is CFG; eta is a scheduler setting
        call = f"guidance_scale={g}"
    else:
        call = f"guidance_scale={g}, eta={eta}"
    dtype = info.get("dtype", "float32")
    dtype = dtype if dtype in ("bfloat16", "float16") else ("bfloat16" if flow else "float16")
    base = info["pretrained"]
    return f"""---
library_name: diffusers
base_model: {base}
tags: [tdd, consistency-distillation, lora, tdd_lab]
---
# Target-Driven Distillation student of `{base}`

Trained with tdd_lab (TDD, arXiv 2409.01347) on the grid of N = {meta["num_ddim_timesteps"]} teacher steps,
distilling the teacher guided at w = {meta.get("teacher_w")} (guidance_scale {1 + float(meta.get("teacher_w") or 0):g}).

Recommended: {", ".join(map(str, steps))} steps, eta = {eta}, guidance_scale = {g} (decoupled guidance lets
you post-tune it, typically 1.0-2.0), resolution {info["resolution"]}.

```python
import torch, diffusers
from tdd_lab.schedulers import {sched}

pipe = diffusers.{info["pipeline_class"]}.from_pretrained("{base}", torch_dtype=torch.{dtype})
pipe.load_lora_weights("path/to/student")          # alpha is stored: no fuse scale to guess
pipe.scheduler = {sched}.from_pretrained("path/to/student/scheduler"){gen_line}
image = pipe("a photo of a cat", num_inference_steps={4 if 4 in steps else steps[0]}, {call}).images[0]
```
Or `python -m tdd_lab.sample run_dir=path/to/run prompt="a photo of a cat"`.
"""
