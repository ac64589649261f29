"""The README's coloured-MNIST floors, run as written (slow: each pretrains a teacher in a fresh cache, ~10 min,
then distils for ~10 min on 2 CPU cores).

Floors (issue 12): the teacher at 50 CFG steps has class_acc >= 0.90 and color_acc >= 0.95; the 4-step student
has eval/fid_teacher@4 <= 0.5 x teacher/fid_teacher@4 and loses at most 0.05 class and colour accuracy against
the 50-step teacher; the stock pipeline with the exported LoRA and scheduler reproduces the run's 4-step
accuracies to 0.01."""

from __future__ import annotations

import pytest

from .conftest import compose_cfg

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("kind", ["sdxl", "flux"])
def test_mnist_recipe_floors(kind, tmp_path, cache_dir):
    from tdd_lab.export.pipeline import load_student_pipeline
    from tdd_lab.metrics.mnist import stock_pipeline_scores
    from tdd_lab.train import train

    cfg = compose_cfg([f"experiment=tdd_{kind}_mnist", "logger=csv"], tmp_path, cache_dir)
    m = train(cfg)
    assert m["teacher/class_acc@50"] >= 0.90 and m["teacher/color_acc@50"] >= 0.95
    assert m["eval/fid_teacher@4"] <= 0.5 * m["teacher/fid_teacher@4"]
    assert m["eval/class_acc@4"] >= m["teacher/class_acc@50"] - 0.05
    assert m["eval/color_acc@4"] >= m["teacher/color_acc@50"] - 0.05
    stock = stock_pipeline_scores(load_student_pipeline(tmp_path / "student"), n=cfg.metrics.num_samples, steps=4,
                                  eta=cfg.sampler.eta, batch=cfg.metrics.batch_size, cache_dir=str(cache_dir))
    assert stock["class_acc"] == pytest.approx(m["eval/class_acc@4"], abs=0.01)
    assert stock["color_acc"] == pytest.approx(m["eval/color_acc@4"], abs=0.01)
