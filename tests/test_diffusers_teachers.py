"""SD1.5 / SDXL / FLUX teachers on tiny random-weight pipelines saved to disk and loaded like real ones.

For each family: a smoke training through the real loader, the export, the export loaded into the
stock diffusers pipeline (``load_lora_weights``), and that pipeline reproducing ``tdd_lab.sample``.
"""

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from tdd_lab.sample import main as sample_main
from tdd_lab.testing.tiny import save_tiny_flux, save_tiny_sd15, save_tiny_sdxl, write_image_folder
from tdd_lab.train import train

from .conftest import compose_cfg

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = {"sdxl": save_tiny_sdxl, "sd15": save_tiny_sd15, "flux": save_tiny_flux}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("diffusers_assets")
    paths = {name: build(root / name) for name, build in FAMILIES.items()}
    paths["images"] = write_image_folder(root / "images", n=8)
    return paths


def smoke_overrides(family, assets, *extra, data=None):
    """The user's smoke command on a tiny pipeline, with a small evaluation."""
    data = data or ["data=image_folder", f"data.root={assets['images']}"]
    out = [f"experiment=tdd_{family}", f"teacher.pretrained={assets[family]}", *data, "debug=smoke", "teacher.resolution=32", "data.batch_size=4",
           "data.num_workers=0", "solver.num_ddim_timesteps=50", "metrics.num_samples=2", "metrics.batch_size=2",
           "metrics.metrics.ode_steps=4", "metrics.teacher_steps=4"]
    if family == "flux":
        out.append("teacher.max_sequence_length=16")
    return out + list(extra)


def pipeline_images(assets, family, student_dir, prompts, steps, seed, eta, resolution=32):
    """What a user writes: stock pipeline + load_lora_weights + the exported scheduler, per-image seeds."""
    import diffusers

    from tdd_lab.schedulers import FlowTDDScheduler, TDDScheduler

    cls = {"sdxl": diffusers.StableDiffusionXLPipeline, "sd15": diffusers.StableDiffusionPipeline,
           "flux": diffusers.FluxPipeline}[family]
    kw = {"safety_checker": None, "requires_safety_checker": False} if family == "sd15" else {}
    pipe = cls.from_pretrained(assets[family], torch_dtype=torch.float32, **kw)
    pipe.load_lora_weights(str(student_dir))
    sched_cls = FlowTDDScheduler if family == "flux" else TDDScheduler
    pipe.scheduler = sched_cls.from_pretrained(student_dir / "scheduler")
    pipe.set_progress_bar_config(disable=True)
    gens = [torch.Generator().manual_seed(seed + i) for i in range(len(prompts))]
    call = dict(prompt=prompts, num_inference_steps=steps, generator=gens, height=resolution, width=resolution,
                output_type="pt")
    if family == "flux":
        pipe.scheduler.register_to_config(eta=eta)
        pipe.scheduler.generator = torch.Generator().manual_seed(seed)  # FluxPipeline keeps its generator to itself
        call.update(guidance_scale=3.5, max_sequence_length=16)
    else:
        call.update(guidance_scale=1.0, eta=eta)
    return pipe(**call).images.float()


@pytest.mark.parametrize("family", ["sdxl", "sd15", "flux"])
def test_smoke_train_export_load_in_stock_pipeline(family, assets, tmp_path, cache_dir):
    # a high lr so that the adapters move far enough for a wrong alpha or key map to show
    kohya = family != "flux"  # the kohya layout is a UNet format
    cfg = compose_cfg(smoke_overrides(family, assets, "teacher.dtype=fp32", "optimizer.lr=0.01", "student.rank=4",
                                      "student.alpha=8", f"export_kohya={kohya}", "export_fused=true"), tmp_path, cache_dir)
    metrics = train(cfg)
    assert metrics["train/steps"] == 5.0
    assert all(v == v for v in metrics.values())
    assert {"eval/ode_rmse@2", "eval/ode_rmse@4", "teacher/ode_rmse@4"} <= set(metrics)
    student = tmp_path / "student"
    names = {p.name for p in student.iterdir()}
    attr = "transformer" if family == "flux" else "unet"
    assert {"pytorch_lora_weights.safetensors", "scheduler", "student.json", "teacher.json", "README.md", attr} <= names
    assert ("lora_kohya.safetensors" in names) == kohya
    # alpha is stored with the adapters (no fuse scale to guess) and in the kohya file
    with safe_open(str(student / "pytorch_lora_weights.safetensors"), "pt") as f:
        meta = json.loads(f.metadata()["lora_adapter_metadata"])
    assert meta[f"{attr}.lora_alpha"] == 8 and meta[f"{attr}.r"] == 4
    if kohya:
        with safe_open(str(student / "lora_kohya.safetensors"), "pt") as f:
            alphas = [f.get_tensor(k) for k in f.keys() if k.endswith(".alpha")]
        assert alphas and all(float(a) == 8.0 for a in alphas)
    assert "load_lora_weights" in (student / "README.md").read_text()

    # the LoRA loaded by the stock pipeline == the fused student model == (merged) trained student
    import diffusers

    kw = {"safety_checker": None, "requires_safety_checker": False} if family == "sd15" else {}
    cls = {"sdxl": diffusers.StableDiffusionXLPipeline, "sd15": diffusers.StableDiffusionPipeline,
           "flux": diffusers.FluxPipeline}[family]
    pipe = cls.from_pretrained(assets[family], torch_dtype=torch.float32, **kw)
    base = getattr(pipe, attr)
    fused = type(base).from_pretrained(student / attr)
    probe = {n: p.detach().clone() for n, p in base.named_parameters()}
    pipe.load_lora_weights(str(student))
    lora_model = getattr(pipe, attr)
    moved = max((fused.state_dict()[n] - probe[n]).abs().max().item() for n in probe)
    assert moved > 1e-3  # training changed the function
    torch.manual_seed(0)
    if family == "flux":
        from tdd_lab.nets.flux import FluxDenoiser

        x = torch.randn(2, 4, 16, 16)
        cond = {"encoder_hidden_states": torch.randn(2, 16, 32), "pooled_projections": torch.randn(2, 32)}
        t = torch.tensor([999.0, 400.0])
        out_lora = FluxDenoiser(lora_model, 3.5)(x, t, cond)
        out_fused = FluxDenoiser(fused, 3.5)(x, t, cond)
    else:
        from tdd_lab.nets.unet import UNetDenoiser

        x = torch.randn(2, 4, 16, 16)
        dim = base.config.cross_attention_dim
        cond = torch.randn(2, 77, dim)
        if family == "sdxl":
            cond = {"encoder_hidden_states": cond, "added_cond_kwargs": {
                "text_embeds": torch.randn(2, 32), "time_ids": torch.tensor([[32.0, 32, 0, 0, 32, 32]] * 2)}}
        t = torch.tensor([999, 400])
        out_lora = UNetDenoiser(lora_model)(x, t, cond)
        out_fused = UNetDenoiser(fused)(x, t, cond)
    assert torch.allclose(out_lora, out_fused, atol=1e-4, rtol=1e-4)
    if kohya:  # the kohya file loads in the stock pipeline and has the same function (its alpha is right)
        pipe_k = cls.from_pretrained(assets[family], torch_dtype=torch.float32, **kw)
        pipe_k.load_lora_weights(str(student), weight_name="lora_kohya.safetensors")
        out_kohya = UNetDenoiser(pipe_k.unet)(x, t, cond)
        assert torch.allclose(out_kohya, out_fused, atol=1e-4, rtol=1e-4)

    # tdd_lab.sample (stock pipeline inside) == the user's own stock-pipeline code, same prompts and seeds
    out = tmp_path / "s.png"
    prompts = ["a red square", "a blue square"]
    assert sample_main([str(tmp_path), "--prompt", prompts[0], "--prompt", prompts[1], "--steps", "4",
                        "--seed", "3", "--eta", "0.3", "--out", str(out)]) == 0
    ours = torch.load(out.with_suffix(".pt"))["images"]
    theirs = pipeline_images(assets, family, student, prompts, 4, 3, 0.3)
    assert ours.shape == (2, 3, 32, 32)
    assert torch.allclose(ours, theirs, atol=1e-5)

    # tdd_lab.evaluate on the run: the exported student, evaluated again at the run's own settings,
    # reproduces the training-time metric (export and reload lose nothing)
    from omegaconf import OmegaConf

    from tdd_lab.evaluate import main as evaluate_main

    eta = 0.0  # ode_rmse is measured with deterministic sampling
    (tmp_path / ".hydra").mkdir(exist_ok=True)  # what `python -m tdd_lab.train` writes; train() in-process does not
    OmegaConf.save(OmegaConf.create({k: cfg[k] for k in cfg if k != "hydra"}), tmp_path / ".hydra" / "config.yaml",
                   resolve=True)
    assert evaluate_main([str(tmp_path), "--steps", "2", "--no-wandb"]) == 0
    saved = json.loads((tmp_path / "metrics.json").read_text())
    key = next(k for k in saved if k.startswith("eval/ode_rmse@2/"))
    assert f"eta{eta:g}" in key or "eta0" in key
    assert saved[key] == pytest.approx(metrics["eval/ode_rmse@2"], rel=1e-3, abs=1e-5)


def test_cli_headline_command_on_tiny_sdxl(assets, tmp_path, cache_dir):
    """`python -m tdd_lab.train +experiment=tdd_sdxl teacher.pretrained=DIR data=image_folder data.root=DIR debug=smoke`."""
    from .test_train import run_cli

    args = ["-m", "tdd_lab.train", "+experiment=tdd_sdxl", f"teacher.pretrained={assets['sdxl']}", "data=image_folder",
            f"data.root={assets['images']}", "debug=smoke", "teacher.resolution=32", "data.batch_size=4",
            "data.num_workers=0", "metrics.num_samples=4", "metrics.batch_size=4", "metrics.metrics.ode_steps=8",
            "metrics.teacher_steps=8", f"hydra.run.dir={tmp_path / 'run'}"]
    r = run_cli(args, tmp_path, cache_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["train/steps"] == 5.0 and "eval/ode_rmse@4" in metrics
    assert (tmp_path / "run" / "student" / "pytorch_lora_weights.safetensors").exists()


def _module(family, assets, cache_dir, tmp_path, *extra):
    from tdd_lab.train import build_module

    cfg = compose_cfg(smoke_overrides(family, assets, *extra), tmp_path, cache_dir)
    return build_module(cfg)


def test_lora_student_shares_the_teacher_unet(assets, tmp_path, cache_dir):
    module, _, _ = _module("sdxl", assets, cache_dir, tmp_path, "teacher.dtype=fp32", "student.rank=4")
    teacher = module.teacher
    assert module.student is teacher.net  # one UNet in memory: adapters injected into the teacher's own
    n_unet = sum(p.numel() for p in teacher.model.parameters())  # base + adapters
    assert sum(p.numel() for p in module.parameters()) == n_unet  # no second copy of the base weights
    lora = [p for n, p in module.student.named_parameters() if "lora_B" in n]
    with torch.no_grad():
        for p in lora:
            p.normal_(0, 0.5)
    x = torch.randn(2, 4, 16, 16)
    t = torch.tensor([999, 300])
    cond = teacher.conditions(torch.tensor([0, 1]))
    x0_t, eps_t = teacher.denoise(x, t, cond)
    with torch.no_grad():
        from tdd_lab.teachers.base import adapters_disabled

        with adapters_disabled(module.student):
            base_eps = module.student_eps(x, t, cond)
        student_eps = module.student_eps(x, t, cond)
    assert torch.allclose(eps_t, base_eps, atol=1e-5)        # the teacher sees the base model
    assert (student_eps - base_eps).abs().max() > 1e-2       # the student sees its adapters
    assert all(p.requires_grad for p in lora)                # trainability restored after teacher calls
    # checkpoints keep the adapters only; the frozen base comes back from teacher.pretrained
    ckpt = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(ckpt)
    assert ckpt["state_dict"] and all("lora_" in k for k in ckpt["state_dict"])
    assert ckpt["frozen_weights_omitted"] > 0


def test_sdxl_null_condition_is_one_thing_and_keeps_micro_conditioning(assets, tmp_path, cache_dir):
    module, datamodule, _ = _module("sdxl", assets, cache_dir, tmp_path, "teacher.dtype=fp32")
    teacher = module.teacher
    assert teacher.force_zeros  # SDXL base sets force_zeros_for_empty_prompt
    batch = {"prompt": ["a red square", "a blue square"], "pixel_values": torch.zeros(2, 3, 32, 32),
             "original_size": torch.tensor([[480, 640], [32, 40]]), "crop_top_left": torch.tensor([[0, 80], [0, 4]])}
    x0, cond = teacher.prepare_batch(batch)
    assert x0.shape == (2, 4, 16, 16)
    assert cond["added_cond_kwargs"]["time_ids"].tolist() == [[480, 640, 0, 80, 32, 32], [32, 40, 0, 4, 32, 32]]
    null = teacher.null_like(cond)
    assert null["encoder_hidden_states"].abs().max() == 0 and null["added_cond_kwargs"]["text_embeds"].abs().max() == 0
    assert torch.equal(null["added_cond_kwargs"]["time_ids"], cond["added_cond_kwargs"]["time_ids"])
    # a dropped caption (decoupled guidance) becomes exactly the teacher's unconditional branch
    from tdd_lab.guidance import DecoupledGuidance

    g = DecoupledGuidance(w=3.5, proportion_empty_prompts=1.0).prepare(cond, null)
    assert torch.equal(g.cond["encoder_hidden_states"], g.uncond["encoder_hidden_states"])
    assert torch.equal(g.cond["added_cond_kwargs"]["text_embeds"], g.uncond["added_cond_kwargs"]["text_embeds"])


def test_sd15_v_prediction_variant(tmp_path, cache_dir, assets):
    from tdd_lab.export import export_student

    vdir = save_tiny_sd15(tmp_path / "sd15v", prediction_type="v_prediction")
    module, datamodule, _ = _module("sd15", {**assets, "sd15": vdir}, cache_dir, tmp_path, "teacher.dtype=fp32")
    teacher = module.teacher
    assert teacher.prediction_type == "v_prediction"
    # the teacher's (x0, eps) come from v: x0 = a x - s v, eps = s x + a v
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([900, 100])
    cond = teacher.conditions(torch.tensor([0, 1]))
    v = teacher.net(x, t, cond)
    a, s = teacher.schedule.alpha_sigma(t, 4)
    x0, eps = teacher.denoise(x, t, cond)
    assert torch.allclose(x0, a * x - s * v, atol=1e-5) and torch.allclose(eps, s * x + a * v, atol=1e-5)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    loss, _ = module.distillation_loss(batch)
    assert torch.isfinite(loss)
    out = export_student(tmp_path / "student", module.student, module.student_factory, teacher, 50, None, {})
    sched = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert sched["prediction_type"] == "v_prediction" and sched["_class_name"] == "TDDScheduler"


def test_flux_latents_and_sigma_shift_match_the_pipeline(assets, tmp_path, cache_dir):
    import diffusers
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    from tdd_lab.nets.flux import pack_latents, unpack_latents
    from tdd_lab.schedulers import FlowTDDScheduler

    module, _, _ = _module("flux", assets, cache_dir, tmp_path, "teacher.dtype=fp32")
    teacher = module.teacher
    vae = teacher.vae
    assert vae.config.shift_factor and vae.config.shift_factor != 0
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    z = vae.encode(x).latent_dist.mode()
    assert torch.allclose(teacher.encode_images(x), (z - vae.config.shift_factor) * vae.config.scaling_factor)
    # mu of training == mu FluxPipeline computes for this resolution
    cfg = teacher.pipe.scheduler.config
    seq = (32 // 2 // 2) ** 2
    mu = calculate_shift(seq, cfg.base_image_seq_len, cfg.max_image_seq_len, cfg.base_shift, cfg.max_shift)
    assert teacher.schedule.mu == pytest.approx(mu)
    # packing round trip and FluxPipeline's own packing
    lat = torch.randn(2, 4, 16, 16)
    assert torch.equal(unpack_latents(pack_latents(lat), 16, 16), lat)
    assert torch.equal(pack_latents(lat), diffusers.FluxPipeline._pack_latents(lat, 2, 4, 16, 16))
    # the exported scheduler samples on the training sigmas
    sched = teacher.sampling_scheduler(50)
    sched.set_timesteps(sigmas=[1.0, 0.75, 0.5, 0.25], mu=mu)
    grid_sig = teacher.schedule.sigmas[sched.grid_timesteps]
    assert torch.allclose(sched.timesteps.double() / 1000, grid_sig, atol=1e-6)
    assert isinstance(sched, FlowTDDScheduler)


@pytest.mark.parametrize("eta", [0.0, 0.3])
def test_flow_tdd_scheduler_is_exact_on_a_point_mass(eta):
    """Exact velocity of a point mass c: v = (x - c)/sigma; every TDD step lands on the exact x_s, the end on c."""
    from tdd_lab.schedulers import FlowTDDScheduler

    c = torch.tensor([0.7, -1.2]).view(1, 2)
    sched = FlowTDDScheduler(use_dynamic_shifting=True, mu=0.8, tdd_train_step=250, eta=eta)
    sched.set_timesteps(6)
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    for t in sched.timesteps:
        sigma = t / 1000
        v = (x - (1 - sigma) * c) / sigma - c
        x = sched.step(v, t, x, generator=gen).prev_sample
    assert torch.allclose(x, c.expand_as(x), atol=1e-5)


def test_flow_tdd_scheduler_eta0_equals_diffusers_flow_euler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    from tdd_lab.schedulers import FlowTDDScheduler

    ours = FlowTDDScheduler(use_dynamic_shifting=True, mu=0.5, tdd_train_step=50, eta=0.0)
    ours.set_timesteps(4)
    ref = FlowMatchEulerDiscreteScheduler(shift=1.0)  # takes our (already shifted) sigmas as they are
    ref.set_timesteps(sigmas=ours.sigmas.numpy())
    assert torch.allclose(ref.sigmas[:-1], ours.sigmas, atol=1e-6) and ref.sigmas[-1] == 0
    x_a = x_b = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    w = torch.randn(4, 4)
    for t_a, t_b in zip(ours.timesteps, ref.timesteps):
        v_a = torch.einsum("ij,bjhw->bihw", w, x_a) * (t_a / 1000)
        v_b = torch.einsum("ij,bjhw->bihw", w, x_b) * (t_b / 1000)
        x_a = ours.step(v_a, t_a, x_a).prev_sample
        x_b = ref.step(v_b, t_b, x_b).prev_sample
    assert torch.allclose(x_a, x_b, atol=1e-5)


def test_webdataset_shards_train_and_skip_corrupt_samples(assets, tmp_path, cache_dir):
    import io

    import webdataset as wds
    from PIL import Image

    shards = []
    for s in range(2):
        path = tmp_path / f"shard-{s}.tar"
        with wds.TarWriter(str(path)) as sink:
            for i in range(4):
                buf = io.BytesIO()
                Image.new("RGB", (40, 36), (40 * i, 200, 50 * s)).save(buf, format="PNG")
                sink.write({"__key__": f"{s}_{i}", "png": buf.getvalue(), "txt": f"a green square {i}"})
            sink.write({"__key__": f"{s}_bad", "png": b"broken", "txt": "broken"})
        shards.append(str(path))
    urls = str(tmp_path / "shard-{0..1}.tar")
    data = ["data=webdataset", f"data.urls='{urls}'", "data.shuffle_buffer=4"]  # default max_bad_fraction
    cfg = compose_cfg(smoke_overrides("sdxl", assets, "teacher.dtype=fp32", "metrics.steps=[2]", data=data),
                      tmp_path / "run", cache_dir)
    metrics = train(cfg)
    assert metrics["train/steps"] == 5.0
    rows = (tmp_path / "run" / "csv").rglob("metrics.csv")
    text = "".join(p.read_text() for p in rows)
    assert "data/skipped" in text


def test_bad_inputs_fail_before_compute(assets, tmp_path, cache_dir):
    from .test_train import run_cli

    base = ["-m", "tdd_lab.train", "+experiment=tdd_sdxl", "debug=smoke", "data.batch_size=4",
            f"hydra.run.dir={tmp_path / 'r'}"]
    r = run_cli(base + [f"teacher.pretrained={tmp_path / 'missing'}", f"data.root={assets['images']}"], tmp_path, cache_dir)
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    r = run_cli(base + ["teacher.pretrained=no-such-org/no-such-model", f"data.root={assets['images']}"], tmp_path, cache_dir)
    assert r.returncode == 2 and "not in the local Hugging Face cache" in r.stderr
    # a pipeline folder whose tokenizer lost its vocabulary: the silent 2-token fallback is caught
    import shutil

    broken = tmp_path / "broken_sdxl"
    shutil.copytree(assets["sdxl"], broken)
    for f in (broken / "tokenizer").iterdir():  # keep only tokenizer_config.json
        if f.name != "tokenizer_config.json":
            f.unlink()
    r = run_cli(base + [f"teacher.pretrained={broken}", f"data.root={assets['images']}", "teacher.resolution=32"],
                tmp_path, cache_dir)
    assert r.returncode == 2 and "tokenizer" in r.stderr, r.stderr[-2000:]
    empty = tmp_path / "empty_data"
    empty.mkdir()
    r = run_cli(base + [f"teacher.pretrained={assets['sdxl']}", f"data.root={empty}"], tmp_path, cache_dir)
    assert r.returncode == 2 and "holds no image" in r.stderr


def test_data_errors_are_config_errors(assets, tmp_path, cache_dir):
    from tdd_lab.validate import ConfigError, validate_config

    cfg = compose_cfg(smoke_overrides("sdxl", assets, "data.batch_size=16"), tmp_path, cache_dir)
    with pytest.raises(ConfigError, match="8 images, fewer than data.batch_size=16"):
        validate_config(cfg)
    data = ["data=webdataset", f"data.urls='{tmp_path}/missing-{{0..3}}.tar'"]
    cfg = compose_cfg(smoke_overrides("sdxl", assets, data=data), tmp_path, cache_dir)
    with pytest.raises(ConfigError, match="missing-0.tar"):
        validate_config(cfg)


def test_unreadable_dataset_stops_with_a_clear_error(assets, tmp_path, cache_dir):
    from tdd_lab.data.image_folder import DataQualityError

    bad = tmp_path / "bad"
    write_image_folder(bad, n=0, corrupt=8)
    cfg = compose_cfg(smoke_overrides("sdxl", assets, "teacher.dtype=fp32", f"data.root={bad}"), tmp_path / "run",
                      cache_dir)
    with pytest.raises(DataQualityError, match="unreadable"):
        train(cfg)


def test_lora_targets_of_the_recipe_exist_in_the_sdxl_unet(assets, tmp_path, cache_dir):
    module, _, _ = _module("sdxl", assets, cache_dir, tmp_path, "teacher.dtype=fp32")
    wrapped = {n.rsplit(".base_layer", 1)[0] for n, _ in module.student.named_modules() if n.endswith("base_layer")}
    suffixes = {n.split(".")[-1] for n in wrapped} | {".".join(n.split(".")[-2:]) for n in wrapped}
    for target in ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "conv1", "conv2", "time_emb_proj"):
        assert target in suffixes, target


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


def test_latent_cache_equals_encoding_on_the_fly_and_is_reused(assets, tmp_path, cache_dir):
    from tdd_lab.data.image_folder import ImageFolderDataModule, ImageFolderDataset, collate_skipping

    module, _, _ = _module("sdxl", assets, cache_dir, tmp_path, "teacher.dtype=fp32")
    teacher = module.teacher
    dm = ImageFolderDataModule(assets["images"], resolution=32, batch_size=4, num_workers=0, cache_latents=True,
                               cache_dir=str(tmp_path / "cache"), teacher=teacher)
    dm.prepare_data()
    dm.setup("fit")
    (path,) = list((tmp_path / "cache").glob("latents-*"))
    stamp = (path / "latents.safetensors").stat().st_mtime_ns
    raw = ImageFolderDataset(assets["images"], 32)
    batch = collate_skipping([raw[i] for i in range(3)])
    x0, cond = teacher.prepare_batch(batch)
    cached = torch.utils.data.default_collate([dm.train_set[i] for i in range(3)])
    x0_c, cond_c = teacher.prepare_batch(cached)
    assert torch.allclose(x0, x0_c, atol=1e-6)
    assert torch.allclose(cond["encoder_hidden_states"], cond_c["encoder_hidden_states"], atol=1e-6)
    assert torch.equal(cond["added_cond_kwargs"]["time_ids"], cond_c["added_cond_kwargs"]["time_ids"])
    loss, _ = module.distillation_loss(cached)  # trains from the cache: no VAE / text encoder call
    assert torch.isfinite(loss)
    dm2 = ImageFolderDataModule(assets["images"], resolution=32, cache_latents=True, cache_dir=str(tmp_path / "cache"),
                                teacher=teacher)
    dm2.prepare_data()
    dm2.setup("fit")
    assert (path / "latents.safetensors").stat().st_mtime_ns == stamp  # reused, not rebuilt
    with pytest.raises(ValueError, match="center_crop"):
        ImageFolderDataModule(assets["images"], cache_latents=True, center_crop=False, teacher=teacher)


def test_lora_checkpoint_holds_adapters_only_and_resumes(assets, tmp_path, cache_dir):
    run = tmp_path / "run"
    common = ["teacher.dtype=fp32", "student.rank=4", "optimizer.lr=0.01", "callbacks=default",
              "trainer.enable_checkpointing=true", "callbacks.checkpoint.every_n_train_steps=2", "metrics.steps=[2]",
              "metrics.num_samples=2", "metrics.batch_size=2", "export=false"]
    train(compose_cfg(smoke_overrides("sdxl", assets, *common, "trainer.max_steps=4"), run, cache_dir))
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 4 and ckpt["frozen_weights_omitted"] > 0
    assert ckpt["state_dict"] and all("lora_" in k for k in ckpt["state_dict"])
    metrics = train(compose_cfg(smoke_overrides("sdxl", assets, *common, "trainer.max_steps=6", "resume=auto"), run,
                                cache_dir))
    assert metrics["train/steps"] == 6.0
    ckpt6 = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt6["global_step"] == 6
    moved = max((ckpt6["state_dict"][k] - v).abs().max().item() for k, v in ckpt["state_dict"].items())
    assert moved > 0  # training continued from the restored adapters


def test_full_finetune_student_exports_a_model_folder_the_pipeline_loads(assets, tmp_path, cache_dir):
    from tdd_lab.export import export_student, load_student

    module, _, _ = _module("sd15", assets, cache_dir, tmp_path, "teacher.dtype=fp32", "student=full")
    assert module.student is not module.teacher.net  # a trainable float32 copy
    with torch.no_grad():
        module.student.unet.conv_out.bias.add_(0.5)  # a visible change of the function
    out = export_student(tmp_path / "student", module.student, module.student_factory, module.teacher, 50, None,
                         {"sampler": {"class": "TDDSampler", "eta": 0.0}, "steps": [2], "guidance_scale": 1.0})
    assert (out / "unet" / "config.json").exists() and not (out / "pytorch_lora_weights.safetensors").exists()
    student = load_student(out)
    unet = student.pipeline.unet
    assert torch.allclose(unet.conv_out.bias, module.student.unet.conv_out.bias)
    images = student.generate(["a red square"], 2, 1.0, 0.0, seed=0)
    assert images.shape == (1, 3, 32, 32) and torch.isfinite(images).all()


@pytest.mark.parametrize("family", ["sdxl", "flux"])
def test_internal_sampling_equals_the_stock_pipeline(family, assets, tmp_path, cache_dir):
    """tdd_lab's evaluation path (teacher conditions + tdd_lab sampler) == the stock pipeline with the TDD scheduler.

    So the conditioning used in training (prompt embeddings, pooled embeddings, SDXL time_ids, FLUX's
    embedded guidance, packing and timesteps) is the one the pipeline feeds the network at sampling.
    """
    from tdd_lab.evaluation import fixed_noise
    from tdd_lab.samplers import FlowTDDSampler, TDDSampler

    module, _, _ = _module(family, assets, cache_dir, tmp_path, "teacher.dtype=fp32")
    teacher = module.teacher
    prompts = [teacher.eval_prompts[0], teacher.eval_prompts[1]]
    noise = fixed_noise(2, teacher.sample_shape, seed=5)
    sampler = FlowTDDSampler(eta=0.0) if family == "flux" else TDDSampler(eta=0.0)
    cond = teacher.conditions(torch.tensor([0, 1]))
    ours = sampler.sample(lambda x, t, c, tc: teacher.denoise(x, t, c), noise, cond, teacher.null_condition(), 4,
                          teacher.schedule.diffusers_config(), 50)
    pipe = teacher.pipe
    pipe.scheduler = teacher.sampling_scheduler(50)
    pipe.set_progress_bar_config(disable=True)
    gens = [torch.Generator().manual_seed(5 + i) for i in range(2)]
    call = dict(prompt=prompts, num_inference_steps=4, generator=gens, height=32, width=32, output_type="latent")
    if family == "flux":
        pipe.scheduler.register_to_config(eta=0.0)
        theirs = pipe(**call, guidance_scale=3.5, max_sequence_length=16).images
        from tdd_lab.nets.flux import unpack_latents

        theirs = unpack_latents(theirs, 16, 16)
    else:
        theirs = pipe(**call, guidance_scale=1.0, eta=0.0).images
    # the pipelines' latents are x0 in the VAE's normalised space, like ours
    assert ours.shape == theirs.shape
    assert torch.allclose(ours, theirs.float(), atol=1e-4), (ours - theirs).abs().max()
