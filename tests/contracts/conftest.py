"""Contract tests per config group, the way diffusers tests its schedulers (``SchedulerCommonTest``).

Each ``test_<group>_contract.py`` holds one test class parametrised over EVERY option of the group,
discovered from ``conf/<group>/*.yaml`` (a new YAML file is tested without touching the tests). An
option is built through its ``_target_`` from the real composed config (``conf/train.yaml`` with the
group overridden), so interpolations such as ``${solver.num_ddim_timesteps}`` resolve as in training.

Helpers here: :func:`options` / :func:`option_params` (discovery), the session fixture :func:`composer`
(compose + build, memoised), and the exact toy denoisers the contracts are checked against.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


# ---- option discovery ------------------------------------------------------------------------------
def options(group: str) -> list[str]:
    """Every option of a config group: the stems of ``conf/<group>/*.yaml``, sorted."""
    found = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
    assert found, f"conf/{group}/ holds no option"
    return found


def option_params(group: str) -> list:
    """``pytest.param(option, id=option)`` for every option of ``group``."""
    return [pytest.param(o, id=o) for o in options(group)]


# ---- composing the real config ---------------------------------------------------------------------
# teacher settings that make any embedded teacher cheap: no pretraining (random weights), no student-init fit;
# the coloured-MNIST pipelines at toy size with a few optimizer steps
FAST_TEACHER = {"train_steps": 0, "init_steps": 1, "steps": 2, "vae_steps": 2, "vae_channels": "[8,16,16]",
                "unet_channels": "[32,64]", "width": 32, "layers": 1, "text_dim": 32, "batch": 8, "vae_batch": 8}


class Composer:
    """Composes ``conf/train.yaml`` like ``python -m tdd_lab.train group=option key=value`` and builds groups.

    Composed configs are memoised per override list (composition costs ~0.1 s); building is not, so every
    test gets fresh objects.
    """

    def __init__(self, output_dir: Path, cache_dir: Path):
        self.output_dir, self.cache_dir = output_dir, cache_dir
        self._memo: dict[tuple[str, ...], DictConfig] = {}
        self._shared: dict[tuple[str, ...], object] = {}

    def cfg(self, *overrides: str) -> DictConfig:
        key = tuple(overrides)
        if key not in self._memo:
            GlobalHydra.instance().clear()
            with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
                cfg = compose(config_name="train", return_hydra_config=True, overrides=list(overrides))
            with open_dict(cfg):
                cfg.paths.output_dir = str(self.output_dir)
                cfg.paths.cache_dir = str(self.cache_dir)
                cfg.hydra.runtime.output_dir = str(self.output_dir)
                cfg.hydra.job.num = 0
            self._memo[key] = cfg
        HydraConfig().set_config(self._memo[key])
        return self._memo[key]

    def node(self, group: str, option: str, *overrides: str) -> DictConfig:
        """The group's node of the config composed with ``group=option`` and ``overrides``."""
        return self.cfg(f"{group}={option}", *overrides)[group]

    def values(self, group: str, option: str, *overrides: str) -> dict:
        """The group's resolved values (``_target_`` included) as a plain dict."""
        return OmegaConf.to_container(self.node(group, option, *overrides), resolve=True)

    def build(self, group: str, option: str, *overrides: str, **kwargs):
        """Instantiate the option through its ``_target_`` (the train app's helper: ``validate.instantiate``)."""
        from tdd_lab.validate import instantiate

        return instantiate(self.node(group, option, *overrides), group, **kwargs)

    def shared(self, key: tuple, make):
        """``make()`` once per session for ``key`` (expensive, read-only objects and results)."""
        if key not in self._shared:
            self._shared[key] = make()
        return self._shared[key]

    def teacher(self, option: str, *overrides: str):
        """A teacher option built small (:data:`FAST_TEACHER`), shared by the session (teachers are frozen).

        Options with a mandatory value left open (``pretrained: ???``) need external weights: skipped.
        """
        node = self.node("teacher", option)
        missing = sorted(OmegaConf.missing_keys(node))
        if missing:
            pytest.skip(f"teacher {option} needs {', '.join(missing)} (external weights)")
        fast = [f"teacher.{k}={v}" for k, v in FAST_TEACHER.items() if k in node]
        args = (option, *fast, *overrides)
        return self.shared(("teacher", *args), lambda: self.build("teacher", *args))


@pytest.fixture(scope="package", autouse=True)
def one_thread():
    """Contract tests run tiny tensors, where intra-op threads only add synchronisation: on a shared 2-core
    machine a 2-thread pool made each small op ~30x slower. One thread for this package, restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def contract_cache(tmp_path_factory):
    """One cache for the contracts session (digits teacher, digit classifier), also as ``$TDD_LAB_CACHE``."""
    path = tmp_path_factory.mktemp("contracts_cache")
    old = os.environ.get("TDD_LAB_CACHE")
    os.environ["TDD_LAB_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("TDD_LAB_CACHE", None)
    else:
        os.environ["TDD_LAB_CACHE"] = old


@pytest.fixture(scope="session")
def composer(tmp_path_factory, contract_cache) -> Composer:
    return Composer(tmp_path_factory.mktemp("contracts_out"), contract_cache)


# ---- exact toy models ------------------------------------------------------------------------------
class PointMassNet(nn.Module):
    """The exact denoiser of a point mass at ``c`` as a ``sample``-prediction network: x0_hat = c for every x_t.

    Wrapped in ``Denoiser(net, schedule, "sample")`` it gives eps_hat = (x_t - a_t c) / s_t, i.e. the exact
    (x0, eps) of the data distribution delta_c at every timestep.
    """

    def __init__(self, c: torch.Tensor):  # (d,) or (C, H, W)
        super().__init__()
        self.register_buffer("c", c)

    def forward(self, x, t, cond, timestep_cond=None):
        return self.c.to(x.dtype).expand_as(x)


def point_mass_denoiser(c: torch.Tensor, schedule):
    from tdd_lab.denoiser import Denoiser

    return Denoiser(PointMassNet(c), schedule, "sample")


def vp_schedule():
    from tdd_lab.schedules import VPSchedule

    return VPSchedule()  # SD-style scaled_linear, T = 1000


def flow_schedule():
    from tdd_lab.schedules import FlowMatchSchedule

    return FlowMatchSchedule(shift=3.0)  # SD3-style static shift


SCHEDULES = {"vp": vp_schedule, "flow": flow_schedule}


def known_bug(request, bugs: dict[str, str]) -> None:
    """Mark this test ``xfail(strict=True)`` when its ``option`` is a key of ``bugs`` (option -> reason).

    A contract violation found in tdd_lab is recorded here rather than fixed (the owners fix it); strict, so
    the fix turns the test red until the entry is removed.
    """
    option = request.node.callspec.params.get("option")
    if option in bugs:
        request.applymarker(pytest.mark.xfail(strict=True, reason=bugs[option]))
