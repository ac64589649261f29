"""Contract of every ``conf/metrics`` option that needs no external weights or data (``images`` needs Inception
weights and a reference folder: skipped by the error it raises): every metric is 0 (within float noise) on identical
sets, or equals its closed form where the estimator is not 0 there (KID), and moves by the right amount otherwise.

Each option's metric set is walked down to its leaf metrics (a ``MetricSuite``'s members, with their config
nodes); every leaf class has one identity check in :data:`CHECKS`, so a new metric class fails loudly until its
contract is written here.
"""

import math

import pytest
import torch
from omegaconf import OmegaConf

from tdd_lab.data.digits import load_digit_tensors
from tdd_lab.evaluation import Evaluator
from tdd_lab.guider import ClassifierFreeGuidance
from tdd_lab.metrics import CleanFID, DigitsMetrics, GMMMetrics, Metrics, MetricSuite, TorchmetricsKID
from tdd_lab.metrics.classifier import load_digit_classifier
from tdd_lab.metrics.features import ResizedFeatures, to_uint8_images
from tdd_lab.metrics.latent import LatentODEMetrics
from tdd_lab.metrics.mnist import MnistMetrics
from tdd_lab.metrics.paired import TeacherDistance

from .conftest import option_params

# settings that make any metric option cheap (applied wherever the option has the key, interpolations kept)
FAST_METRICS = {"classifier_epochs": 1, "ode_steps": 20}
# gmm2d with one component of std 1e-6 at (0.7, 0): a point mass, whose guided ODE endpoint is c for any noise
POINT_MASS = ("teacher.num_components=1", "teacher.num_classes=1", "teacher.radius=0.7", "teacher.std=1e-6")
C = torch.tensor([0.7, 0.0])
GUIDER = ClassifierFreeGuidance(3.5)  # the teacher's guider (decoupled/fixed guidance at w = 3.5)


def fast_overrides(node, prefix: str = "metrics") -> list[str]:
    """``key=value`` overrides of :data:`FAST_METRICS` for every place in ``node`` that sets one of its keys."""
    out = []

    def walk(d, path):
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{path}.{k}")
            elif k in FAST_METRICS and not (isinstance(v, str) and v.startswith("${")):
                out.append(f"{path}.{k}={FAST_METRICS[k]}")

    walk(OmegaConf.to_container(node, resolve=False), prefix)
    return out


def leaves(metric, node):
    """(leaf metric, its config node) pairs: a suite's members in config order."""
    if isinstance(metric, MetricSuite):
        members = node["members"]
        nodes = list(members.values()) if hasattr(members, "values") else list(members)
        assert len(nodes) == len(metric.members)
        return [pair for m, n in zip(metric.members, nodes) for pair in leaves(m, n)]
    return [(metric, node)]


def digits_sets():
    """Real digits and a distinct image set ("teacher samples": the first 200 digits, inverted)."""
    real, labels = load_digit_tensors()
    return real, labels, -real[:200]


# ---- per-class identity checks ---------------------------------------------------------------------
def check_gmm(metric: GMMMetrics, node, ctx):
    point, ring = ctx.teacher("gmm2d", *POINT_MASS), ctx.teacher("gmm2d")
    noise = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    zeros = torch.zeros(16, dtype=torch.long)
    r = metric.compute(C.expand(16, 2), zeros, noise, point, GUIDER)
    assert r["ode_error"] < 1e-6 and r["swd"] < 1e-6, r
    v = torch.tensor([0.03, -0.04])  # |v| = 0.05: every sample off by v
    r = metric.compute((C + v).expand(16, 2), zeros, noise, point, GUIDER)
    assert math.isclose(r["ode_error"], 0.05, abs_tol=1e-6), r
    assert abs(r["swd"] - 0.05 / math.sqrt(2)) < 0.005, r  # sqrt(E_theta (v . theta)^2) = |v| / sqrt(2) in 2-D
    # the reference is the exact guided ODE endpoint of *this* noise (no stale cache across noise sets)
    labels = torch.arange(16) % 4
    for seed in (1, 2, 1):
        noise = torch.randn(16, 2, generator=torch.Generator().manual_seed(seed))
        exact = ring.ode_endpoint(noise.double(), 999, labels, w=GUIDER.w, num_steps=metric.ode_steps)
        r = metric.compute(exact, labels, noise, ring, GUIDER)
        assert r["ode_error"] < 1e-9 and r["swd"] < 1e-9, (seed, r)


def check_latent(metric: LatentODEMetrics, node, ctx):
    point = ctx.teacher("gmm2d", *POINT_MASS)
    noise = torch.randn(12, 2, generator=torch.Generator().manual_seed(0))
    zeros = torch.zeros(12, dtype=torch.long)
    r = metric.compute(C.expand(12, 2), zeros, noise, point, GUIDER)
    assert r["ode_rmse"] < 1e-6, r
    v = torch.tensor([0.03, -0.04])
    r = metric.compute((C + v).expand(12, 2), zeros, noise, point, GUIDER)
    assert math.isclose(r["ode_rmse"], math.sqrt((0.03**2 + 0.04**2) / 2), abs_tol=1e-6), r


def check_digits(metric: DigitsMetrics, node, ctx):
    teacher = ctx.teacher("digits")
    real, labels, other = digits_sets()
    same = metric.compute(real, labels, torch.zeros_like(real), teacher, GUIDER)["fid"]  # the real set itself
    # class_acc is the fraction of samples the metric's classifier reads as their label: half right, half wrong
    clf = load_digit_classifier(metric.cache_dir, metric.classifier_seed, metric.classifier_epochs)
    with torch.no_grad():
        pred = clf(other).argmax(1)
    half = torch.cat([pred[:100], (pred[100:] + 1) % 10])
    r = metric.compute(other, half, torch.zeros_like(other), teacher, GUIDER)
    assert r["class_acc"] == 0.5, r
    assert same < 1e-6 * r["fid"] + 1e-6, (same, r["fid"])


def teacher_reference(metric, ctx):
    assert metric.needs_teacher_samples, f"{type(metric).__name__} against {metric.reference}: no identity check"
    teacher = ctx.teacher("digits")
    real, labels, other = digits_sets()
    metric.set_teacher_samples(other, teacher)
    return teacher, real[:200], labels[:200], other


def check_clean_fid(metric: CleanFID, node, ctx):
    teacher, real, labels, other = teacher_reference(metric, ctx)
    same = metric.compute(other, labels, torch.zeros_like(other), teacher, GUIDER)[metric.name]
    far = metric.compute(real, labels, torch.zeros_like(real), teacher, GUIDER)[metric.name]
    assert abs(same) < 1e-6 * far + 1e-6, (same, far)


def poly_kid_identical(feats: torch.Tensor) -> float:
    """KID's unbiased MMD^2 (cubic kernel (x.y/d + 1)^3) of a set against itself: (2/m)(mean k_off - mean k_diag)."""
    f = feats.double()
    k = (f @ f.T / f.shape[1] + 1) ** 3
    m = len(f)
    diag = k.diagonal().mean()
    off = (k.sum() - k.diagonal().sum()) / (m * (m - 1))
    return float(2 / m * (off - diag))


def check_kid(metric: TorchmetricsKID, node, ctx):
    from hydra.utils import instantiate

    teacher, real, labels, other = teacher_reference(metric, ctx)
    same = metric.compute(other, labels, torch.zeros_like(other), teacher, GUIDER)[metric.name]
    far = metric.compute(real, labels, torch.zeros_like(real), teacher, GUIDER)[metric.name]
    # the documented pipeline: uint8 images -> clean-fid resize -> the configured features
    extractor = ResizedFeatures(instantiate(node["features"]), node["mode"], node["image_size"])
    want = poly_kid_identical(extractor(to_uint8_images(other, teacher)))
    assert want < 0 and math.isclose(same, want, rel_tol=1e-4, abs_tol=1e-9), (same, want)
    assert far > 10 * abs(same), (same, far)


class _ImageTeacher:
    """What MnistMetrics reads of a teacher: ``decode`` (here the identity: samples are images), ``device`` and the
    evaluation prompts of the caption template."""

    device = torch.device("cpu")

    def __init__(self):
        from tdd_lab.data.mnist_color import label_prompts

        self.eval_prompts = label_prompts()

    def decode(self, samples):
        return samples


def check_mnist(metric: MnistMetrics, node, ctx):
    from tdd_lab.data.mnist_color import dataset_tensors, grayscale

    teacher = _ImageTeacher()
    held, digits, colors = dataset_tensors("heldout")          # the 1,000 held-out real digits
    labels = colors * 10 + digits                              # their own prompts
    metric.set_teacher_samples(held, teacher)
    r = metric.compute(held, labels, torch.zeros_like(held), teacher, GUIDER)
    assert abs(r["fid"]) < 1e-6 and abs(r["fid_teacher"]) < 1e-6, r  # the set against itself, both references
    assert r["color_acc"] == 1.0, r                                  # the ink colour is read exactly
    with torch.no_grad():
        acc = (metric.classifier(grayscale(held)).argmax(1) == digits).float().mean().item()
    assert r["class_acc"] == acc, (r, acc)
    wrong = metric.compute(held, (colors + 1) % 5 * 10 + digits, torch.zeros_like(held), teacher, GUIDER)
    assert wrong["color_acc"] == 0.0 and wrong["class_acc"] == acc, wrong  # a wrong colour prompt, same digit


def check_teacher_distance(metric: TeacherDistance, node, ctx):
    teacher, real, labels, other = teacher_reference(metric, ctx)
    same = metric.compute(other, labels, torch.zeros_like(other), teacher, GUIDER)[metric.name]
    assert same == 0.0, same                                      # the reference itself, sample by sample
    shifted = metric.compute(other + 0.25, labels, torch.zeros_like(other), teacher, GUIDER)[metric.name]
    assert math.isclose(shifted, 0.25, rel_tol=1e-9), shifted     # a constant offset c: RMSE c for every sample
    swapped = metric.compute(other.roll(1, 0), labels, torch.zeros_like(other), teacher, GUIDER)[metric.name]
    assert swapped > 0.1, swapped                                 # paired: the same set in another order is far


CHECKS = {TeacherDistance: check_teacher_distance, GMMMetrics: check_gmm, MnistMetrics: check_mnist, LatentODEMetrics: check_latent, DigitsMetrics: check_digits,
          CleanFID: check_clean_fid, TorchmetricsKID: check_kid}


@pytest.mark.filterwarnings("ignore:Metric `Kernel Inception Distance` will save all extracted features")
@pytest.mark.parametrize("option", option_params("metrics"))
class TestMetricsContract:
    @pytest.fixture
    def built(self, composer, option):
        fast = fast_overrides(composer.node("metrics", option))
        try:
            evaluator = composer.build("metrics", option, *fast)
        except FileNotFoundError as e:  # MissingWeightsError, a missing reference folder or prompt file
            pytest.skip(f"metrics {option} needs external files: {e}")
        return evaluator, composer.node("metrics", option, *fast)["metrics"]

    def test_is_an_evaluator_of_metrics(self, built):
        evaluator, node = built
        assert isinstance(evaluator, Evaluator) and isinstance(evaluator.metrics, Metrics)
        for metric, _ in leaves(evaluator.metrics, node):
            assert type(metric) in CHECKS, f"no contract check for {type(metric).__name__}: add one to CHECKS"

    def test_every_metric_vanishes_on_identical_sets(self, built, composer):
        evaluator, node = built
        for metric, leaf_node in leaves(evaluator.metrics, node):
            CHECKS[type(metric)](metric, leaf_node, composer)

    def test_a_suite_reports_each_member_once(self, built, composer):
        evaluator, node = built
        suite = evaluator.metrics
        if not isinstance(suite, MetricSuite):
            pytest.skip("a single metric set")
        teacher = composer.teacher("digits")
        real, labels, other = digits_sets()
        suite.set_teacher_samples(other, teacher)
        args = (real[:200], labels[:200], torch.zeros(200, 1, 8, 8), teacher, GUIDER)
        got = suite.compute(*args)
        each = [member.compute(*args) for member in suite.members]
        assert got == {k: v for r in each for k, v in r.items()} and len(got) == sum(len(r) for r in each)
