"""FID/KID through clean-fid and torchmetrics on a small fixed feature extractor (no Inception weights needed)."""

import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from tdd_lab.guider import NoGuidance
from tdd_lab.metrics.features import (
    CleanInception,
    MissingWeightsError,
    ResizedFeatures,
    batched_features,
    to_uint8_images,
)
from tdd_lab.metrics.fid import CleanFID, TorchmetricsFID, TorchmetricsKID
from tdd_lab.metrics.suite import MetricSuite

SIZE = 16


class RandomConv(nn.Module):
    """A fixed random conv net: (B, 3, 16, 16) in [0, 255] -> (B, 12)."""

    num_features = 12

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.Tanh(), nn.Conv2d(8, 12, 3, stride=2), nn.Tanh(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        return self.body(x / 127.5 - 1)


def blobs(n, seed, shift=0.0):
    """(n, 3, 16, 16) smooth random images in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g) * 1.6 - 0.8
    return (nn.functional.interpolate(low, size=(SIZE, SIZE), mode="bilinear") + shift).clamp(-1, 1)


@pytest.fixture(scope="module")
def sets():
    return {"a": blobs(300, 1), "b": blobs(300, 2), "shifted": blobs(300, 3, shift=0.35)}


@pytest.fixture(scope="module")
def folder(tmp_path_factory, sets):
    """The "a" set saved as PNGs (exactly what to_uint8_images quantises to)."""
    root = tmp_path_factory.mktemp("refs") / "blobs300"
    root.mkdir()
    for i, img in enumerate(to_uint8_images(sets["a"])):
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(root / f"{i:04d}.png")
    return root


def test_clean_fid_self_is_zero_and_shift_is_positive(sets):
    m = CleanFID("teacher", features=RandomConv(), image_size=SIZE)
    m.set_teacher_samples(sets["a"])
    assert m.name == "fid_teacher"
    self_fid = m.compute(sets["a"], None, None, None, NoGuidance())["fid_teacher"]
    other = m.compute(sets["b"], None, None, None, NoGuidance())["fid_teacher"]
    shifted = m.compute(sets["shifted"], None, None, None, NoGuidance())["fid_teacher"]
    assert abs(self_fid) < 1e-6
    assert 0 < other < shifted and shifted > 10 * other  # same distribution: small; shifted: large


def test_folder_npz_and_tensor_references_agree(sets, folder, tmp_path):
    """The folder goes through clean-fid's own loader; the same images as tensors give the same statistics."""
    by_folder = CleanFID(str(folder), features=RandomConv(), image_size=SIZE)
    assert by_folder.name == "fid_clean/blobs300"
    assert abs(by_folder.compute(sets["a"], None, None, None, NoGuidance())["fid_clean/blobs300"]) < 1e-6
    mu, sigma = by_folder.reference_stats()
    np.savez(tmp_path / "blobs_stats.npz", mu=mu, sigma=sigma)
    by_npz = CleanFID(str(tmp_path / "blobs_stats.npz"), features=RandomConv(), image_size=SIZE)
    a = by_folder.compute(sets["shifted"], None, None, None, NoGuidance())["fid_clean/blobs300"]
    b = by_npz.compute(sets["shifted"], None, None, None, NoGuidance())["fid_clean/blobs_stats"]
    assert a == pytest.approx(b, rel=1e-9) and a > 0.01


def test_modes_resize_differently_and_are_named(sets, folder):
    legacy = CleanFID(str(folder), mode="legacy_pytorch", features=RandomConv(), image_size=24)
    clean = CleanFID(str(folder), mode="clean", features=RandomConv(), image_size=24)
    assert legacy.name == "fid_legacy/blobs300" and clean.name == "fid_clean/blobs300"
    img = to_uint8_images(sets["a"][:2])
    assert not torch.allclose(legacy._extractor.resize(img), clean._extractor.resize(img))  # bilinear vs bicubic
    with pytest.raises(ValueError, match="mode must be one of"):
        CleanFID(str(folder), mode="legacy_tensorflow", features=RandomConv())


def test_cleanfid_and_torchmetrics_agree_on_the_same_features(sets, folder):
    from cleanfid.fid import fid_from_feats

    ext = ResizedFeatures(RandomConv(), "clean", SIZE)
    direct = fid_from_feats(batched_features(ext, to_uint8_images(sets["a"]), 64),
                            batched_features(ext, to_uint8_images(sets["shifted"]), 64))
    ours = CleanFID(str(folder), features=RandomConv(), image_size=SIZE).compute(sets["shifted"], None, None, None, 0)
    tm = TorchmetricsFID(str(folder), mode="clean", features=RandomConv(), image_size=SIZE)
    tm_value = tm.compute(sets["shifted"], None, None, None, 0)["fid_torchmetrics/blobs300"]
    assert ours["fid_clean/blobs300"] == pytest.approx(direct, rel=1e-6)
    assert tm_value == pytest.approx(direct, rel=1e-3)
    # the reference features are kept between computes
    assert tm.compute(sets["shifted"], None, None, None, 0)["fid_torchmetrics/blobs300"] == pytest.approx(tm_value)


def test_kid_self_near_zero_shift_positive(sets):
    kid = TorchmetricsKID("teacher", mode="clean", features=RandomConv(), image_size=SIZE, subsets=20, subset_size=200)
    kid.set_teacher_samples(sets["a"])
    assert kid.name == "kid/teacher"
    same = kid.compute(sets["a"], None, None, None, 0)["kid/teacher"]
    other = kid.compute(sets["b"], None, None, None, 0)["kid/teacher"]
    shifted = kid.compute(sets["shifted"], None, None, None, 0)["kid/teacher"]
    assert abs(same) < 0.05 * shifted and abs(other) < 0.05 * shifted and shifted > 0
    assert kid.compute(sets["shifted"], None, None, None, 0)["kid/teacher"] == shifted  # seeded subsets


def test_suite_merges_names_and_forwards_teacher_samples(sets, folder):
    suite = MetricSuite({"real": CleanFID(str(folder), features=RandomConv(), image_size=SIZE),
                         "teacher": CleanFID("teacher", features=RandomConv(), image_size=SIZE)})
    assert suite.needs_teacher_samples and not suite.deterministic
    suite.set_teacher_samples(sets["b"])
    out = suite.compute(sets["b"], None, None, None, 0)
    assert set(out) == {"fid_clean/blobs300", "fid_teacher"} and abs(out["fid_teacher"]) < 1e-6
    clash = MetricSuite([CleanFID(str(folder), features=RandomConv(), image_size=SIZE)] * 2)
    with pytest.raises(ValueError, match="produced twice"):
        clash.compute(sets["a"], None, None, None, 0)


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("attempted a download")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)


@pytest.mark.parametrize("mode,url_part", [("clean", "nvlabs-fi-cdn"), ("legacy_pytorch", "pytorch-fid")])
def test_missing_inception_weights_name_the_file(mode, url_part, tmp_path, no_network):
    missing = tmp_path / "weights" / "inception-2015-12-05.pt"
    with pytest.raises(MissingWeightsError, match="never downloads") as err:
        CleanFID("teacher", mode=mode, inception_path=str(missing))
    assert str(missing) in str(err.value) and url_part in str(err.value)
    with pytest.raises(MissingWeightsError):
        TorchmetricsKID("teacher", mode=mode, inception_path=None)


def test_missing_reference_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="coco2k"):
        CleanFID(str(tmp_path / "coco2k"), features=RandomConv())
    with pytest.raises(FileNotFoundError, match="stats.npz"):
        CleanFID(str(tmp_path / "stats.npz"), features=RandomConv())
    with pytest.raises(ValueError, match="not .npz statistics"):
        (tmp_path / "s.npz").write_bytes(b"")
        TorchmetricsFID(str(tmp_path / "s.npz"), features=RandomConv())


class _ScriptedInception(nn.Module):
    """Stands in for clean-fid's TorchScript file: a module with ``layers``."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Conv2d(3, 4, 5, stride=4), nn.AdaptiveAvgPool2d(2))

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        return self.layers(x)


def test_clean_inception_loads_a_local_torchscript_file(tmp_path, no_network):
    torch.manual_seed(0)
    ref = _ScriptedInception().eval()
    path = tmp_path / "inception-2015-12-05.pt"
    torch.jit.script(ref).save(str(path))
    net = CleanInception(str(path))
    x = torch.rand(2, 3, 299, 299) * 255
    torch.testing.assert_close(net(x), ref.layers((x - 128) / 128).flatten(1))
    m = CleanFID("teacher", inception_path=str(path), batch_size=4)
    assert m.features == "inception:clean" and m._extractor.num_features == 2048  # the Inception's declared size


def test_legacy_inception_loads_a_local_state_dict(tmp_path, no_network, monkeypatch):
    """clean-fid's legacy_pytorch Inception built from a local file (random weights here) without any URL."""
    from cleanfid import inception_pytorch

    from tdd_lab.metrics.features import LegacyInception

    torch.manual_seed(0)
    with monkeypatch.context() as m:  # a random-weight FID Inception to save as the "downloaded" file
        m.setattr(inception_pytorch, "load_state_dict_from_url", lambda *a, **k: None)
        m.setattr(nn.Module, "load_state_dict", lambda self, sd, *a, **k: None)
        ref = inception_pytorch.InceptionV3(output_blocks=[3], resize_input=False).eval()
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    # the file is the torchvision-style state dict fid_inception_v3 loads; rebuild its keys from the blocks
    keys = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
            "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
            "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "avgpool"]
    flat = [m for block in ref.blocks for m in block]
    state = {f"{name}.{k}": v for name, mod in zip(keys, flat) for k, v in mod.state_dict().items()}
    state.update({"fc.weight": torch.zeros(1008, 2048), "fc.bias": torch.zeros(1008)})
    torch.save(state, path)
    net = LegacyInception(str(path))
    x = torch.rand(1, 3, 299, 299) * 255
    with torch.no_grad():
        torch.testing.assert_close(net(x), ref(x / 255)[0].flatten(1))


def test_train_with_missing_metric_weights_fails_before_training(tmp_path, cache_dir, no_network):
    """metrics=images without the files: the reference, then the Inception weights, are named before any step."""
    from tdd_lab.train import train

    from .conftest import compose_cfg

    base = ["experiment=tdd_gmm2d", "debug=smoke", "teacher.init_steps=20", "metrics=images"]
    with pytest.raises(FileNotFoundError, match="coco2k"):
        train(compose_cfg(base, tmp_path, cache_dir))
    teacher_refs = ["metrics.metrics.members.fid.reference=teacher", "metrics.metrics.members.kid.reference=teacher",
                    f"metrics.metrics.members.fid.inception_path={tmp_path}/w/inception-2015-12-05.pt"]
    with pytest.raises(MissingWeightsError, match="inception-2015-12-05.pt") as err:
        train(compose_cfg(base + teacher_refs, tmp_path, cache_dir))
    assert "nvlabs-fi-cdn" in str(err.value)
    assert not (tmp_path / "metrics.json").exists()  # nothing was trained or evaluated


def test_latent_samples_are_decoded_once_per_sample_set(sets):
    """A latent teacher's ``decode`` turns samples into images; the suite's metrics share one decode."""

    class LatentTeacher:
        calls = 0

        def decode(self, z):  # (B, 4, 8, 8) -> (B, 3, 16, 16)
            LatentTeacher.calls += 1
            return nn.functional.interpolate(z[:, :3], scale_factor=2, mode="nearest")

    teacher = LatentTeacher()
    latents = nn.functional.avg_pool2d(torch.cat([sets["a"], sets["a"][:, :1]], 1), 2)  # (300, 4, 8, 8)
    suite = MetricSuite([CleanFID("teacher", features=RandomConv(), image_size=SIZE, name="a"),
                         CleanFID("teacher", mode="legacy_pytorch", features=RandomConv(), image_size=SIZE, name="b")])
    suite.set_teacher_samples(latents, teacher)
    calls = LatentTeacher.calls
    out = suite.compute(latents, None, None, teacher, NoGuidance())
    assert abs(out["a"]) < 1e-6 and abs(out["b"]) < 1e-6
    assert LatentTeacher.calls == calls  # the same latents: decoded once, shared
    # another sample set is decoded once (for both members), and scored on its own images: the FIDs equal those of
    # its images handed over directly (no decode, no shared cache): 0.0504 here, against < 1e-6 for the set itself
    other = nn.functional.avg_pool2d(torch.cat([sets["shifted"], sets["shifted"][:, :1]], 1), 2)
    out = suite.compute(other, None, None, teacher, NoGuidance())
    assert LatentTeacher.calls == calls + len(range(0, 300, 16))  # one pass over the new set, 16 latents a call
    direct = MetricSuite([CleanFID("teacher", features=RandomConv(), image_size=SIZE, name="a"),
                          CleanFID("teacher", mode="legacy_pytorch", features=RandomConv(), image_size=SIZE, name="b")])
    direct.set_teacher_samples(teacher.decode(latents))
    expected = direct.compute(teacher.decode(other), None, None, None, NoGuidance())
    assert out == pytest.approx(expected, rel=1e-9) and min(out.values()) > 0.01, (out, expected)
    # the same tensor changed in place is decoded again (the cache is keyed on the tensor's version too)
    calls = LatentTeacher.calls
    other.mul_(0.5)
    halved = suite.compute(other, None, None, teacher, NoGuidance())
    assert LatentTeacher.calls > calls and halved != out
    with pytest.raises(ValueError, match="Teacher.decode"):
        CleanFID("teacher", features=RandomConv(), image_size=SIZE).compute(latents, None, None, None, NoGuidance())
