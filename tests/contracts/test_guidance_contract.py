"""Contract of every ``conf/guidance`` option (TDD_SPEC section 4): the batch it prepares, the teacher's guider in
the one convention out_c + w (out_c - out_u), the recorded teacher w, and how the student is sampled."""

import math

import pytest
import torch

from tdd_lab.conditioner import first_leaf, map_condition
from tdd_lab.guidance import Guidance, guidance_scale_embedding
from tdd_lab.guider import Guider
from tdd_lab.utils.tensors import append_dims

from .conftest import option_params

B = 512


def text_condition(gen):
    """(B, L, D) text embeddings and their null condition broadcast to the batch (``Conditioner.null_like``)."""
    cond = torch.randn(B, 5, 8, generator=gen)
    return cond, torch.randn(1, 5, 8, generator=gen).expand(B, 5, 8)


def sdxl_condition(gen):
    """A nested condition (SDXL): the null keeps each sample's time_ids, as the stock pipeline does."""
    cond = {"encoder_hidden_states": torch.randn(B, 5, 8, generator=gen),
            "added_cond_kwargs": {"text_embeds": torch.randn(B, 4, generator=gen),
                                  "time_ids": torch.randn(B, 6, generator=gen)}}
    null = {"encoder_hidden_states": torch.zeros(1, 5, 8).expand(B, 5, 8),
            "added_cond_kwargs": {"text_embeds": torch.zeros(1, 4).expand(B, 4),
                                  "time_ids": cond["added_cond_kwargs"]["time_ids"]}}
    return cond, null


CONDITIONS = {"text": text_condition, "sdxl": sdxl_condition}


def toy_denoiser(x, t, cond, timestep_cond=None):
    """A denoiser whose output depends on the condition and the timestep: (x0, eps) (B, ...) each."""
    c = append_dims(first_leaf(cond).float().flatten(1).mean(1), x.ndim)
    tt = append_dims(t.float() / 1000, x.ndim)
    return 0.5 * x + c, x - 2 * c + tt


def expected_cfg(x, t, cond, uncond, w):
    """out_c + w (out_c - out_u) from two separate forwards, w scalar or (B,)."""
    (x0_c, eps_c), (x0_u, eps_u) = toy_denoiser(x, t, cond), toy_denoiser(x, t, uncond)
    w = append_dims(torch.as_tensor(w, dtype=x.dtype), x.ndim) if isinstance(w, torch.Tensor) else w
    return x0_c + w * (x0_c - x0_u), eps_c + w * (eps_c - eps_u)


def leaves(cond):
    out = []
    map_condition(lambda x: out.append(x), cond)
    return out


@pytest.mark.parametrize("option", option_params("guidance"))
class TestGuidanceContract:
    @pytest.fixture
    def guidance(self, composer, option):
        return composer.build("guidance", option)

    def test_is_a_guidance_with_a_finite_teacher_w(self, guidance):
        assert isinstance(guidance, Guidance)
        assert type(guidance.teacher_w) is float and math.isfinite(guidance.teacher_w) and guidance.teacher_w >= 0

    @pytest.mark.parametrize("kind", sorted(CONDITIONS))
    def test_prepare_keeps_shapes_and_drops_to_null_exactly(self, guidance, kind):
        gen = torch.Generator().manual_seed(0)
        cond, null = CONDITIONS[kind](gen)
        gb = guidance.prepare(cond, null, torch.Generator().manual_seed(1))
        for out, src in ((gb.cond, cond), (gb.uncond, null)):
            assert [x.shape for x in leaves(out)] == [x.shape for x in leaves(src)]
        assert gb.dropped.dtype == torch.bool and gb.dropped.shape == (B,)
        for got, orig, nul in zip(leaves(gb.cond), leaves(cond), leaves(null)):
            assert torch.equal(got[gb.dropped], nul[gb.dropped]), "a dropped sample's condition must be the null"
            assert torch.equal(got[~gb.dropped], orig[~gb.dropped]), "a kept sample's condition must be untouched"
        for got, nul in zip(leaves(gb.uncond), leaves(null)):
            assert torch.equal(got, nul)
        # the drop rate is the configured one (0 for modes that never drop)
        p = float(getattr(guidance, "proportion_empty_prompts", 0.0))
        rate = gb.dropped.float().mean().item()
        assert abs(rate - p) <= 4 * math.sqrt(p * (1 - p) / B) + 1e-12, (rate, p)

    def test_prepare_is_deterministic_under_a_seeded_generator(self, guidance):
        cond, null = text_condition(torch.Generator().manual_seed(0))
        torch.manual_seed(1)
        a = guidance.prepare(cond, null, torch.Generator().manual_seed(5))
        torch.manual_seed(2)
        b = guidance.prepare(cond, null, torch.Generator().manual_seed(5))
        assert torch.equal(a.dropped, b.dropped) and torch.equal(a.cond, b.cond)
        assert torch.equal(torch.as_tensor(a.teacher_guider.w), torch.as_tensor(b.teacher_guider.w))

    def test_batch_teacher_guider_is_cfg_in_the_w_convention(self, guidance):
        gen = torch.Generator().manual_seed(0)
        cond, null = text_condition(gen)
        gb = guidance.prepare(cond, null, torch.Generator().manual_seed(1))
        guider = gb.teacher_guider
        assert isinstance(guider, Guider)
        x, t = torch.randn(B, 2, 3, generator=gen), torch.randint(0, 1000, (B,), generator=gen)
        x0, eps = guider(toy_denoiser, x, t, gb.cond, gb.uncond)
        x0_ref, eps_ref = expected_cfg(x, t, gb.cond, gb.uncond, guider.w)
        torch.testing.assert_close(x0, x0_ref)
        torch.testing.assert_close(eps, eps_ref)
        if gb.w_embedding is not None:  # the student is told the w its teacher step used
            assert gb.w_embedding.shape == (B, guidance.embedding_dim)
            w = torch.as_tensor(guider.w).expand(B)
            torch.testing.assert_close(gb.w_embedding, guidance_scale_embedding(w, guidance.embedding_dim))

    def test_teacher_guider_is_cfg_at_teacher_w(self, guidance):
        gen = torch.Generator().manual_seed(3)
        cond, null = text_condition(gen)
        x, t = torch.randn(B, 2, 3, generator=gen), torch.randint(0, 1000, (B,), generator=gen)
        guider = guidance.teacher_guider()
        assert float(guider.w) == guidance.teacher_w
        x0, eps = guider(toy_denoiser, x, t, cond, null)
        x0_ref, eps_ref = expected_cfg(x, t, cond, null, guidance.teacher_w)
        torch.testing.assert_close(x0, x0_ref)
        torch.testing.assert_close(eps, eps_ref)

    def test_student_sampling(self, guidance):
        guider, tc_fn = guidance.student_sampling(1.0)
        assert isinstance(guider, Guider) and guider.guidance_scale == 1.0 and float(guider.w) == 0.0
        if guidance.embedding_dim is None:
            assert tc_fn is None
            post, _ = guidance.student_sampling(2.0)  # CFG post-tuning of the student: diffusers' scale 2 = w 1
            assert post.guidance_scale == 2.0 and float(post.w) == 1.0
        else:  # the w-embedding encodes the teacher's w, the one the evaluation reference uses
            emb = tc_fn(6, torch.device("cpu"))
            assert emb.shape == (6, guidance.embedding_dim)
            torch.testing.assert_close(emb, guidance_scale_embedding(torch.full((6,), guidance.teacher_w),
                                                                     guidance.embedding_dim))
            with pytest.raises(ValueError, match="guidance_scale"):
                guidance.student_sampling(2.0)
