"""The coloured-MNIST SDXL/FLUX teachers end to end at toy scale: data, pretrain, save, load in the stock pipeline
(a process that never imports tdd_lab), distil with the real recipes, export, reload through the stock pipeline.

The full-size runs and their floors are in ``tests/test_mnist_floors.py`` (slow)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from tdd_lab.data.mnist_color import (
    COLOR_NAMES,
    caption,
    colorize,
    dataset_tensors,
    label_prompts,
    parse_prompt,
    read_colors,
)

from .conftest import CONF_DIR, compose_cfg

ROOT = Path(__file__).resolve().parents[1]
STOCK = ROOT / "experiments" / "mnist_teachers" / "stock_generate.py"
# toy-size teachers: the same classes and code, a few optimizer steps
TINY_KW = {
    "sdxl": dict(vae_steps=3, steps=3, vae_channels=[8, 16, 16], unet_channels=[32, 64], text_dim=32, batch=8, vae_batch=8),
    "flux": dict(vae_steps=3, steps=3, vae_channels=[8, 16, 16], width=32, layers=1, text_dim=32, batch=8, vae_batch=8),
}
TINY = {kind: [f"teacher.{k}={json.dumps(v).replace(' ', '')}" for k, v in kw.items()] for kind, kw in TINY_KW.items()}


def _env(cache_dir, home):
    return {"TDD_LAB_CACHE": str(cache_dir), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PATH": "/usr/bin:/bin",
            "HOME": str(home), "OMP_NUM_THREADS": "1"}


def _compose(overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return OmegaConf.to_container(compose(config_name="train", overrides=overrides))


# ---- data and prompts ----------------------------------------------------------------------------------
def test_caption_template_and_parsing():
    assert caption("red", 7) == "a red handwritten digit seven"
    prompts = label_prompts()
    assert len(prompts) == 50 and prompts[23] == "a green handwritten digit three"  # label = colour * 10 + digit
    assert [parse_prompt(p) for p in prompts] == [(d, c) for c in range(5) for d in range(10)]
    with pytest.raises(ValueError, match="unknown colour 'purple'"):
        parse_prompt("a purple handwritten digit one")
    with pytest.raises(ValueError, match="unknown digit word 'eleven'"):
        parse_prompt("a red handwritten digit eleven")
    with pytest.raises(ValueError, match="does not follow the template"):
        parse_prompt("a photo of a cat")


def test_dataset_split_colours_and_colour_reader():
    train, digits, colors = dataset_tensors("train")
    held, held_digits, held_colors = dataset_tensors("heldout")
    assert train.shape == (4000, 3, 32, 32) and held.shape == (1000, 3, 32, 32)
    assert train.min() == -1 and train.max() == 1
    assert (train[:, :, :2] == -1).all() and (train[:, :, :, -2:] == -1).all()  # 28x28 strokes padded by 2
    assert set(digits.tolist()) == set(range(10)) and set(colors.tolist()) == set(range(5))
    # the colour reader is exact on real data, and an ink-free image is never a colour
    assert (read_colors(train) == colors).all() and (read_colors(held) == held_colors).all()
    assert read_colors(-torch.ones(1, 3, 32, 32)).item() == -1
    # it reads the hue, not the brightness: faint yellow strokes are yellow
    strokes = torch.zeros(1, 1, 28, 28)
    strokes[0, 0, 10:18, 12:15] = 0.5
    assert read_colors(colorize(strokes, torch.tensor([4]))).item() == COLOR_NAMES.index("yellow")


def test_recipes_differ_from_the_real_ones_only_in_scale():
    """tdd_sdxl_mnist / tdd_flux_mnist run the tdd_sdxl / tdd_flux code path: same strategy, solver, loss, student,
    target and sampler configs; the differences are the declared ones (teacher, data, metrics, scale settings)."""
    allowed = {"teacher", "data", "metrics", "trainer", "optimizer", "tags", "optimized_metric", "model", "cpu_threads"}
    for mnist, real, extra in (("tdd_sdxl_mnist", "tdd_sdxl", set()), ("tdd_flux_mnist", "tdd_flux", {"guidance"})):
        a, b = _compose([f"experiment={mnist}"]), _compose([f"experiment={real}"])
        differ = {k for k in set(a) | set(b) if a.get(k) != b.get(k)}
        assert differ <= allowed | extra, differ - allowed - extra
        for key in ("strategy", "solver", "loss", "student", "target", "sampler"):
            assert a[key] == b[key], key
        assert a["teacher"]["_target_"].endswith("MnistSDXLTeacher" if "sdxl" in mnist else "MnistFluxTeacher")
        assert {k for k in a["trainer"] if a["trainer"][k] != b["trainer"].get(k)} <= {"accelerator", "precision",
                                                                                         "max_steps", "log_every_n_steps"}
        assert {k for k in a["optimizer"] if a["optimizer"][k] != b["optimizer"].get(k)} <= {"lr"}
    flux = _compose(["experiment=tdd_flux_mnist"])
    assert flux["guidance"]["_target_"].endswith("DecoupledGuidance")  # a CFG flow model, not guidance-embedded


# ---- teachers: pretrain, cache, stock loading -----------------------------------------------------------
# the FLUX variants run with the slow tests (make test-slow); the FLUX pipeline is in the fast suite through the
# teacher contract tests (a toy mnist_flux teacher) and tests/diffusers
KINDS = ["sdxl", pytest.param("flux", marks=pytest.mark.slow)]


@pytest.fixture(scope="module", params=KINDS)
def tiny_teacher(request, cache_dir, tmp_path_factory):
    """``python -m tdd_lab.pretrain_teacher teacher=mnist_<kind>`` at toy size; its last line is the folder."""
    kind = request.param
    cwd = tmp_path_factory.mktemp(f"pretrain_{kind}")
    res = subprocess.run([sys.executable, "-m", "tdd_lab.pretrain_teacher", f"teacher=mnist_{kind}", *TINY[kind],
                          f"paths.cache_dir={cache_dir}", f"hydra.run.dir={cwd}"], cwd=ROOT,
                         env=_env(cache_dir, cwd), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    folder = Path(res.stdout.strip().splitlines()[-1])
    assert folder.is_dir() and folder.parent == Path(cache_dir) and folder.name.startswith(f"teacher-mnist_{kind}-")
    return kind, folder


def test_teacher_folder_is_a_stock_pipeline(tiny_teacher, tmp_path, cache_dir):
    kind, folder = tiny_teacher
    model_index = json.loads((folder / "model_index.json").read_text())
    assert model_index["_class_name"] == ("StableDiffusionXLPipeline" if kind == "sdxl" else "FluxPipeline")
    info = json.loads((folder / "pretrain.json").read_text())
    vae = json.loads((folder / "vae" / "config.json").read_text())
    assert vae["scaling_factor"] == pytest.approx(info["scaling_factor"]) and vae["scaling_factor"] != 1.0
    if kind == "sdxl":
        assert model_index["force_zeros_for_empty_prompt"] is True and vae["latent_channels"] == 4
        unet = json.loads((folder / "unet" / "config.json").read_text())
        assert unet["addition_embed_type"] == "text_time"
        sched = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
        assert (sched["_class_name"], sched["beta_schedule"], sched["beta_end"]) == (
            "EulerDiscreteScheduler", "scaled_linear", 0.012)
        bpe = json.loads((folder / "tokenizer" / "tokenizer.json").read_text())["model"]  # the real CLIP BPE
        assert (bpe["type"], len(bpe["vocab"]), len(bpe["merges"])) == ("BPE", 49408, 48894)
    else:
        assert vae["latent_channels"] == 16 and vae["shift_factor"] == pytest.approx(info["shift_factor"]) != 0
        sched = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
        assert sched["_class_name"] == "FlowMatchEulerDiscreteScheduler" and sched["use_dynamic_shifting"] is True
        assert json.loads((folder / "transformer" / "config.json").read_text())["guidance_embeds"] is False
    # the stock pipeline, in a process that never imports tdd_lab, generates from the caption template
    out = tmp_path / "x.pt"
    res = subprocess.run([sys.executable, str(STOCK), str(folder), "--kind", kind, "--n", "4", "--steps", "3",
                          "--out", str(out)], env=_env(cache_dir, tmp_path), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    images = torch.load(out)["images"]
    assert images.shape == (4, 3, 32, 32) and torch.isfinite(images).all()


def test_teacher_is_reused_and_a_damaged_cache_is_rebuilt(tiny_teacher, cache_dir, caplog):
    from tdd_lab.teachers.mnist import MnistFluxTeacher, MnistSDXLTeacher

    kind, folder = tiny_teacher
    if kind == "flux":
        pytest.skip("the cache logic is shared (build_pipeline_folder); checked once, on the SDXL teacher")
    cls = MnistSDXLTeacher if kind == "sdxl" else MnistFluxTeacher
    kwargs = {**TINY_KW[kind], "cache_dir": str(cache_dir)}
    before = (folder / "pretrain.json").stat().st_mtime_ns
    assert cls(**kwargs).path == folder and (folder / "pretrain.json").stat().st_mtime_ns == before  # reused
    weights = next((folder / ("unet" if kind == "sdxl" else "transformer")).glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a half-copied cache
    with caplog.at_level(logging.WARNING, logger="tdd_lab.teachers.mnist"):
        teacher = cls(**kwargs)
    assert "damaged" in caplog.text and weights.name in caplog.text  # names the culprit
    assert teacher.path == folder and (folder / "pretrain.json").stat().st_mtime_ns != before  # rebuilt, loads


def test_bad_prompt_is_refused_before_any_pretraining(tmp_path):
    from tdd_lab.teachers.mnist import MnistSDXLTeacher

    with pytest.raises(ValueError, match="unknown colour 'purple'"):
        MnistSDXLTeacher(cache_dir=str(tmp_path), eval_prompts=["a purple handwritten digit one"])
    assert not list(tmp_path.iterdir())  # nothing was built


# ---- distillation through the real recipes, export, stock reload ----------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_distil_export_and_stock_reload(kind, tmp_path, cache_dir):
    """The recipe trains on the image folder, reports the metrics=mnist keys, exports student/, and the stock
    pipeline with the exported LoRA and scheduler reproduces the run's 4-step class and colour accuracy."""
    from tdd_lab.export.pipeline import load_student_pipeline
    from tdd_lab.train import train

    overrides = [f"experiment=tdd_{kind}_mnist", "debug=smoke", *TINY[kind], "metrics.metrics.classifier_epochs=1",
                 "metrics.num_samples=50", "metrics.batch_size=25", "student.rank=4", "student.alpha=4"]
    cfg = compose_cfg(overrides, tmp_path, cache_dir)
    metrics = train(cfg)
    for k in (2, 4):
        for name in ("fid_teacher", "fid", "class_acc", "color_acc"):
            assert f"eval/{name}@{k}" in metrics and f"teacher/{name}@{k}" in metrics
    assert "teacher/class_acc@10" in metrics and "teacher/color_acc@10" in metrics  # smoke's 10-step reference
    assert metrics["teacher/fid_teacher@10"] == pytest.approx(0.0, abs=1e-6)  # the reference against itself
    student = tmp_path / "student"
    assert (student / "pytorch_lora_weights.safetensors").exists()
    assert json.loads((student / "teacher.json").read_text())["pretrained"].startswith(str(cache_dir))
    # the stock pipeline + load_lora_weights + the exported scheduler, at 4 steps from the evaluator's noise
    from tdd_lab.metrics.mnist import stock_pipeline_scores

    pipe = load_student_pipeline(student)
    acc = stock_pipeline_scores(pipe, n=50, steps=4, eta=cfg.sampler.eta, batch=25, cache_dir=str(cache_dir),
                                classifier_epochs=1)
    assert acc["class_acc"] == pytest.approx(metrics["eval/class_acc@4"], abs=0.01)
    assert acc["color_acc"] == pytest.approx(metrics["eval/color_acc@4"], abs=0.01)
    if kind == "flux":
        # sample for sample: FluxPipeline steps its scheduler on packed latents and tdd_lab's sampler steps it in the
        # same layout, so even the eta > 0 re-noising draws agree
        from tdd_lab.evaluation import fixed_noise
        from tdd_lab.export import load_student
        from tdd_lab.guider import NoGuidance
        from tdd_lab.nets.flux import pack_latents, unpack_latents
        from tdd_lab.samplers import FlowTDDSampler

        exported = load_student(tmp_path)
        noise, labels = fixed_noise(4, exported.sample_shape, 0), torch.arange(4)
        cond = exported.conditioner.conditions(labels)
        ours = FlowTDDSampler(eta=cfg.sampler.eta, num_ddim_timesteps=250).sample(
            exported.denoiser, noise, cond, exported.conditioner.null_like(cond), 4, NoGuidance(), None,
            torch.Generator().manual_seed(0))
        pipe.scheduler.register_to_config(eta=cfg.sampler.eta)
        pipe.scheduler.generator = torch.Generator().manual_seed(0)
        stock = pipe(prompt=[label_prompts()[i] for i in range(4)], num_inference_steps=4, height=32, width=32,
                     latents=pack_latents(noise), max_sequence_length=16, output_type="latent").images
        assert torch.allclose(unpack_latents(stock, 8, 8), ours, atol=1e-4)
