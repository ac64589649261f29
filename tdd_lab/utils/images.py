"""Pictures of sample sets: image grids (digits) and 2-D scatter plots (gmm2d)."""

from __future__ import annotations

from pathlib import Path

import torch


def save_digit_grid(samples: torch.Tensor, labels, path: Path, nrow: int = 10, max_images: int = 40) -> None:
    """Save the first ``max_images`` of (n, 1, 8, 8) samples in [-1, 1] as a PNG grid, upscaled 4x."""
    from torchvision.utils import save_image

    x = (samples[:max_images].float().clamp(-1, 1) + 1) / 2
    x = torch.nn.functional.interpolate(x, scale_factor=4, mode="nearest")
    save_image(x, str(path), nrow=nrow, padding=2, pad_value=0.5)


def save_scatter(samples: torch.Tensor, labels, path: Path, reference: torch.Tensor | None = None,
                 title: str = "") -> None:
    """Scatter plot of 2-D samples coloured by class (PNG), optionally over reference points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    if reference is not None:
        ax.scatter(reference[:, 0], reference[:, 1], s=3, c="lightgrey", label="teacher ODE")
    c = [int(x) for x in labels] if labels is not None else None
    ax.scatter(samples[:, 0].cpu(), samples[:, 1].cpu(), s=3, c=c, cmap="tab10", vmin=0, vmax=9)
    ax.set_xlim(-1.6, 1.6)
    ax.set_ylim(-1.6, 1.6)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
