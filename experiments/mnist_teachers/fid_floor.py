"""The resolution of fid_teacher: the Frechet distance between two sets of the teacher's OWN 50-step CFG samples
that differ only in their noise (500 each, as metrics=mnist evaluates). A student cannot be measured closer to the
teacher than this, so a floor of the form fid_teacher(student) <= 0.5 x fid_teacher(teacher at K steps) is only
reachable when the teacher's K-step number is well above twice this value.

    python experiments/mnist_teachers/fid_floor.py --experiment tdd_sdxl_mnist [--seeds 0 10000 20000]
"""

from __future__ import annotations

import argparse
import itertools
import json

from hydra import compose, initialize_config_dir
from omegaconf import open_dict


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--experiment", default="tdd_sdxl_mnist")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 10000, 20000])
    a = p.parse_args()
    import os

    import torch

    from tdd_lab.metrics.mnist import frechet
    from tdd_lab.validate import instantiate, preflight

    torch.set_num_threads(1)
    conf = os.path.join(os.path.dirname(__file__), "..", "..", "conf")
    with initialize_config_dir(config_dir=os.path.abspath(conf), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"experiment={a.experiment}"])
    with open_dict(cfg):
        cfg.paths.output_dir = "/tmp"
    parts = preflight(cfg)
    teacher = instantiate(cfg.teacher, "teacher")
    ev, metrics = parts.evaluator, parts.evaluator.metrics
    feats = {}
    for s in a.seeds:
        ev.seed = s
        feats[s] = metrics.features(metrics.images(ev.teacher_reference(teacher, parts.guidance,
                                                                         parts.sampler.num_ddim_timesteps), teacher))
    pairs = {f"{x}-{y}": frechet(feats[x], feats[y]) for x, y in itertools.combinations(a.seeds, 2)}
    print(json.dumps({"experiment": a.experiment, "n": ev.num_samples, "fid_teacher_50_vs_50": pairs}, indent=2))


if __name__ == "__main__":
    main()
