"""CLIP score through open_clip's local-checkpoint path, with a tiny random-weight architecture."""

import json
import urllib.request

import pytest
import torch

from tdd_lab.guider import NoGuidance
from tdd_lab.metrics.clip import CLIPScore, clip_metric_name
from tdd_lab.metrics.features import MissingWeightsError

TINY = {"embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """(config json, checkpoint, the model the checkpoint came from, prompt file)."""
    import open_clip

    root = tmp_path_factory.mktemp("clip")
    cfg = root / "tiny-clip-test.json"
    cfg.write_text(json.dumps(TINY))
    open_clip.add_model_config(str(cfg))
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-clip-test").eval()
    ckpt = root / "tiny_clip.bin"
    torch.save(model.state_dict(), ckpt)
    prompts = root / "prompts.txt"
    prompts.write_text("a red square\n\na blue circle\na green triangle\n")
    return cfg, ckpt, model, prompts


def test_name():
    assert clip_metric_name("ViT-g-14") == "clip_vitg14" and clip_metric_name("ViT-B-32") == "clip_vitb32"


def test_clip_score_matches_the_model_it_was_loaded_from(tiny_clip, monkeypatch):
    import open_clip

    cfg, ckpt, model, prompts = tiny_clip
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("download attempted"))
    metric = CLIPScore(str(prompts), checkpoint=str(ckpt), model_config=str(cfg), name="clip_tiny")
    assert metric.prompts == ["a red square", "a blue circle", "a green triangle"]
    g = torch.Generator().manual_seed(0)
    samples = torch.rand(6, 3, 40, 40, generator=g) * 2 - 1
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    score = metric.compute(samples, labels, None, None, NoGuidance())["clip_tiny"]
    # the same score by hand with the original (not reloaded) model
    _, _, preprocess = open_clip.create_model_and_transforms("tiny-clip-test")
    from PIL import Image

    imgs = ((samples + 1) * 127.5).round().to(torch.uint8)
    x = torch.stack([preprocess(Image.fromarray(i.permute(1, 2, 0).numpy())) for i in imgs])
    tok = open_clip.get_tokenizer("tiny-clip-test")
    with torch.no_grad():
        ie = torch.nn.functional.normalize(model.encode_image(x), dim=-1)
        te = torch.nn.functional.normalize(model.encode_text(tok([metric.prompts[i] for i in labels])), dim=-1)
    expected = float(100 * (ie * te).sum(-1).clamp(min=0).mean())
    assert score == pytest.approx(expected, rel=1e-5, abs=1e-5)
    assert 5 < score < 40  # 15.74 here: a non-zero score (not the clamp(min=0) floor on both sides), a percentage
    with pytest.raises(ValueError, match="label 3 has no prompt"):
        metric.compute(samples[:1], torch.tensor([3]), None, None, NoGuidance())


def test_missing_checkpoint_and_prompts_are_named(tiny_clip, tmp_path, monkeypatch):
    cfg, ckpt, _, prompts = tiny_clip
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("download attempted"))
    missing = tmp_path / "open_clip_vitg14.safetensors"
    with pytest.raises(MissingWeightsError, match="open_clip_vitg14.safetensors") as err:
        CLIPScore(str(prompts), checkpoint=str(missing), model_name="ViT-g-14")
    assert "never downloads" in str(err.value)
    with pytest.raises(FileNotFoundError, match="parti.txt"):
        CLIPScore(str(tmp_path / "parti.txt"), checkpoint=str(ckpt), model_config=str(cfg))
