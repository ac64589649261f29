"""Prediction-type conversions, the consistency function and x0 thresholding.

All functions take the per-sample scales ``a`` (signal) and ``s`` (noise), broadcastable
against ``x`` (see :meth:`tdd_lab.schedules.NoiseSchedule.alpha_sigma`), so they hold for
VP (``a^2 + s^2 = 1``) and flow-matching (``a + s = 1``) schedules alike.
"""

from __future__ import annotations

import torch

from tdd_lab.utils.validation import check_choice

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "flow")


def to_x0_eps(
    model_output: torch.Tensor, x_t: torch.Tensor, a: torch.Tensor, s: torch.Tensor, prediction_type: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Convert a network output into ``(x0_hat, eps_hat)``, all (B, ...).

    epsilon: x0 = (x_t - s eps) / a.
    v_prediction (Salimans & Ho 2022, v = a eps - s x0): x0 = (a x_t - s v)/(a^2+s^2), eps = (s x_t + a v)/(a^2+s^2).
    sample: eps = (x_t - a x0) / s.
    flow (v = eps - x0): x0 = (x_t - s v)/(a+s), eps = (x_t + a v)/(a+s)  (a + s = 1 on flow schedules).
    """
    check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
    if prediction_type == "epsilon":
        eps = model_output
        return (x_t - s * eps) / a, eps
    if prediction_type == "v_prediction":
        norm = a * a + s * s  # == 1 for VP schedules
        return (a * x_t - s * model_output) / norm, (s * x_t + a * model_output) / norm
    if prediction_type == "sample":
        x0 = model_output
        return x0, (x_t - a * x0) / s
    norm = a + s  # == 1 for flow schedules
    return (x_t - s * model_output) / norm, (x_t + a * model_output) / norm


def from_x0_eps(x0: torch.Tensor, eps: torch.Tensor, a: torch.Tensor, s: torch.Tensor, prediction_type: str):
    """Inverse of :func:`to_x0_eps`: the network output that encodes ``(x0, eps)``."""
    check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "v_prediction":
        return a * eps - s * x0
    if prediction_type == "sample":
        return x0
    return eps - x0


def consistency_function(x0: torch.Tensor, eps: torch.Tensor, a_s: torch.Tensor, s_s: torch.Tensor) -> torch.Tensor:
    """Semi-linear (DDIM-projection) consistency function F(x_t, t -> s) = a_s x0_hat + s_s eps_hat.

    TDD/PCM/TCD (TDD_SPEC section 2). With a flow schedule this is the Euler jump to sigma_s.
    """
    return a_s * x0 + s_s * eps


def boundary_scalings(
    t: torch.Tensor, sigma_data: float = 0.5, timestep_scaling: float = 10.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """LCM boundary scalings (Luo et al. 2023, eq. 9, as in the diffusers LCM scripts): (B,) -> (B,), (B,).

    With u = timestep_scaling * t: c_skip = sd^2 / (u^2 + sd^2), c_out = u / sqrt(u^2 + sd^2),
    so c_skip(0) = 1 and c_out(0) = 0.
    """
    u = timestep_scaling * t.double()
    c_skip = sigma_data**2 / (u**2 + sigma_data**2)
    c_out = u / (u**2 + sigma_data**2).sqrt()
    return c_skip, c_out


def dynamic_threshold(x0: torch.Tensor, ratio: float = 0.995, max_value: float = 1.0) -> torch.Tensor:
    """Dynamic thresholding (Saharia et al. 2022, Imagen sec. 2.3): (B, ...) -> (B, ...).

    Per sample, q = quantile(|x0|, ratio) clamped to [1, max_value]; x0 -> clamp(x0, -q, q) / q.
    """
    dtype = x0.dtype
    flat = x0.reshape(x0.shape[0], -1)
    if dtype not in (torch.float32, torch.float64):
        flat = flat.float()  # quantile is not implemented for half precision
    q = torch.quantile(flat.abs(), ratio, dim=1)
    q = torch.clamp(q, min=1.0, max=max_value).unsqueeze(1)
    return (torch.clamp(flat, -q, q) / q).reshape(x0.shape).to(dtype)
