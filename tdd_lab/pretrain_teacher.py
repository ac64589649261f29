"""Pretrain (or find in the cache) an embedded teacher; the last line printed is its folder.

    python -m tdd_lab.pretrain_teacher teacher=digits
    python -m tdd_lab.pretrain_teacher teacher=mnist_sdxl     # a stock StableDiffusionXLPipeline folder
    python -m tdd_lab.pretrain_teacher teacher=mnist_flux     # a stock FluxPipeline folder
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from tdd_lab.validate import JOB_STARTED, ConfigError, exit_2_on_bad_command_line, instantiate


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    JOB_STARTED.set()
    try:
        teacher = instantiate(cfg.teacher, "teacher")
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    teacher.student_network()  # builds the cached student init where the teacher has one
    info = getattr(teacher, "info", None) or {}
    if "seconds" in info:
        print(f"teacher {type(teacher).__name__} ready (pretrained in {info['seconds']:.0f} s)")
    print(teacher.path if teacher.path else f"teacher {type(teacher).__name__} needs no pretraining")


if __name__ == "__main__":
    from tdd_lab.train import accept_plus_groups

    sys.argv = accept_plus_groups(sys.argv)
    exit_2_on_bad_command_line(main, "tdd_lab.pretrain_teacher")
