"""Guidance modes: CFG form, w-embedding, and decoupled prompt dropping."""

import math

import pytest
import torch
from hydra.errors import MissingConfigException

from tdd_lab.conditioner import concat_conditions, expand_condition
from tdd_lab.guidance import DecoupledGuidance, FixedGuidance, LCMWGuidance, guidance_scale_embedding
from tdd_lab.guider import ClassifierFreeGuidance, NoGuidance, cfg_combine
from tdd_lab.validate import ConfigError
from tests.conftest import build_option


def sdxl_like_condition(b):
    return {
        "encoder_hidden_states": torch.randn(b, 77, 64),
        "added_cond_kwargs": {"text_embeds": torch.randn(b, 32), "time_ids": torch.randn(b, 6)},
    }


def condition_dependent_denoiser(x, t, cond, timestep_cond=None):
    """A toy denoiser whose output depends on every leaf of an SDXL-like condition: (x0, eps), each (B, 4)."""
    text, added = cond["encoder_hidden_states"], cond["added_cond_kwargs"]
    shift = text.mean((1, 2)) + added["text_embeds"].mean(1) + added["time_ids"].mean(1)  # (B,)
    return x * 0.5 + shift[:, None], x - shift[:, None] * t[:, None] / 1000


def test_cfg_combine_w_plus_one_form():
    c, u = torch.randn(3, 4), torch.randn(3, 4)
    w = torch.tensor([0.0, 1.0, 3.5])
    out = cfg_combine(c, u, w)
    torch.testing.assert_close(out[0], c[0])
    torch.testing.assert_close(out[2], c[2] + 3.5 * (c[2] - u[2]))
    # equals standard CFG with scale w + 1: u + (w + 1)(c - u)
    torch.testing.assert_close(out, u + (w[:, None] + 1) * (c - u))


def test_fixed_guidance():
    cond, null = torch.randn(5, 7), torch.zeros(1, 7).expand(5, 7)
    gb = FixedGuidance(w=3.5).prepare(cond, null)
    assert torch.equal(gb.cond, cond) and gb.uncond.shape == (5, 7)
    assert gb.teacher_guider.w == 3.5 and gb.w_embedding is None and not gb.dropped.any()
    assert isinstance(FixedGuidance(w=0.0).prepare(cond, null).teacher_guider, NoGuidance)  # one teacher forward


def test_guider_batches_cond_and_uncond_in_one_forward():
    calls = []

    def denoiser(x, t, c, tc=None):
        calls.append(x.shape[0])
        return x * c, x + c

    x, t, c, u = torch.randn(3, 4), torch.zeros(3, dtype=torch.long), torch.randn(3, 4), torch.randn(3, 4)
    x0, eps = ClassifierFreeGuidance(2.0)(denoiser, x, t, c, u)
    assert calls == [6]
    torch.testing.assert_close(x0, x * c + 2.0 * (x * c - x * u))
    torch.testing.assert_close(eps, (x + c) + 2.0 * (c - u))
    assert isinstance(ClassifierFreeGuidance.from_scale(1.0), NoGuidance)
    assert ClassifierFreeGuidance.from_scale(4.5).w == 3.5 and ClassifierFreeGuidance(3.5).guidance_scale == 4.5


def test_lcm_w_guidance_range_and_embedding(gen):
    g = LCMWGuidance(w_min=2.0, w_max=8.0, embedding_dim=256)
    gb = g.prepare(torch.randn(4000, 3), torch.zeros(4000, 3), gen)
    w = gb.teacher_guider.w  # per-sample strength (B,)
    assert w.min() >= 2.0 and w.max() <= 8.0
    assert w.mean().item() == pytest.approx(5.0, abs=0.15)
    assert gb.w_embedding.shape == (4000, 256)
    from diffusers import LatentConsistencyModelPipeline

    ref = LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, w[:8], embedding_dim=256)
    torch.testing.assert_close(gb.w_embedding[:8], ref, rtol=1e-5, atol=1e-5)
    assert guidance_scale_embedding(torch.tensor([1.0]), 7).shape == (1, 7)


def test_decoupled_drops_at_configured_rate_for_all_branches():
    p, n = 0.2, 20000
    g = DecoupledGuidance(w=3.5, proportion_empty_prompts=p)
    cond = sdxl_like_condition(n)
    null = expand_condition({k: (torch.zeros_like(v[:1]) if torch.is_tensor(v) else
                                 {kk: torch.zeros_like(vv[:1]) for kk, vv in v.items()}) for k, v in cond.items()}, n)
    gb = g.prepare(cond, null, torch.Generator().manual_seed(0))
    rate = gb.dropped.float().mean().item()
    assert abs(rate - p) < 4 * math.sqrt(p * (1 - p) / n)  # binomial 4-sigma band
    d = gb.dropped
    # dropped samples carry exactly the null condition in every leaf; kept ones are untouched
    assert (gb.cond["encoder_hidden_states"][d] == 0).all()
    assert (gb.cond["added_cond_kwargs"]["text_embeds"][d] == 0).all()
    assert (gb.cond["added_cond_kwargs"]["time_ids"][d] == 0).all()
    assert torch.equal(gb.cond["encoder_hidden_states"][~d], cond["encoder_hidden_states"][~d])
    # the teacher's uncond branch is the same null condition: through the batch's own guider, a dropped sample's guided
    # output is the unguided output of the null condition (CFG's identity), a kept one is guided away from it
    m = 400
    head = {k: (v[:m] if torch.is_tensor(v) else {kk: vv[:m] for kk, vv in v.items()}) for k, v in gb.cond.items()}
    uncond = {k: (v[:m] if torch.is_tensor(v) else {kk: vv[:m] for kk, vv in v.items()}) for k, v in gb.uncond.items()}
    x, t, dm = torch.randn(m, 4), torch.full((m,), 500), d[:m]
    guided, _ = gb.teacher_guider(condition_dependent_denoiser, x, t, head, uncond)
    out_c, _ = condition_dependent_denoiser(x, t, head)
    out_u, _ = condition_dependent_denoiser(x, t, uncond)
    assert dm.any() and (~dm).any()
    torch.testing.assert_close(guided[dm], out_u[dm])
    torch.testing.assert_close(guided[~dm], out_c[~dm] + 3.5 * (out_c[~dm] - out_u[~dm]))
    assert (guided[~dm] - out_c[~dm]).abs().min() > 1e-3  # the kept samples are guided (cond != null)


def test_decoupled_extremes_and_seed():
    cond, null = torch.randn(100, 3), torch.zeros(100, 3)
    assert not DecoupledGuidance(proportion_empty_prompts=0.0).prepare(cond, null).dropped.any()
    assert DecoupledGuidance(proportion_empty_prompts=1.0).prepare(cond, null).dropped.all()
    g = DecoupledGuidance()
    a = g.prepare(cond, null, torch.Generator().manual_seed(5)).dropped
    b = g.prepare(cond, null, torch.Generator().manual_seed(5)).dropped
    assert torch.equal(a, b)


def test_concat_conditions_for_batched_teacher():
    a, b = sdxl_like_condition(2), sdxl_like_condition(2)
    ab = concat_conditions(a, b)
    assert ab["encoder_hidden_states"].shape == (4, 77, 64)
    assert torch.equal(ab["added_cond_kwargs"]["time_ids"][2:], b["added_cond_kwargs"]["time_ids"])


def test_teacher_w_is_recorded_once():
    assert DecoupledGuidance(w=2.5).teacher_w == 2.5 and FixedGuidance(w=0.0).teacher_w == 0.0
    lcm = LCMWGuidance(w_min=2.0, w_max=8.0, eval_w=6.0)  # the evaluated w is the config's, not a silent 3.5
    assert lcm.teacher_w == 6.0
    guider, tc_fn = lcm.student_sampling(1.0)
    assert isinstance(guider, NoGuidance) and tc_fn(2, "cpu").shape == (2, 256)
    with pytest.raises(ValueError, match="guidance_scale"):
        lcm.student_sampling(1.5)


@pytest.mark.parametrize(
    "name,params,match",
    [
        ("decoupled", dict(proportion_empty_prompts=1.2), r"guidance: guidance.proportion_empty_prompts must be in \[0, 1\]"),
        ("decoupled", dict(proportion_empty_prompts=-0.1), r"proportion_empty_prompts must be in \[0, 1\]"),
        ("lcm_w", dict(w_min=5.0, w_max=2.0), "w_min must be <= guidance.w_max"),
        ("lcm_w", dict(eval_w=9.0), r"guidance.eval_w must be in \[2, 8\]"),
        ("fixed", dict(w=-1.0), r"guidance.w must be in \[0"),
        ("fixed", dict(scale=2.0), r"unknown parameter guidance.scale"),
    ],
)
def test_bad_guidance_input(name, params, match):
    with pytest.raises(ConfigError, match=match):
        build_option("guidance", name, **params)


def test_unknown_guidance_option():
    with pytest.raises(MissingConfigException, match="cfgpp"):
        build_option("guidance", "cfgpp")
