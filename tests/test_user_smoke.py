"""`debug=smoke` shrinks the diffusers teachers too: the README's smoke commands, as written, train at 64 px with no
loader workers and a small latent evaluation (issue 16: the SDXL smoke run trained at 1,024 px); the embedded
teachers are untouched."""

import pytest

from tdd_lab.train import accept_plus_groups

from .conftest import compose_cfg

DIFFUSERS = ["tdd_sdxl", "tdd_sd15", "tdd_flux"]  # lcm_sdxl, pcm_sdxl, tcd_sdxl inherit tdd_sdxl


@pytest.mark.parametrize("experiment", DIFFUSERS)
def test_readme_smoke_command_trains_small(experiment, tmp_path, cache_dir):
    # python -m tdd_lab.train +experiment=tdd_sdxl teacher.pretrained=/models/sdxl-base data.root=/data/images debug=smoke
    argv = accept_plus_groups([f"+experiment={experiment}", "teacher.pretrained=/models/x", "data.root=/data/images",
                               "debug=smoke"])
    cfg = compose_cfg(argv, tmp_path, cache_dir)
    assert cfg.teacher.resolution == 64 and cfg.data.resolution == 64 and cfg.data.num_workers == 0
    assert cfg.trainer.max_steps == 5 and cfg.metrics.num_samples == 8 and cfg.metrics.metrics.ode_steps == 10
    full = compose_cfg(argv[:-1], tmp_path, cache_dir)  # without debug=smoke: the recipe's own resolution
    assert full.teacher.resolution == (512 if experiment == "tdd_sd15" else 1024) and full.data.num_workers == 4
    assert full.metrics.metrics.ode_steps == 50
    explicit = compose_cfg([*argv, "teacher.resolution=32"], tmp_path, cache_dir)
    assert explicit.teacher.resolution == 32 and explicit.data.resolution == 32  # the command line wins


@pytest.mark.parametrize("experiment", ["tdd_gmm2d", "tdd_digits"])
def test_smoke_leaves_embedded_teachers_alone(experiment, tmp_path, cache_dir):
    cfg = compose_cfg([f"experiment={experiment}", "debug=smoke"], tmp_path, cache_dir)
    assert "resolution" not in cfg.teacher and "resolution" not in cfg.data
    assert cfg.metrics.num_samples == 40  # debug/smoke.yaml's own evaluation size
