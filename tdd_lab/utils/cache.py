"""Content-addressed cache for artefacts tdd_lab builds itself (teachers, classifiers, teacher metrics)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def default_cache_dir() -> Path:
    """``$TDD_LAB_CACHE`` or ``~/.cache/tdd_lab``."""
    return Path(os.environ.get("TDD_LAB_CACHE", Path.home() / ".cache" / "tdd_lab"))


def config_key(config: dict[str, Any]) -> str:
    """Stable 12-hex-digit key of a JSON-serialisable config."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:12]


def cached_dir(cache_dir: str | Path, kind: str, config: dict[str, Any], build: Callable[[Path], None]) -> Path:
    """Directory ``cache_dir/kind-<key>``; built by ``build(tmp_dir)`` then renamed into place atomically."""
    cache_dir = Path(cache_dir).expanduser()
    target = cache_dir / f"{kind}-{config_key(config)}"
    if (target / "DONE").exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{kind}-", dir=cache_dir))
    try:
        build(tmp)
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
        (tmp / "DONE").write_text("ok\n")
        if (target / "DONE").exists():  # another process (e.g. another node on a shared disk) finished first
            shutil.rmtree(tmp, ignore_errors=True)
            return target
        if target.exists():  # an incomplete earlier attempt
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=float) + "\n")


def tensor_fingerprint(*tensors) -> str:
    """A content hash (dtype, shape and bytes) of tensors: a cache key that cannot go stale when memory is reused."""
    import torch

    h = hashlib.sha1()
    for t in tensors:
        t = torch.as_tensor(t).detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()[:16]
