"""Loading a diffusers teacher: bad paths, hub ids and tokenizers fail before any compute (exit 2, no traceback);
a valid pipeline with a small tokenizer that matches its text encoder loads and trains; a v-prediction
checkpoint loads with its prediction type, which its denoiser and its exported scheduler use."""

from __future__ import annotations

import shutil

import pytest
import torch

from ..conftest import compose_cfg
from .conftest import build_module, read_json, run_app, smoke_overrides

SMALL_VOCAB = 1000


@pytest.fixture(scope="module")
def small_vocab_sdxl(tmp_path_factory):
    """A valid tiny SDXL pipeline whose CLIP tokenizers have 1,000 tokens and text encoders 1,000 embeddings."""
    from tdd_lab.testing.tiny import save_tiny_sdxl

    return save_tiny_sdxl(tmp_path_factory.mktemp("small_vocab") / "sdxl", vocab_size=SMALL_VOCAB)


def test_bad_inputs_fail_before_compute(assets, tmp_path, cache_dir):
    base = ["-m", "tdd_lab.train", "+experiment=tdd_sdxl", "debug=smoke", "data.batch_size=4",
            f"hydra.run.dir={tmp_path / 'r'}"]
    r = run_app(base + [f"teacher.pretrained={tmp_path / 'missing'}", f"data.root={assets['images']}"], tmp_path, cache_dir)
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    r = run_app(base + ["teacher.pretrained=no-such-org/no-such-model", f"data.root={assets['images']}"], tmp_path, cache_dir)
    assert r.returncode == 2 and "not in the local Hugging Face cache" in r.stderr
    # a pipeline folder whose tokenizer lost its vocabulary: the silent 2-token fallback is caught, and the
    # message names the tokenizer's size and the text encoder's
    broken = tmp_path / "broken_sdxl"
    shutil.copytree(assets["sdxl"], broken)
    for f in (broken / "tokenizer").iterdir():  # keep only tokenizer_config.json
        if f.name != "tokenizer_config.json":
            f.unlink()
    r = run_app(base + [f"teacher.pretrained={broken}", f"data.root={assets['images']}", "teacher.resolution=32"],
                tmp_path, cache_dir)
    assert r.returncode == 2 and "tokenizer" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "has 2 tokens" in r.stderr and "49408 token embeddings" in r.stderr, r.stderr[-2000:]
    empty = tmp_path / "empty_data"
    empty.mkdir()
    r = run_app(base + [f"teacher.pretrained={assets['sdxl']}", f"data.root={empty}"], tmp_path, cache_dir)
    assert r.returncode == 2 and "holds no image" in r.stderr


def test_tokenizer_guard_compares_with_the_text_encoder_vocabulary(small_vocab_sdxl):
    """Rejected: more tokens than embeddings, or fewer than the embedding table minus its padding (128)."""
    from transformers import CLIPTokenizer

    from tdd_lab.utils.tokenizer import EMBEDDING_PADDING, check_tokenizer

    tok = CLIPTokenizer.from_pretrained(small_vocab_sdxl / "tokenizer")
    assert len(tok) == SMALL_VOCAB
    for vocab_size in (SMALL_VOCAB, SMALL_VOCAB + EMBEDDING_PADDING):  # exact, or an encoder with padded embeddings
        assert check_tokenizer(tok, "tok", vocab_size) is tok
    for vocab_size in (SMALL_VOCAB - 1, SMALL_VOCAB + EMBEDDING_PADDING + 1):
        with pytest.raises(ValueError, match=f"has {SMALL_VOCAB} tokens but its text encoder has {vocab_size} token"):
            check_tokenizer(tok, "tok", vocab_size)


def test_small_tokenizer_matching_its_text_encoder_loads_and_trains(small_vocab_sdxl, assets, tmp_path, cache_dir):
    """A research-sized tokenizer (1,000 tokens, text encoders of 1,000 embeddings) is a valid pipeline."""
    from tdd_lab.train import train

    cfg = compose_cfg(smoke_overrides("sdxl", {**assets, "sdxl": small_vocab_sdxl}, "teacher.dtype=fp32",
                                      "metrics.steps=[2]", "export=false"), tmp_path, cache_dir)
    metrics = train(cfg)
    assert metrics["train/steps"] == 5.0
    assert "eval/ode_rmse@2" in metrics and all(v == v for v in metrics.values())


def test_sd15_v_prediction_variant(assets, tmp_path, cache_dir):
    from tdd_lab.denoiser import adapters_disabled
    from tdd_lab.export import export_student
    from tdd_lab.samplers import TDDSampler
    from tdd_lab.testing.tiny import save_tiny_sd15

    vdir = save_tiny_sd15(tmp_path / "sd15v", prediction_type="v_prediction")
    module, datamodule = build_module("sd15", {**assets, "sd15": vdir}, cache_dir, tmp_path, "teacher.dtype=fp32")
    teacher = module.teacher
    assert teacher.prediction_type == "v_prediction" == teacher.denoiser.prediction_type
    # the teacher's (x0, eps) come from v: x0 = a x - s v, eps = s x + a v
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([900, 100])
    cond = teacher.conditioner.conditions(torch.tensor([0, 1]))
    with torch.no_grad(), adapters_disabled(teacher.denoiser.net):  # the raw base UNet (the LoRA student shares it)
        v = teacher.denoiser.net(x, t, cond)
    a, s = teacher.schedule.alpha_sigma(t, 4)
    with torch.no_grad():
        x0, eps = teacher.denoiser(x, t, cond)
    assert torch.allclose(x0, a * x - s * v, atol=1e-5) and torch.allclose(eps, s * x + a * v, atol=1e-5)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    loss, _ = module.distillation_loss(batch)
    assert torch.isfinite(loss)
    out = export_student(tmp_path / "student", module.student, module.student_factory, teacher,
                         TDDSampler(num_ddim_timesteps=50), module.guidance, {})
    sched = read_json(out / "scheduler" / "scheduler_config.json")
    assert sched["prediction_type"] == "v_prediction" and sched["_class_name"] == "TDDScheduler"
