"""Contract of every ``conf/teacher`` option that needs no external weights (sd15/sdxl/flux: their own tests):
a frozen denoiser returning (x0, eps) of the right shapes and dtypes that encode exactly the network's raw output,
the null condition, and exactness where a closed form exists (gmm2d)."""

import json

import pytest
import torch

from tdd_lab.prediction import from_x0_eps
from tdd_lab.teachers.base import Teacher

from .conftest import SCHEDULES, option_params

T = torch.tensor([0, 1, 250, 500, 999, 999])
B = len(T)


@pytest.mark.parametrize("option", option_params("teacher"))
class TestTeacherContract:
    @pytest.fixture
    def teacher(self, composer, option):
        return composer.teacher(option)

    @pytest.fixture
    def out(self, composer, teacher):
        """One set of forwards per teacher (shared by the tests): raw output, (x0, eps), and the null branch."""
        return composer.shared(("teacher-forward", id(teacher)), lambda: forwards(teacher))

    def test_is_a_frozen_teacher(self, teacher):
        assert isinstance(teacher, Teacher)
        teacher.train()
        assert not teacher.training and not teacher.denoiser.training
        assert not any(p.requires_grad for p in teacher.parameters())
        assert teacher.schedule is teacher.denoiser.schedule
        json.dumps(teacher.describe(), default=str)  # a cache key

    def test_denoiser_shapes_dtypes_and_the_forward_process_identity(self, teacher, out):
        for y in (out["x0"], out["eps"]):
            assert y.shape == (B, *teacher.sample_shape) and y.dtype == torch.float32
            assert torch.isfinite(y).all()
        a, s = teacher.schedule.alpha_sigma(T, out["x_t"].ndim, torch.float64)
        torch.testing.assert_close(a * out["x0"].double() + s * out["eps"].double(), out["x_t"].double(),
                                   rtol=1e-5, atol=1e-5)

    def test_x0_eps_encode_exactly_the_raw_network_output(self, teacher, out):
        """The Denoiser's conversion is the inverse of the prediction type's encoding (epsilon: eps == raw)."""
        a, s = teacher.schedule.alpha_sigma(T, out["x_t"].ndim, torch.float64)
        back = from_x0_eps(out["x0"].double(), out["eps"].double(), a, s, teacher.prediction_type)
        torch.testing.assert_close(back, out["raw"].double(), rtol=1e-5, atol=1e-5)

    def test_null_condition(self, teacher, out):
        torch.testing.assert_close(out["null"], teacher.conditioner.null_like(out["cond"]), rtol=0, atol=0)
        assert not torch.allclose(out["x0"], out["x0_null"]), "the condition must matter"


def forwards(teacher) -> dict:
    gen = torch.Generator().manual_seed(0)
    x_t = torch.randn(B, *teacher.sample_shape, generator=gen)
    labels = torch.arange(B) % teacher.num_classes
    cond = teacher.conditioner.conditions(labels)
    null = teacher.conditioner.conditions(torch.full_like(labels, -1))
    with torch.no_grad():
        raw = teacher.denoiser.raw(x_t, T, cond)
        x0, eps = teacher.denoiser(x_t, T, cond)
        x0_null, _ = teacher.denoiser(x_t, T, null)
    return dict(x_t=x_t, cond=cond, null=null, raw=raw, x0=x0, eps=eps, x0_null=x0_null)


# ---- closed forms ----------------------------------------------------------------------------------
ONE_COMPONENT = ("teacher.num_components=1", "teacher.num_classes=1", "teacher.radius=0.7", "teacher.std=0.3")


def posterior_mean(x, a, s, mu, std):
    """E[x0 | x_t] for x0 ~ N(mu, std^2 I): mu + a std^2 / (a^2 std^2 + s^2) (x_t - a mu)."""
    return mu + a * std**2 / (a**2 * std**2 + s**2) * (x - a * mu)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gmm2d_is_the_closed_form_posterior_mean(composer, dtype):
    tol = 1e-6  # the ring mixture keeps its std as float32(0.3): ~2e-8 off the float64 closed form
    teacher = composer.teacher("gmm2d", *ONE_COMPONENT)
    gen = torch.Generator().manual_seed(0)
    x_t = 3 * torch.randn(B, 2, generator=gen, dtype=dtype)
    a, s = teacher.schedule.alpha_sigma(T, 2, torch.float64)
    mu = torch.tensor([0.7, 0.0], dtype=torch.float64)
    for labels in (torch.zeros(B, dtype=torch.long), torch.full((B,), -1)):  # its class, and the null
        x0, eps = teacher.denoiser(x_t, T, labels)
        assert x0.dtype == eps.dtype == dtype
        torch.testing.assert_close(x0.double(), posterior_mean(x_t.double(), a, s, mu, 0.3), rtol=0, atol=tol)
        torch.testing.assert_close(a * x0.double() + s * eps.double(), x_t.double(), rtol=0, atol=tol)


def test_gmm2d_builds_without_fitting_the_student_init(composer, tmp_path):
    """The exact teacher is cheap: its student's MLP init is fitted (and cached) only when student_network() asks."""
    composer.build("teacher", "gmm2d", f"teacher.cache_dir={tmp_path}")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("kind", ["vp", "flow"])
def test_gmm2d_is_exact_on_any_schedule_kind(composer, kind):
    """GMMTeacher takes any NoiseSchedule ("under x_t = a x0 + s eps, any schedule"): still the posterior mean."""
    schedule = SCHEDULES[kind]()
    teacher = composer.build("teacher", "gmm2d", *ONE_COMPONENT, "teacher.init_steps=1", schedule=schedule)
    x_t = torch.randn(B, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a, s = schedule.alpha_sigma(T, 2, torch.float64)
    x0, _ = teacher.denoiser(x_t, T, torch.zeros(B, dtype=torch.long))
    torch.testing.assert_close(x0, posterior_mean(x_t, a, s, torch.tensor([0.7, 0.0], dtype=torch.float64), 0.3),
                               rtol=0, atol=1e-6)
