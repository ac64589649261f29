"""Content-addressed cache for artefacts tdd_lab builds itself (teachers, classifiers, teacher metrics)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def default_cache_dir() -> Path:
    """``$TDD_LAB_CACHE`` or ``~/.cache/tdd_lab``."""
    return Path(os.environ.get("TDD_LAB_CACHE", Path.home() / ".cache" / "tdd_lab"))


def config_key(config: dict[str, Any]) -> str:
    """Stable 12-hex-digit key of a JSON-serialisable config."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:12]


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a block without changing the caller's random state (torch CPU and CUDA, numpy, Python ``random``)."""
    import numpy as np
    import torch

    py, npy = random.getstate(), np.random.get_state()
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


def cached_dir(cache_dir: str | Path, kind: str, config: dict[str, Any], build: Callable[[Path], None]) -> Path:
    """Directory ``cache_dir/kind-<key>``; built by ``build(tmp_dir)`` then renamed into place atomically.

    The build runs under :func:`preserved_rng`: builders seed themselves, and a run must draw the same numbers
    whether its cache was cold (the artefact built inside the run) or warm."""
    cache_dir = Path(cache_dir).expanduser()
    target = cache_dir / f"{kind}-{config_key(config)}"
    if (target / "DONE").exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{kind}-", dir=cache_dir))
    try:
        with preserved_rng():
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


def _file_stamps(root: Path) -> list[tuple[str, int, int, str]]:
    """(path relative to ``root``, size, mtime_ns, resolved name) of every file under ``root`` (hidden names skipped),
    symlinks followed: the resolved name of a Hugging Face cache snapshot file is its blob, named by its content hash."""
    if root.is_file():
        st = root.stat()
        return [(root.name, st.st_size, st.st_mtime_ns, root.resolve().name)]
    stamps = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        st = path.stat()
        stamps.append((rel.as_posix(), st.st_size, st.st_mtime_ns, path.resolve().name))
    return stamps


def hub_snapshot(repo_id: str, revision: str | None = None) -> Path | None:
    """The local Hugging Face cache snapshot folder of ``repo_id`` at ``revision`` (default ``main``), or None when it
    is not cached. Never contacts the hub."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except Exception:  # not cached, not a valid id, or huggingface_hub missing: nothing local to fingerprint
        return None


def weights_fingerprint(pretrained: str | Path | None, revision: str | None = None) -> str | None:
    """A cheap content fingerprint (16 hex digits) of the files behind ``pretrained``: a local weights file or folder,
    or a hub id resolved to its local Hugging Face cache snapshot; None when nothing local is found.

    It is a sha1 over the relative path, size, mtime_ns and resolved file name of every file (weights, configs,
    tokenizer files; hidden names skipped), read from ``stat`` only: multi-GB weights are never read. Replacing,
    re-downloading or editing any file at the same path changes it (a hub snapshot's files resolve to blobs named by
    their content hash); copying an unchanged folder elsewhere changes it too (new mtimes), which costs a recomputation,
    never a stale number. Cache keys of anything computed from a model's weights include it.
    """
    if pretrained is None:
        return None
    value = str(pretrained)
    local = Path(value).expanduser()
    if local.exists():
        root = local
    else:
        root = hub_snapshot(value, revision)
        if root is None:
            return None
    h = hashlib.sha1()
    for stamp in _file_stamps(root):
        h.update(json.dumps(stamp).encode())
    return h.hexdigest()[:16]
