"""FID reference statistics of an image folder, prepared exactly as the FID metrics prepare their images.

``python -m tdd_lab.metrics.reference FOLDER --out STATS.npz [--mode clean] [--crop center] [--image-size 299]
[--inception-path FILE]`` writes ``mu`` (D,) and ``sigma`` (D, D) and records ``mode``, ``crop``, ``image_size``,
``num_images`` and ``folder`` beside them; a metric given the ``.npz`` refuses it when its own mode, crop or
image size differ. The images go through :func:`tdd_lab.metrics.fid.folder_stats`, the path of a metric whose
reference is the folder itself, with the same extractor (:class:`~tdd_lab.metrics.features.ResizedFeatures`: one
function turns an image into the Inception input), so the two give the same statistics. Bad input (a missing folder,
an empty one, missing weights) prints ``error: ...`` and exits with 2; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from torch import nn

from tdd_lab.metrics.features import CROPS, MODES, ResizedFeatures, inception_for_mode
from tdd_lab.metrics.fid import folder_stats


def default_inception_path(mode: str) -> str:
    """The Inception file of ``mode`` where conf/metrics looks for it: ``$TDD_LAB_WEIGHTS`` or <cache>/weights."""
    from tdd_lab.utils.cache import default_cache_dir

    root = os.environ.get("TDD_LAB_WEIGHTS") or str(Path(default_cache_dir()) / "weights")
    name = "inception-2015-12-05.pt" if mode == "clean" else "pt_inception-2015-12-05-6726825d.pth"
    return str(Path(root) / name)


def reference_stats(folder: str | Path, mode: str = "clean", crop: str = "none", image_size: int = 299,
                    inception_path: str | None = None, features: nn.Module | None = None, batch_size: int = 64,
                    device: str = "auto", limit: int | None = None) -> dict[str, np.ndarray]:
    """``{"mu", "sigma", "mode", "crop", "image_size", "num_images", "folder"}`` of the images below ``folder``
    (``features``: a custom extractor instead of the mode's Inception, as the metrics take)."""
    folder = Path(str(folder)).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"reference folder {str(folder)!r} not found")
    net = features if features is not None else inception_for_mode(mode, inception_path or default_inception_path(mode))
    extractor = ResizedFeatures(net, mode, image_size, device, crop)
    mu, sigma, n = folder_stats(extractor, folder, batch_size, limit)
    return {"mu": mu, "sigma": sigma, "mode": np.array(mode), "crop": np.array(crop),
            "image_size": np.array(int(image_size)), "num_images": np.array(n), "folder": np.array(str(folder.resolve()))}


def save_stats(stats: dict[str, np.ndarray], out: str | Path) -> Path:
    """Write ``stats`` to ``out`` (.npz) atomically (tmp + rename)."""
    out = Path(str(out)).expanduser()
    if out.suffix != ".npz":
        raise ValueError(f"--out {str(out)!r}: the statistics file must end in .npz")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a name
        np.savez(f, **stats)
    tmp.replace(out)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tdd_lab.metrics.reference", description=__doc__.split("\n\n")[0])
    p.add_argument("folder", help="image folder (searched recursively, clean-fid's image extensions)")
    p.add_argument("--out", required=True, help="statistics file to write (.npz)")
    p.add_argument("--mode", default="clean", choices=MODES, help="clean-fid resize and Inception (default clean)")
    p.add_argument("--crop", default="none", choices=CROPS,
                   help="before the resize: none (clean-fid: the whole image) | center (centred square); the "
                        "metric's crop (metrics=coco: center)")
    p.add_argument("--image-size", type=int, default=299, help="resize target before Inception (default 299)")
    p.add_argument("--inception-path", default=None,
                   help="local Inception weights of the mode (default: $TDD_LAB_WEIGHTS or <cache>/weights)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")
    p.add_argument("--max-images", type=int, default=None, help="use at most this many images (sorted order)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    for flag, value in (("--image-size", args.image_size), ("--batch-size", args.batch_size),
                        ("--max-images", args.max_images)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    stats = reference_stats(args.folder, args.mode, args.crop, args.image_size, args.inception_path,
                            batch_size=args.batch_size, device=args.device, limit=args.max_images)
    out = save_stats(stats, args.out)
    print(f"{out}: mu and sigma of {int(stats['num_images'])} images (mode {args.mode}, crop {args.crop}, "
          f"{args.image_size} px)")
    return out


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
