"""HPSv2 and PickScore through their real checkpoint formats, on tiny random-weight models of the same
architectures (open_clip CLIP from a custom config, transformers CLIPModel from a tiny CLIPConfig), against a
hand computation of each score with the original models."""

import json
import math
import urllib.request

import pytest
import torch

from tdd_lab.guider import NoGuidance
from tdd_lab.metrics import HPSv2, MetricSuite, PickScore
from tdd_lab.metrics.features import MissingWeightsError
from tdd_lab.utils.cache import weights_fingerprint

TINY_OPEN_CLIP = {"embed_dim": 16,
                  "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
                  "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
PROMPTS = "a red square\n\na blue circle\na green triangle\n"
MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("download attempted"))


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text(PROMPTS)
    return path


@pytest.fixture(scope="module")
def samples():
    """6 images in [-1, 1] (40 px: resized to the models' 32 px) and their labels (prompt lines)."""
    g = torch.Generator().manual_seed(0)
    return torch.rand(6, 3, 40, 40, generator=g) * 2 - 1, torch.tensor([0, 1, 2, 0, 1, 2])


def pil_images(x):
    """[-1, 1] (B, 3, H, W) -> PIL images, quantised as the metrics quantise them."""
    from PIL import Image

    return [Image.fromarray(i.permute(1, 2, 0).numpy()) for i in ((x + 1) * 127.5).round().to(torch.uint8)]


@pytest.fixture(scope="module")
def tiny_hps(tmp_path_factory):
    """(config json, checkpoint in the HPS format {"state_dict": ...}, the model it holds)."""
    import open_clip

    root = tmp_path_factory.mktemp("hps")
    cfg = root / "tiny-hps-test.json"
    cfg.write_text(json.dumps(TINY_OPEN_CLIP))
    open_clip.add_model_config(str(cfg))
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-hps-test").eval()
    ckpt = root / "HPS_v2.1_compressed.pt"
    torch.save({"state_dict": model.state_dict()}, ckpt)
    return cfg, ckpt, model


@pytest.fixture(scope="module")
def tiny_pick(tmp_path_factory):
    """(model folder, processor folder, the model, the processor), saved with save_pretrained."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from tdd_lab.utils.tokenizer import load_clip_tokenizer

    root = tmp_path_factory.mktemp("pick")
    cfg = CLIPConfig(
        text_config={"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 77},
        vision_config={"image_size": 32, "patch_size": 16, "hidden_size": 32, "intermediate_size": 37,
                       "num_hidden_layers": 1, "num_attention_heads": 2},
        projection_dim=16)
    torch.manual_seed(1)
    model = CLIPModel(cfg).eval()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(100.0))  # PickScore_v1's scale is ~100 (not the config's init value 14.3)
    model.save_pretrained(root / "PickScore_v1")
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                           image_mean=list(MEAN), image_std=list(STD)),
        tokenizer=load_clip_tokenizer(root / "tok"))
    processor.save_pretrained(root / "processor")
    return root / "PickScore_v1", root / "processor", model, processor


def test_hpsv2_matches_the_public_formula_on_the_model_it_was_loaded_from(tiny_hps, prompts, samples, offline):
    import open_clip
    import torchvision.transforms.functional as TF
    from PIL import Image

    cfg, ckpt, model = tiny_hps
    x, labels = samples
    metric = HPSv2(str(prompts), checkpoint=str(ckpt), model_config=str(cfg), batch_size=4, device="cpu")
    assert metric.name == "hpsv2" and metric.prompts == ["a red square", "a blue circle", "a green triangle"]
    score = metric.compute(x, labels, None, None, NoGuidance())["hpsv2"]
    # by hand: bicubic resize of the square images to 32 px, CLIP mean/std; the original (not reloaded) model's
    # unit-norm features; hpsv2's score = diag(image_features @ text_features.T); the table reports 100 x the mean
    pixels = torch.stack([TF.normalize(TF.to_tensor(p.resize((32, 32), Image.BICUBIC)), MEAN, STD)
                          for p in pil_images(x)])
    text = open_clip.get_tokenizer("tiny-hps-test")([metric.prompts[y] for y in labels])
    with torch.no_grad():
        out = model(pixels, text)  # (image_features, text_features, logit_scale), features unit-norm
    expected = float(100 * torch.diagonal(out[0] @ out[1].T).mean())
    assert score == pytest.approx(expected, rel=1e-5, abs=1e-5)
    assert abs(score) > 1  # a cosine in percent, without the logit scale (x out[2] = 14.3 would be far off)
    raw = HPSv2(str(prompts), checkpoint=str(ckpt), model_config=str(cfg), scale=1.0, device="cpu")
    assert raw.compute(x, labels, None, None, NoGuidance())["hpsv2"] == pytest.approx(expected / 100, rel=1e-5)
    with pytest.raises(ValueError, match="label 3 has no prompt"):
        metric.compute(x[:1], torch.tensor([3]), None, None, NoGuidance())


def test_pickscore_matches_the_model_card_formula(tiny_pick, prompts, samples, offline):
    model_dir, processor_dir, model, processor = tiny_pick
    x, labels = samples
    metric = PickScore(str(prompts), model_dir=str(model_dir), processor_dir=str(processor_dir), batch_size=4,
                       device="cpu")
    assert metric.name == "pickscore"
    score = metric.compute(x, labels, None, None, NoGuidance())["pickscore"]
    # by hand, in one batch: CLIPModel's logits_per_image = logit_scale.exp() * cos; the diagonal pairs sample i
    # with its own prompt (PickScore per sample), averaged
    inputs = processor(text=[metric.prompts[y] for y in labels], images=pil_images(x), padding=True,
                       truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        expected = float(torch.diagonal(model(**inputs).logits_per_image).mean())
    assert score == pytest.approx(expected, rel=1e-5, abs=1e-4)
    assert abs(score) > 1  # the 100x logit scale of the checkpoint, not the config's initial one, was applied


def test_describe_fingerprints_the_weights(tiny_hps, tiny_pick, prompts, samples):
    cfg, ckpt, _ = tiny_hps
    model_dir, processor_dir, _, _ = tiny_pick
    suite = MetricSuite({"hpsv2": HPSv2(str(prompts), checkpoint=str(ckpt), model_config=str(cfg), device="cpu"),
                         "pickscore": PickScore(str(prompts), str(model_dir), str(processor_dir), device="cpu")})
    hps, pick = suite.describe()["members"]
    assert hps["class"] == "HPSv2" and hps["fingerprints"] == {"checkpoint": weights_fingerprint(ckpt)}
    assert pick["fingerprints"] == {"model_dir": weights_fingerprint(model_dir),
                                    "processor_dir": weights_fingerprint(processor_dir)}
    assert None not in (*hps["fingerprints"].values(), *pick["fingerprints"].values())
    x, labels = samples
    assert set(suite.compute(x, labels, None, None, NoGuidance())) == {"hpsv2", "pickscore"}


def test_missing_weights_name_the_path_and_the_source(tiny_pick, prompts, tmp_path, offline):
    model_dir, processor_dir, _, _ = tiny_pick
    with pytest.raises(MissingWeightsError, match="HPS_v2.1_compressed.pt") as err:
        HPSv2(str(prompts), checkpoint=str(tmp_path / "HPS_v2.1_compressed.pt"))
    assert "xswu/HPSv2" in str(err.value) and "never downloads" in str(err.value)
    with pytest.raises(MissingWeightsError, match="PickScore_v1' not found") as err:
        PickScore(str(prompts), str(tmp_path / "PickScore_v1"), str(processor_dir))
    assert "yuvalkirstain/PickScore_v1" in str(err.value)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(MissingWeightsError, match="lacks model.safetensors or pytorch_model.bin"):
        PickScore(str(prompts), str(tmp_path / "empty"), str(processor_dir))
    with pytest.raises(MissingWeightsError, match="laion/CLIP-ViT-H-14-laion2B-s32B-b79K"):
        PickScore(str(prompts), str(model_dir), str(tmp_path / "processor"))


def test_train_with_missing_preference_weights_fails_before_training(tmp_path, cache_dir, offline):
    """metrics=preference without the files: the HPS checkpoint is named before any step, with its source."""
    from tdd_lab.train import train

    from .conftest import compose_cfg

    with pytest.raises(MissingWeightsError, match="HPS_v2.1_compressed.pt") as err:
        train(compose_cfg(["experiment=tdd_gmm2d", "debug=smoke", "metrics=preference"], tmp_path, cache_dir))
    assert "xswu/HPSv2" in str(err.value)
    assert not (tmp_path / "metrics.json").exists()


def test_hpsv2_pads_a_non_square_image_as_the_hps_scorer(tiny_hps, prompts):
    """HPS resizes the longest side and pads (its ResizeMaxSize), where CLIP score center-crops: a 40 x 20 image
    becomes 32 x 16 between two 8-row bands of black, (0 - mean) / std after normalisation."""
    from PIL import Image

    cfg, ckpt, _ = tiny_hps
    metric = HPSv2(str(prompts), checkpoint=str(ckpt), model_config=str(cfg), device="cpu")
    x = metric._preprocess(Image.new("RGB", (40, 20), (255, 255, 255)))  # (3, 32, 32)
    black = -torch.tensor(MEAN) / torch.tensor(STD)
    white = (1 - torch.tensor(MEAN)) / torch.tensor(STD)
    torch.testing.assert_close(x[:, :8].mean((1, 2)), black)
    torch.testing.assert_close(x[:, 8:24].mean((1, 2)), white)
