"""`python -m tdd_lab.sample` (a Hydra app) on tiny gmm2d and digits runs."""

import pytest
import torch

from .test_evaluate import DIGITS, compose_app, train
from .test_wandb_sweep import GMM, ROOT, run_cli


@pytest.fixture(scope="module")
def gmm_run(tmp_path_factory, cache_dir):
    return train(tmp_path_factory.mktemp("sample") / "gmm_run", cache_dir, *GMM)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory, cache_dir):
    return train(tmp_path_factory.mktemp("sample") / "digits_run", cache_dir, *DIGITS)


def sample(tmp_path, *overrides, name="s.png"):
    """Run the app in process; returns the saved .pt."""
    from tdd_lab.sample import sample as run

    out = tmp_path / name
    run(compose_app("sample", [*overrides, f"out={out}"]))
    assert out.exists()
    return torch.load(out.with_suffix(".pt"))


def test_readme_commands_write_png_and_pt(gmm_run, digits_run, tmp_path, cache_dir):
    res = run_cli(["-m", "tdd_lab.sample", f"run_dir={gmm_run}", "labels=[0,1,2,3]", "num_per_prompt=5", "steps=4",
                   "out=gmm.png"], tmp_path, cache_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    saved = torch.load(tmp_path / "gmm.pt")
    assert saved["samples"].shape == (20, 2) and saved["conditions"] == [i for i in range(4) for _ in range(5)]
    assert saved["steps"] == 4 and torch.isfinite(saved["samples"]).all()
    assert "(4 steps, TDDSampler)" in res.stdout  # the sampler recorded in the export
    res = run_cli(["-m", "tdd_lab.sample", f"run_dir={digits_run}", "prompt=a handwritten digit seven", "num_per_prompt=8",
                   "steps=4", "eta=0.2", "out=seven.png"], tmp_path, cache_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    saved = torch.load(tmp_path / "seven.pt")
    assert saved["samples"].shape == (8, 1, 8, 8) and torch.isfinite(saved["samples"]).all()
    assert len({tuple(x.flatten().tolist()) for x in saved["samples"]}) == 8  # per-sample seeds
    assert f"to {tmp_path / 'seven.png'}" in res.stdout  # the full path of what was written
    from PIL import Image

    width, height = Image.open(tmp_path / "seven.png").size
    assert width >= 640 and height > width / 8  # 8 digits of 8 px, enlarged to >= 64 px each, plus a caption strip
    # Hydra writes nothing: the working directory holds the two outputs (and run_cli's HOME caches)
    assert {p.name for p in tmp_path.iterdir()} - {".cache", ".config"} == {"gmm.png", "gmm.pt", "seven.png", "seven.pt"}


def test_gmm_samples_are_the_evaluations_samples(gmm_run, tmp_path):
    """Labels cycling over the classes with eta 0 give exactly the samples training's evaluation scored."""
    from tdd_lab.evaluate import run_config
    from tdd_lab.export import load_student
    from tdd_lab.validate import instantiate

    run_cfg = run_config(gmm_run, compose_app("evaluate", [f"run_dir={gmm_run}"]))
    evaluator, teacher = instantiate(run_cfg.metrics, "metrics"), instantiate(run_cfg.teacher, "teacher")
    _, samples = evaluator.evaluate_student(load_student(gmm_run).denoiser, teacher,
                                            instantiate(run_cfg.guidance, "guidance"),
                                            instantiate(run_cfg.sampler, "sampler"), "cpu")
    _, labels = evaluator.inputs(teacher)
    saved = sample(tmp_path, f"run_dir={gmm_run}", f"labels={labels.tolist()}".replace(" ", ""), "steps=4", "eta=0")
    assert torch.allclose(saved["samples"], samples[4], atol=1e-6)


def test_prompts_labels_prompt_file_and_sampler_choice(digits_run, tmp_path):
    from tdd_lab.validate import ConfigError

    run = f"run_dir={digits_run / 'student'}"  # the export folder alone works too
    seven = sample(tmp_path, run, "prompt=a handwritten digit seven", name="a.png")["samples"]
    by_label = sample(tmp_path, run, "labels=[7]", name="b.png")  # label i = the evaluation prompt of digit i
    assert by_label["conditions"] == ["a handwritten digit seven"] and torch.equal(by_label["samples"], seven)
    mixed = sample(tmp_path, run, "prompt=[a handwritten digit one,a handwritten digit seven]", "labels=[7]",
                   "num_per_prompt=2", "eta=0", name="c.png")
    assert mixed["conditions"] == ["a handwritten digit one"] * 2 + ["a handwritten digit seven"] * 4
    # sample i starts from the noise of seed + i: with eta 0 it does not depend on the rest of the batch
    alone = sample(tmp_path, run, "prompt=a handwritten digit seven", "eta=0", "seed=2", name="c2.png")["samples"]
    assert torch.allclose(mixed["samples"][2], alone[0], atol=1e-4)
    (tmp_path / "prompts.txt").write_text("a handwritten digit two\n\na handwritten digit three\n")
    assert sample(tmp_path, run, f"prompt_file={tmp_path / 'prompts.txt'}", name="d.png")["samples"].shape[0] == 2
    cfg2 = sample(tmp_path, run, "prompt=a handwritten digit seven", "guidance_scale=2", name="e.png")["samples"]
    assert not torch.equal(cfg2, seven)  # CFG on the student
    lcm = sample(tmp_path, run, "prompt=a handwritten digit seven", "sampler=lcm", "steps=2", name="f.png")
    assert lcm["steps"] == 2 and torch.isfinite(lcm["samples"]).all() and not torch.equal(lcm["samples"], seven)
    for overrides, message in [(["prompt=x", "sampler=lcm", "eta=0.3"], "eta: the LCMSampler has no eta"),
                               (["labels=[12]"], r"labels: 12 outside \[0, 9\]"),
                               (["labels=[-1]"], r"labels: -1 outside \[0, 9\]"),
                               (["labels=[seven]"], "labels: expected an integer, got 'seven'"),
                               (["prompt=x", "steps=0"], r"steps: 0 outside \[1, 50\]"),
                               (["prompt=x", "steps=four"], "steps: expected an integer, got 'four'"),
                               (["prompt=x", "guidance_scale=-1"], "guidance_scale must be >= 0"),
                               (["prompt=x", "guidance_scale=strong"], "guidance_scale: expected a number"),
                               (["prompt=x", "seed=abc"], "seed: expected an integer"),
                               ([f"prompt_file={tmp_path / 'none.txt'}"], "prompt_file: .* not found"),
                               (["prompt=x", "num_per_prompt=0"], "num_per_prompt must be >= 1"),
                               (["prompt=x", "sampler=flow_tdd"], "sampler: the FlowTDDSampler samples flow")]:
        with pytest.raises(ConfigError, match=message):
            sample(tmp_path, run, *overrides, name="g.png")


def test_bad_input_exits_2(gmm_run, tmp_path, cache_dir):
    from tdd_lab.validate import ConfigError

    no_export = tmp_path / "no_export"
    (no_export / ".hydra").mkdir(parents=True)
    (no_export / ".hydra" / "config.yaml").write_text("{}")
    for overrides, message in [([f"run_dir={gmm_run}", "prompt=hello"],
                                r"prompt: this student is conditioned on class labels, not prompts: give labels=\[...\] "
                                r"in \[0, 3\]"),
                               ([f"run_dir={gmm_run}", "labels=[0,4]"], r"labels: 4 outside \[0, 3\]"),
                               ([f"run_dir={gmm_run}"], r"give prompt=..., prompt_file=... or labels=\[...\]"),
                               ([f"run_dir={no_export}", "labels=[0]"], f"run_dir: {no_export} has no student/ export: "
                                "training writes it when it finishes .* resume=auto"),
                               ([], "run_dir: required")]:
        with pytest.raises(ConfigError, match=message):
            sample(tmp_path, *overrides)
    for args, message in [([f"run_dir={tmp_path / 'nope'}", "labels=[0]"],
                           f"error: run_dir: {tmp_path / 'nope'} does not exist"),
                          ([f"run_dir={gmm_run}", "labels=[0]", "sampler=nope"], "Could not find 'sampler/nope'")]:
        res = run_cli(["-m", "tdd_lab.sample", *args], ROOT, cache_dir)
        assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr, res.stderr[-2000:]
        if message.startswith("error: "):  # our own errors: one line
            assert [ln for ln in res.stderr.splitlines() if ln.strip()] == [ln for ln in res.stderr.splitlines()
                                                                            if ln.startswith("error: ")]
