"""Bad input is caught before any model is built, with a message naming the culprit."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException

from tdd_lab.validate import ConfigError, check_pretrained, preflight

from .conftest import compose_cfg

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def folders(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "unet").mkdir()
    (tmp_path / "no_images").mkdir()
    (tmp_path / "no_images" / "notes.txt").write_text("hello")
    from PIL import Image

    for name in ("uncaptioned", "bad_jsonl"):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.new("RGB", (8, 8)).save(tmp_path / name / f"{i}.png")
    (tmp_path / "bad_jsonl" / "captions.jsonl").write_text('{"file_name": "0.png", "text": "a"}\n{"file_name": 1.png}\n')
    (tmp_path / "sdxl").mkdir()
    (tmp_path / "sdxl" / "model_index.json").write_text("{}")
    return tmp_path


CASES = [
    (["strategy.s_ratio=1.5"], r"strategy: s_ratio must be in \[0, 1\], got 1.5"),
    (["strategy.s_ratio=-0.2"], r"strategy: s_ratio must be in \[0, 1\]"),
    (["strategy.num_inference_steps_min=9"], "num_inference_steps_min must be <= num_inference_steps_max"),
    (["strategy.mode=sometimes"], "mode must be one of"),
    (["+strategy.s_raito=0.3"], r"strategy: unknown parameter strategy.s_raito"),
    (["strategy=pcm", "strategy.num_phases=0"], "num_phases must be in"),
    (["solver.num_ddim_timesteps=0"], "num_ddim_timesteps must be in"),
    (["solver.num_ddim_timesteps=300"], "num_ddim_timesteps must divide num_train_timesteps=1000"),
    (["solver.num_ddim_timesteps=5"], r"strategy.num_inference_steps_max=8 exceeds solver.num_ddim_timesteps=5"),
    (["guidance.proportion_empty_prompts=1.5"], r"proportion_empty_prompts must be in \[0, 1\]"),
    (["guidance.proportion_empty_prompts=-0.5"], r"proportion_empty_prompts must be in \[0, 1\]"),
    (["guidance.dropped_caption=zeros"], "guidance.dropped_caption must be one of"),
    (["guidance.dropped_caption=empty_prompt"], "guidance.dropped_caption=empty_prompt: DigitsTeacher is conditioned on "
                                               "class labels"),
    (["guidance=lcm_w", "guidance.w_min=9"], "guidance.w_min must be <= guidance.w_max"),
    (["guidance=lcm_w", "guidance.eval_w=20"], r"guidance.eval_w must be in \[2, 8\]"),
    (["sampler=lcm", "sampler.timestep_scaling=0"], r"sampler.timestep_scaling must be in \(0"),
    (["export_kohya=true"], "export_kohya: DigitsTeacher students are exported as native, fused"),
    (["loss.huber_c=0"], r"loss: huber_c must be in \(0, \+inf\)"),
    (["loss.huber_c=-1e-3"], r"huber_c must be in \(0"),
    (["sampler.eta=1.5"], r"sampler: sampler.eta must be in \[0, 1\], got 1.5"),
    (["sampler=tcd", "sampler.eta=-0.1"], r"sampler.eta must be in \[0, 1\]"),
    (["student=lora", "student.rank=0"], "student.rank must be in"),
    (["target=ema", "target.decay=2"], r"target.decay must be in \[0, 1\]"),
    (["metrics.steps=[2,100]"], r"metrics.steps: 100 is outside \[1, solver.num_ddim_timesteps=50\]"),
    (["trainer.max_steps=0"], "trainer.max_steps must be > 0"),
    (["data.batch_size=0"], "data.batch_size must be > 0"),
    (["resume=/nope/last.ckpt"], "resume: checkpoint '/nope/last.ckpt' not found"),
    (["+teacher.pretrained=/nope/sdxl"], "teacher.pretrained: folder '/nope/sdxl' does not exist"),
    (["+teacher.pretrained={tmp}/empty"], "is empty"),
    (["+teacher.pretrained={tmp}/partial"], "is incomplete: no model_index.json"),
    (["+teacher.pretrained=stabilityai/not-a-cached-model"], "is not in the local Hugging Face cache"),
    (["+data.root=/nope/images"], "data.root: '/nope/images' is not a directory"),
    (["+data.root={tmp}/no_images"], "holds no image"),
    # wrong-type overrides: one line naming the key (issue 16), not a traceback from inside the component
    (["data.batch_size=two"], "^data.batch_size: expected an integer, got 'two'$"),
    (["optimizer.lr=fast"], "^optimizer.lr: expected a number, got 'fast'$"),
    (["trainer.max_steps=abc"], "^trainer.max_steps: expected an integer, got 'abc'$"),
    (["trainer.max_steps=2.5"], "trainer.max_steps: expected an integer, got 2.5"),
    (["trainer.gradient_clip_val=big"], "trainer.gradient_clip_val: expected a number"),
    (["seed=x"], "seed: expected an integer"),
    (["model.channels_last=maybe"], "model.channels_last: expected true or false, got 'maybe'"),
    (["lr_scheduler.lr_lambda.warmup_steps=ten"], "lr_scheduler.lr_lambda.warmup_steps: expected an integer"),
    # evaluation settings that used to fail only after training
    (["metrics.num_samples=0"], "metrics.num_samples must be >= 2, got 0"),
    (["metrics.batch_size=0"], "metrics.batch_size must be >= 1"),
    (["metrics.steps=[]"], "metrics.steps: give at least one step count"),
    (["metrics.guidance_scale=-1"], "metrics.guidance_scale must be >= 0"),
    (["experiment=tdd_gmm2d", "metrics.metrics.ode_steps=0"], "metrics.metrics.ode_steps must be >= 1, got 0"),
    # image folders: uncaptioned, malformed caption files
    (["experiment=tdd_sdxl", "teacher.pretrained={tmp}/sdxl", "data.root={tmp}/uncaptioned", "data.batch_size=2"],
     "none of its 3 images has a caption .* set data.allow_uncaptioned=true"),
    (["experiment=tdd_sdxl", "teacher.pretrained={tmp}/sdxl", "data.root={tmp}/bad_jsonl", "data.batch_size=2"],
     r"bad_jsonl/captions.jsonl: line 2: malformed JSON"),
    (["experiment=tdd_sdxl", "teacher.pretrained={tmp}/sdxl", "data.root={tmp}/uncaptioned", "data.batch_size=2",
      "data.allow_uncaptioned=maybe"], "data.allow_uncaptioned: expected true or false"),
]


@pytest.mark.parametrize("overrides,match", CASES, ids=[" ".join(o) for o, _ in CASES])
def test_bad_config_is_rejected_with_a_named_culprit(overrides, match, folders, cache_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    overrides = [o.replace("{tmp}", str(folders)) for o in overrides]
    cfg = compose_cfg(overrides, folders / "run", cache_dir)
    with pytest.raises(ConfigError, match=match):
        preflight(cfg)


def test_good_configs_pass_and_build_each_component_once(tmp_path, cache_dir):
    for exp in ("tdd_digits", "tdd_gmm2d"):
        parts = preflight(compose_cfg([f"experiment={exp}"], tmp_path, cache_dir))
        assert type(parts.strategy).__name__ == "TDDStrategy" and parts.sampler.num_ddim_timesteps == 50
        assert parts.evaluator.steps == [2, 4, 8]


def test_uncaptioned_folder_trains_when_allowed(folders, cache_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = compose_cfg(["experiment=tdd_sdxl", f"teacher.pretrained={folders}/sdxl", f"data.root={folders}/uncaptioned",
                       "data.batch_size=2", "data.allow_uncaptioned=true"],
                      folders / "run", cache_dir)
    assert preflight(cfg).evaluator.steps == [2, 4, 8]


def test_unknown_option_and_experiment_fail_at_composition(tmp_path, cache_dir):
    with pytest.raises((MissingConfigException, ConfigCompositionException), match="ctm"):
        compose_cfg(["strategy=ctm"], tmp_path, cache_dir)
    with pytest.raises((MissingConfigException, ConfigCompositionException), match="tdd_sd99"):
        compose_cfg(["experiment=tdd_sd99"], tmp_path, cache_dir)


def test_valid_pretrained_folder(tmp_path):
    (tmp_path / "model_index.json").write_text("{}")
    check_pretrained(str(tmp_path))


@pytest.mark.parametrize(
    "args,match",
    [
        # a ConfigError (here a wrong-type override, which used to be a traceback with exit 1): one line, exit 2
        (["data.batch_size=two"], "^error: data.batch_size: expected an integer, got 'two'$"),
        (["strategy=ctm"], "Could not find 'strategy/ctm'"),
        (["+experiment=tdd_sd99"], "Could not find 'experiment/tdd_sd99'"),
    ],
)
def test_cli_exits_nonzero_without_traceback(args, match, tmp_path):
    env = {**os.environ, "TDD_LAB_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    res = subprocess.run([sys.executable, "-m", "tdd_lab.train", *args, f"hydra.run.dir={tmp_path / 'run'}"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr[-2000:]  # all bad input, a command line that does not compose included
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout
    assert __import__("re").search(match, res.stderr + res.stdout, __import__("re").MULTILINE)
    assert not (tmp_path / "cache").exists()  # failed before building anything
