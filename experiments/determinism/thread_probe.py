"""Does the digits teacher's pretraining depend on the CPU thread count?

Runs the first ``--steps`` steps of the digits teacher's pretraining (the real code, tdd_lab.pretrain) with
torch's intra-op threads set to each ``--threads`` value *before* the call, and prints a hash of the weights.
``--raw`` bypasses the fixed-thread guard (the pretraining as it was before tdd_lab.utils.threads), to show the
dependence the guard removes.

    python experiments/determinism/thread_probe.py --threads 1 2 4          # with the guard: one hash
    python experiments/determinism/thread_probe.py --threads 1 2 4 --raw    # without: one hash per count
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

from tdd_lab import pretrain
from tdd_lab.schedules import VPSchedule


def weights_hash(steps: int, threads: int, raw: bool) -> str:
    torch.set_num_threads(threads)
    cfg = dict(seed=0, train_steps=steps, batch_size=128, lr=2e-3, ema_decay=0.999, cond_dropout=0.1, channels=[32, 64],
               text_dim=64, max_length=16, beta_schedule="linear", beta_start=0.0001, beta_end=0.02, version=1)
    out = Path(tempfile.mkdtemp(prefix="probe_"))
    run = pretrain._pretrain_digits_teacher if raw else pretrain.pretrain_digits_teacher
    with torch.enable_grad():
        run(out, cfg, VPSchedule(1000, 0.0001, 0.02, "linear").alphas_cumprod)
    sd = load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors"))
    return hashlib.sha1(b"".join(sd[k].numpy().tobytes() for k in sorted(sd))).hexdigest()[:12]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--raw", action="store_true", help="without the fixed-thread guard")
    args = p.parse_args()
    result = {n: weights_hash(args.steps, n, args.raw) for n in args.threads}
    print(json.dumps({"steps": args.steps, "guard": not args.raw, "hash_by_threads": result}))


if __name__ == "__main__":
    main()
