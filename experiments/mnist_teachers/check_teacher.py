"""Score a coloured-MNIST teacher through the STOCK pipeline: class_acc and color_acc at 50 steps with CFG.

Generation runs in a subprocess that imports only torch and diffusers (stock_generate.py); scoring uses
tdd_lab's classifier and colour reader (the same as metrics=mnist). Writes RESULTS json and a sample grid.

    python experiments/mnist_teachers/check_teacher.py --kind sdxl [--folder F] [--n 500] [--scale 4.5]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def score(images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Images (n, 3, 32, 32) in [0, 1] of prompts ``labels`` -> class_acc, color_acc (metrics=mnist's definitions)."""
    from tdd_lab.data.mnist_color import grayscale, read_colors
    from tdd_lab.metrics.mnist import load_mnist_classifier

    x = images * 2 - 1
    clf = load_mnist_classifier()
    with torch.no_grad():
        pred = clf(grayscale(x)).argmax(1)
    return {"class_acc": float((pred == labels % 10).float().mean()),
            "color_acc": float((read_colors(x) == labels // 10).float().mean()),
            "classifier_heldout_accuracy": clf.heldout_accuracy}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kind", choices=("sdxl", "flux"), required=True)
    p.add_argument("--folder", help="the pipeline folder (default: build/find teacher=mnist_<kind> in the cache)")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--scale", type=float, default=4.5, help="CFG scale = 1 + w (the recipes' w = 3.5)")
    p.add_argument("--out", default=str(HERE))
    a = p.parse_args()
    folder = a.folder
    if folder is None:
        from tdd_lab.teachers.mnist import MnistFluxTeacher, MnistSDXLTeacher

        folder = str((MnistSDXLTeacher if a.kind == "sdxl" else MnistFluxTeacher)().path)
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "images.pt"
        subprocess.run([sys.executable, str(HERE / "stock_generate.py"), folder, "--kind", a.kind, "--n", str(a.n),
                        "--steps", str(a.steps), "--scale", str(a.scale), "--out", str(file)], check=True)
        data = torch.load(file)
    result = {"kind": a.kind, "folder": folder, "n": a.n, "steps": a.steps, "cfg_scale": a.scale,
              **score(data["images"], data["labels"])}
    pretrain = json.loads((Path(folder) / "pretrain.json").read_text())
    result.update({k: pretrain[k] for k in ("seconds", "vae_seconds", "denoiser_seconds", "scaling_factor",
                                            "shift_factor", "threads")})
    out = Path(a.out)
    (out / f"teacher_{a.kind}.json").write_text(json.dumps(result, indent=2) + "\n")
    from torchvision.utils import save_image

    grid = torch.cat([data["images"][i::50][:1] for i in range(50)])  # one sample per prompt: 5 colours x 10 digits
    save_image(torch.nn.functional.interpolate(grid, scale_factor=2, mode="nearest"), str(out / f"teacher_{a.kind}_grid.png"),
               nrow=10, padding=2)
    plot_losses(pretrain, out / f"teacher_{a.kind}_loss.png", a.kind)
    print(json.dumps(result, indent=2))


def plot_losses(pretrain: dict, path: Path, kind: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    every = pretrain["loss_every"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, key, title in ((axes[0], "vae_loss", "VAE (L2 + KL)"),
                           (axes[1], "denoiser_loss", "UNet (epsilon MSE)" if kind == "sdxl" else "transformer (velocity MSE)")):
        y = pretrain[key]
        ax.plot([every * (i + 1) for i in range(len(y))], y)
        ax.set_yscale("log")
        ax.set_xlabel("optimizer step")
        ax.set_title(f"mnist_{kind}: {title}")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
