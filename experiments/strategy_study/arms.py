"""The arms of the strategy study: one trained model per arm and seed, each method trained and sampled as its
authors designed it (issue 15). Shared by run.py (training), extra_eval.py and the table scripts.

An arm = Hydra overrides of the training run + the sampler it is *designed* for (the run's own sampler: its
in-training validation curves and its final ``metrics.json`` use it) + extra evaluations (other samplers, other
schedules) that extra_eval.py adds from the exported student.

Baselines use the guidance their recipes use (``guidance=fixed``: teacher CFG at w = 3.5, no prompt dropping, as
conf/experiment/{lcm,pcm,tcd}_sdxl.yaml); TDD uses its decoupled guidance. ``tdd_fixed`` (TDD targets with
fixed guidance) isolates the target-timestep selection against the baselines and is the fixed arm of the
guidance study.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Extra:
    """One more evaluation of an arm's exported student: a sampler (a conf/sampler option + overrides) at steps."""

    name: str                      # column label, e.g. "gamma sampler (tdd, eta 0.2)"
    sampler: str                   # conf/sampler option
    overrides: dict = field(default_factory=dict)
    steps: tuple[int, ...] = ()


@dataclass(frozen=True)
class Arm:
    name: str
    label: str                     # the method as the tables name it
    overrides: tuple[str, ...]     # training overrides (on top of the teacher's base)
    sampler_label: str             # the designed sampler, as the tables name it
    steps: tuple[int, ...] | None = None   # step counts of the run's own evaluation (None: the teacher's default)
    extras: tuple[Extra, ...] = ()
    # take the learning rate chosen for another arm: PCM K = 2, 8 from K = 4; the TDD variants (fixed guidance,
    # K 2..8) from TDD (compute: the sweep runs 5 arms x 3 lrs instead of 9 x 3)
    lr_from: str | None = None


def _pcm(k: int, lr_from: str | None) -> Arm:
    # PCM: one model per step count, num_phases = K, deterministic sampling (DDIM on the K-step schedule = the
    # phase edges: the TDD sampler at eta 0 uses the same equidistant_schedule as PCMStrategy's edges)
    return Arm(f"pcm{k}", f"PCM (K={k} phases)", ("strategy=pcm", f"strategy.num_phases={k}", "guidance=fixed",
                                                  "sampler=tdd", "sampler.eta=0.0"),
               "deterministic (eta 0)", steps=(k,), lr_from=lr_from)


TDD_EXTRAS = (
    Extra("eta 0", "tdd", {"eta": 0.0}),
    Extra("non-equidistant, eta 0.2", "tdd", {"eta": 0.2, "timestep_schedule": "nonequidistant"}, steps=(5, 6, 7)),
)

ARMS: dict[str, Arm] = {a.name: a for a in [
    Arm("lcm", "LCM", ("strategy=lcm", "guidance=fixed", "sampler=lcm"), "LCM multistep",
        extras=(Extra("gamma sampler (tdd, eta 0.2)", "tdd", {"eta": 0.2}),)),
    _pcm(2, "pcm4"),
    _pcm(4, None),
    _pcm(8, "pcm4"),
    Arm("tcd", "TCD", ("strategy=tcd", "guidance=fixed", "sampler=tcd", "sampler.eta=0.3"), "gamma 0.3"),
    Arm("tdd", "TDD (s_ratio 0.3)", ("strategy=tdd", "strategy.s_ratio=0.3", "guidance=decoupled", "sampler=tdd",
                                     "sampler.eta=0.2"), "eta 0.2", extras=TDD_EXTRAS),
    Arm("tdd_s0", "TDD (s_ratio 0)", ("strategy=tdd", "strategy.s_ratio=0.0", "guidance=decoupled", "sampler=tdd",
                                      "sampler.eta=0.0"), "eta 0",
        extras=(Extra("non-equidistant, eta 0", "tdd", {"eta": 0.0, "timestep_schedule": "nonequidistant"},
                      steps=(5, 6, 7)),)),
    Arm("tdd_fixed", "TDD, fixed guidance", ("strategy=tdd", "strategy.s_ratio=0.3", "guidance=fixed",
                                             "sampler=tdd", "sampler.eta=0.2"), "eta 0.2", extras=TDD_EXTRAS[:1],
        lr_from="tdd"),
    # reaches 2 steps: K_min = 2 puts the 2- and 3-step schedules into M, and a 500-wide window lets t' ~ 499 target
    # s = 0 (with the default 260 window the last jump 499 -> 0 of 2-step sampling is never a training target)
    Arm("tdd_k2", "TDD (K 2..8, window 500)", ("strategy=tdd", "strategy.num_inference_steps_min=2",
                                               "strategy.window=500", "strategy.s_ratio=0.3", "guidance=decoupled",
                                               "sampler=tdd", "sampler.eta=0.2"), "eta 0.2", extras=TDD_EXTRAS[:1],
        lr_from="tdd"),
    # the public SDXL script's defect as an ablation switch (TDD_SPEC 4): dropped captions (decoupled guidance's
    # 20%) get the encoded "" while the teacher's unconditional branch is all zeros; otherwise the tdd arm
    Arm("tdd_empty", 'TDD, dropped captions = encoded "" (public SDXL)',
        ("strategy=tdd", "strategy.s_ratio=0.3", "guidance=decoupled", "guidance.dropped_caption=empty_prompt",
         "sampler=tdd", "sampler.eta=0.2"), "eta 0.2", extras=TDD_EXTRAS[:1], lr_from="tdd"),
    # TDD-adv (issue 14): the tdd arm plus PCM's discriminator at the public settings (alternate D / student
    # batches, heads' lr 1e-5, adv_weight 0.1); paired with the tdd arm's runs of the same seeds
    Arm("tdd_adv", "TDD-adv (PCM discriminator, public settings)",
        ("strategy=tdd", "strategy.s_ratio=0.3", "guidance=decoupled", "adversarial=pcm", "sampler=tdd",
         "sampler.eta=0.2"), "eta 0.2", lr_from="tdd"),
    # the same with the heads' lr 100x the public 1e-5: at 1e-5 the hinge losses stay at their chance values (d_loss
    # ~2, g_loss ~1) for a whole digits run, i.e. the heads never become a critic (experiments/adversarial)
    Arm("tdd_adv_hlr", "TDD-adv, heads' lr 1e-3",
        ("strategy=tdd", "strategy.s_ratio=0.3", "guidance=decoupled", "adversarial=pcm", "adversarial.lr=1e-3",
         "sampler=tdd", "sampler.eta=0.2"), "eta 0.2", lr_from="tdd"),
]}


@dataclass(frozen=True)
class Teacher:
    name: str
    base: tuple[str, ...]          # overrides every run of this teacher gets
    steps: tuple[int, ...]         # step counts of the evaluation
    primary: str                   # fidelity metric (lower is better) the lr is chosen on and the tables lead with
    lrs: tuple[float, ...]         # the lr sweep, the same for every arm (then extended, see run.py)
    default_lr: float              # the recipe's lr (used where the sweep was not run)
    arms: tuple[str, ...]
    main_extra: tuple[str, ...] = ()  # overrides of the test-seed runs only (not of the lr sweep)
    # the order the test-seed runs are made in: group by group, each group seed-major (a study stopped by its
    # budget then has whole seeds of whole groups); default: one group of all arms
    groups: tuple[tuple[str, ...], ...] = ()
    guidance_arms: tuple[str, ...] = ()  # (decoupled arm, fixed arm) of the composed-scale guidance test
    # arms run only when named (run.py --arms), tabulated when they have runs: the adversarial measurement
    optional_arms: tuple[str, ...] = ()

    @property
    def all_arms(self) -> tuple[str, ...]:
        return self.arms + self.optional_arms


TEACHERS: dict[str, Teacher] = {t.name: t for t in [
    # exact teacher: swd to exact samples of the guided PF-ODE is valid for every sampler (stochastic ones too);
    # ode_error is a per-sample distance and is reported for deterministic samplers only
    Teacher("gmm2d", ("+experiment=tdd_gmm2d", "logger=csv", "callbacks=none", "cpu_threads=1",
                      "trainer.max_steps=3000", "validation.every_n_steps=250", "metrics.metrics.deterministic=false",
                      "metrics.steps=[2,4,6,8]"),
            steps=(2, 4, 6, 8), primary="swd", lrs=(3e-5, 1e-4, 3e-4), default_lr=1e-4,
            arms=("lcm", "pcm2", "pcm4", "pcm8", "tcd", "tdd", "tdd_s0", "tdd_fixed", "tdd_k2"),
            # smoother learning curves: 1,000 validation samples (the lr sweep's 200 are 0.5 s per point; these ~2 s)
            main_extra=("validation.num_samples=1000",), guidance_arms=("tdd", "tdd_fixed")),
    Teacher("digits", ("+experiment=tdd_digits", "logger=csv", "callbacks=none", "cpu_threads=1",
                       "trainer.max_steps=1000", "validation.every_n_steps=100", "metrics.steps=[2,4,6,8]"),
            steps=(2, 4, 6, 8), primary="fid_teacher", lrs=(3e-5, 1e-4, 3e-4), default_lr=1e-4,
            arms=("lcm", "pcm4", "tcd", "tdd", "tdd_fixed", "tdd_s0"),
            # TDD against the old study's digits "winner" (LCM) first, then the other baselines, then the guidance
            # control (the baselines' fixed guidance with TDD's targets)
            groups=(("tdd", "lcm"), ("tcd", "pcm4"), ("tdd_fixed",), ("tdd_s0",)), optional_arms=("tdd_adv", "tdd_adv_hlr"),
            guidance_arms=("tdd", "tdd_fixed")),
    # the trained SDXL-architecture pipeline (LoRA student on the UNet, the real SDXL code path) at the
    # tdd_sdxl_mnist recipe's scale (600 steps, lr 1e-3): a run is ~10 min on one core, so this teacher gets the
    # recipe's lr (no sweep by default), TDD against its public-SDXL defect first (the ablation switch), then LCM
    Teacher("mnist_sdxl", ("+experiment=tdd_sdxl_mnist", "logger=csv", "callbacks=none", "cpu_threads=1",
                           "trainer.max_steps=600", "validation.every_n_steps=100", "metrics.steps=[2,4,8]"),
            steps=(2, 4, 8), primary="fid_teacher", lrs=(3e-4, 1e-3, 3e-3), default_lr=1e-3,
            arms=("tdd", "tdd_empty", "lcm"), groups=(("tdd", "tdd_empty"), ("lcm",)), optional_arms=("tdd_adv",)),
]}

# where the first sweep's winner is at an edge of ``lrs``, the sweep continues one rung further along this ladder
# (the same rule for every arm), until the winner is interior or the ladder ends
LR_LADDER = (3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3)
VALIDATION_SEED = 100          # the lr is chosen on this training seed (never one of the test seeds)
TEST_SEEDS = (0, 1, 2, 3, 4)
