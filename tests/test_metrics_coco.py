"""metrics=coco: the text-to-image FID protocol (names, crop + resize, reference statistics CLI, prompt line i for
sample i) on small stand-ins: a TorchScript Inception stand-in and a tiny random-weight SD1.5 pipeline."""

import runpy
import sys
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from tdd_lab.guider import NoGuidance
from tdd_lab.metrics.features import MissingWeightsError, resizer
from tdd_lab.metrics.fid import ProtocolFID, protocol_name
from tdd_lab.metrics.reference import main as reference_main

from .conftest import compose_cfg


class _ScriptedInception(nn.Module):
    """Stands in for clean-fid's TorchScript Inception file: a module with ``layers`` (any input size)."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Conv2d(3, 6, 5, stride=4), nn.Tanh(), nn.AdaptiveAvgPool2d(2))

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        return self.layers(x)


@pytest.fixture(scope="module")
def inception(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "inception-2015-12-05.pt"
    torch.jit.script(_ScriptedInception().eval()).save(str(path))
    return path


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    """A COCO-like reference folder (non-square photos of different sizes) and a 6-caption prompt file."""
    root = tmp_path_factory.mktemp("coco")
    folder = root / "val2014"
    folder.mkdir()
    g = np.random.default_rng(0)
    for i in range(12):
        h, w = (48, 64) if i % 2 else (64, 40)
        low = g.uniform(0, 255, (h // 8, w // 8, 3))
        img = np.kron(low, np.ones((8, 8, 1))) + g.normal(0, 12, (h, w, 3))  # blocky, noisy
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(folder / f"{i:03d}.png")
    prompts = root / "coco6.txt"
    prompts.write_text("a cat on a sofa\na red bus\n\na bowl of fruit\na man riding a wave\na clock tower\na kite\n")
    return folder, prompts


def fid(reference, prompts, inception, **kw):
    settings = dict(num_samples=6, resolution=32, crop="center", image_size=64, inception_path=str(inception),
                    batch_size=5, device="cpu")
    return ProtocolFID(str(reference), str(prompts), **{**settings, **kw})


def test_names_state_the_protocol_and_never_collide(coco, inception):
    folder, prompts = coco
    m = fid(folder, prompts, inception)
    assert m.name == "fid_clean/coco6_6_32px_center64_vs_val2014"
    assert protocol_name("clean", "coco30k", 30000, 1024, "center", 299, "val2014") == \
        "fid_clean/coco30k_30000_1024px_center299_vs_val2014"
    base = dict(mode="clean", prompts="coco30k", num_samples=30000, resolution=1024, crop="center", image_size=299,
                reference="val2014")
    variants = [base, {**base, "mode": "legacy_pytorch"}, {**base, "prompts": "coco10k"}, {**base, "num_samples": 10000},
                {**base, "resolution": 512}, {**base, "crop": "none"}, {**base, "image_size": 256},
                {**base, "reference": "teacher"}]
    assert len({protocol_name(**v) for v in variants}) == len(variants)


def test_center_crop_then_resize_is_the_one_preparation(coco):
    """A non-square image: crop=center takes the centred square before clean-fid's resize; none squashes it."""
    img = np.asarray(Image.open(coco[0] / "000.png"))  # (64, 40, 3)
    centred = resizer("clean", 32, "center")(img)
    assert centred.shape == (32, 32, 3)
    np.testing.assert_array_equal(centred, resizer("clean", 32)(img[12:52]))
    assert not np.allclose(centred, resizer("clean", 32)(img))


def test_reference_cli_equals_the_metrics_own_statistics(coco, inception, tmp_path, monkeypatch):
    """`python -m tdd_lab.metrics.reference` == the statistics a metric computes from the folder itself, and a metric
    on the .npz gives the same FID as one on the folder; an .npz built with another crop is refused."""
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("download attempted"))
    folder, prompts = coco
    out = reference_main([str(folder), "--out", str(tmp_path / "val2014.npz"), "--crop", "center", "--image-size", "64",
                          "--inception-path", str(inception), "--batch-size", "5", "--device", "cpu"])
    stats = np.load(out)
    by_folder = fid(folder, prompts, inception)
    mu, sigma = by_folder.reference_stats()
    np.testing.assert_array_equal(stats["mu"], mu)
    np.testing.assert_array_equal(stats["sigma"], sigma)
    assert stats["mu"].shape == (24,) and int(stats["num_images"]) == 12 and str(stats["crop"]) == "center"
    by_npz = fid(out, prompts, inception)
    assert by_npz.name == by_folder.name  # same stem, same protocol
    samples = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    a = by_folder.compute(samples, None, None, None, NoGuidance())[by_folder.name]
    b = by_npz.compute(samples, None, None, None, NoGuidance())[by_npz.name]
    assert a == pytest.approx(b, rel=1e-9) and a > 0
    squashed = reference_main([str(folder), "--out", str(tmp_path / "squashed.npz"), "--image-size", "64",
                               "--inception-path", str(inception), "--device", "cpu"])
    assert not np.allclose(np.load(squashed)["mu"], mu)  # the crop changes the statistics
    with pytest.raises(ValueError, match="crop='none'"):
        fid(squashed, prompts, inception)  # a metric with crop=center refuses them


@pytest.mark.filterwarnings("ignore:'tdd_lab.metrics.reference' found in sys.modules")
def test_reference_cli_bad_input_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["reference", str(tmp_path / "nope"), "--out", str(tmp_path / "s.npz")])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module("tdd_lab.metrics.reference", run_name="__main__")
    assert exit_.value.code == 2 and "nope" in capsys.readouterr().err
    assert not (tmp_path / "s.npz").exists()


def test_compute_refuses_samples_the_name_does_not_describe(coco, inception):
    folder, prompts = coco
    m = fid(folder, prompts, inception)
    with pytest.raises(ValueError, match="6 samples at 32 px"):
        m.compute(torch.zeros(5, 3, 32, 32), None, None, None, NoGuidance())
    with pytest.raises(ValueError, match="6 samples at 32 px"):
        m.compute(torch.zeros(6, 3, 48, 48), None, None, None, NoGuidance())
    with pytest.raises(ValueError, match="fewer than num_samples=7"):
        fid(folder, prompts, inception, num_samples=7)


@pytest.fixture(scope="module")
def sd15(tmp_path_factory):
    from tdd_lab.testing.tiny import save_tiny_sd15

    return save_tiny_sd15(tmp_path_factory.mktemp("sd15") / "pipe")


def test_sample_i_is_generated_for_prompt_line_i(sd15, coco, inception):
    """With metrics.prompt_file, label i is caption i (no cycling): each evaluation sample equals the sample of its
    own noise row and caption line alone; the CLIP/FID labels are the same indices."""
    from tdd_lab.evaluation import Evaluator, fixed_noise
    from tdd_lab.guidance import DecoupledGuidance
    from tdd_lab.samplers import TDDSampler
    from tdd_lab.teachers.latent import StableDiffusionTeacher, read_prompt_file

    folder, prompts = coco
    lines = read_prompt_file(prompts)
    teacher = StableDiffusionTeacher(str(sd15), resolution=32, eval_prompt_file=str(prompts))
    metric = fid("teacher", prompts, inception)
    evaluator = Evaluator(metric, steps=[2], num_samples=6, batch_size=4, teacher_steps=3, progress=False,
                          prompt_file=str(prompts), cache_dir=str(folder.parent / "cache"))
    noise, labels = evaluator.inputs(teacher)
    assert labels.tolist() == list(range(6))
    guidance, sampler = DecoupledGuidance(w=2.0), TDDSampler(eta=0.0, num_ddim_timesteps=50)
    scores, samples = evaluator.evaluate_student(teacher.denoiser, teacher, guidance, sampler)
    assert set(scores) == {f"eval/{metric.name}@2"} and scores[f"eval/{metric.name}@2"] > 0
    guider, _ = guidance.student_sampling(1.0)
    conditioner = teacher.conditioner
    for i in (0, 3, 5):  # first batch, second batch, last sample
        cond = conditioner.encode([lines[i]])
        alone = sampler.sample(teacher.denoiser, fixed_noise(6, teacher.sample_shape, 0)[i : i + 1], cond,
                               conditioner.null_like(cond), 2, guider)
        torch.testing.assert_close(samples[2][i : i + 1], alone, atol=1e-5, rtol=1e-4)
    other = StableDiffusionTeacher(str(sd15), resolution=32, eval_prompts=["a dog"] * 6)
    with pytest.raises(ValueError, match="teacher.eval_prompt_file"):
        evaluator.inputs(other)


def test_config_links_the_teacher_prompts_and_names_missing_files(tmp_path, cache_dir, inception, coco, monkeypatch):
    """metrics=coco: the teacher's eval_prompt_file is the metrics' prompt file; the prompt file, then the reference,
    then the Inception weights are named before anything is built."""
    from tdd_lab.validate import preflight

    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("download attempted"))
    from tdd_lab.testing.tiny import save_tiny_sd15

    folder, prompts = coco
    save_tiny_sd15(tmp_path / "sd15")  # a valid teacher folder: the checks under test come after the teacher's
    base = ["experiment=tdd_sd15", "debug=smoke", "metrics=coco", f"teacher.pretrained={tmp_path}/sd15"]
    cfg = compose_cfg(base, tmp_path, cache_dir)
    assert cfg.teacher.eval_prompt_file == cfg.metrics.prompt_file and cfg.metrics.prompt_file.endswith("coco30k.txt")
    assert cfg.metrics.metrics.members.fid.resolution == cfg.teacher.resolution
    with pytest.raises(FileNotFoundError, match="coco30k.txt"):
        preflight(cfg)
    weights = tmp_path / "w"
    files = [f"metrics.prompt_file={prompts}", "metrics.num_samples=6", "metrics.batch_size=3",
             f"metrics.metrics.members.fid.inception_path={weights}/inception-2015-12-05.pt"]
    with pytest.raises(FileNotFoundError, match="coco2014_val.npz"):
        preflight(compose_cfg(base + files, tmp_path, cache_dir))
    with pytest.raises(MissingWeightsError, match="inception-2015-12-05.pt") as err:
        preflight(compose_cfg(base + files + [f"metrics.metrics.members.fid.reference={folder}"], tmp_path, cache_dir))
    assert "nvlabs-fi-cdn" in str(err.value)
    too_many = [f"metrics.prompt_file={prompts}", "metrics.num_samples=40"]
    from tdd_lab.validate import ConfigError

    with pytest.raises((ConfigError, ValueError), match="fewer than num_samples=40"):
        preflight(compose_cfg(base + too_many, tmp_path, cache_dir))


def test_coco_prefs_scores_the_same_captions(tmp_path, cache_dir):
    """metrics=coco_prefs: coco's members plus hpsv2 and pickscore, every member over metrics.prompt_file."""
    cfg = compose_cfg(["experiment=tdd_sdxl", "metrics=coco_prefs", f"teacher.pretrained={tmp_path}/sdxl",
                       "metrics.prompt_file=/data/coco10k.txt", "metrics.num_samples=10000"], tmp_path, cache_dir)
    members = cfg.metrics.metrics.members
    assert list(members) == ["fid", "fid_teacher", "clip", "hpsv2", "pickscore"]
    assert {m.prompt_file for m in members.values()} == {"/data/coco10k.txt"} == {cfg.teacher.eval_prompt_file}
    assert members.fid.num_samples == members.fid_teacher.num_samples == 10000


def test_a_caption_file_is_memoised_only_up_to_the_limit(sd15, coco):
    """30k captions would hold 30k prompt embeddings on the device: the pipeline conditioners memoise at most
    ``memo_limit`` prompts and encode the rest per call, with the same conditions."""
    from tdd_lab.teachers.latent import StableDiffusionTeacher, read_prompt_file

    lines = read_prompt_file(coco[1])
    conditioner = StableDiffusionTeacher(str(sd15), resolution=32, eval_prompt_file=str(coco[1])).conditioner
    memoised = conditioner.encode(lines)
    conditioner._memo.clear()
    conditioner.memo_limit = 2
    limited = conditioner.encode(lines)
    assert len(conditioner._memo) == 2
    torch.testing.assert_close(limited, memoised, rtol=0, atol=0)
    torch.testing.assert_close(conditioner.encode(lines[::-1]), memoised.flip(0), rtol=0, atol=1e-6)
