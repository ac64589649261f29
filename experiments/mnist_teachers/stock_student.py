"""Score a run's exported student through the stock pipeline (load_lora_weights + the exported scheduler) on the
evaluator's noise, prompts and re-noising stream, next to the run's own eval/class_acc@K and eval/color_acc@K.

    python experiments/mnist_teachers/stock_student.py RUN_DIR [--steps 4]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir")
    p.add_argument("--steps", type=int, default=4)
    a = p.parse_args()
    from tdd_lab.export.pipeline import load_student_pipeline
    from tdd_lab.metrics.mnist import stock_pipeline_scores

    torch.set_num_threads(1)
    run = Path(a.run_dir)
    cfg = json.loads((run / "student" / "student.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    pipe = load_student_pipeline(run / "student")
    eta = cfg["recommended"]["sampler"].get("eta")  # the run's sampler setting (SDXL pipelines pass eta to step())
    stock = stock_pipeline_scores(pipe, n=500, steps=a.steps, eta=eta, batch=250)
    out = {"run": str(run), "steps": a.steps, "eta": eta, "stock_pipeline": stock,
           "run_metrics": {k: metrics[f"eval/{k}@{a.steps}"] for k in ("class_acc", "color_acc")}}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
