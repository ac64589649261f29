"""The real CLIP BPE tokenizer without downloads, and a guard against the silent 2-token fallback.

open_clip ships OpenAI's BPE merges (``bpe_simple_vocab_16e6.txt.gz``); the 49,408-token CLIP
vocabulary used by SD1.5/SDXL is derived from it deterministically (byte symbols, their
end-of-word forms, the first 48,894 merges, then the two special tokens), so we can write the
``vocab.json``/``merges.txt`` pair that ``transformers.CLIPTokenizer`` loads.
"""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from importlib import resources
from pathlib import Path

CLIP_VOCAB_SIZE = 49408
EMBEDDING_PADDING = 128  # text encoders may pad their vocabulary (T5: 32,100 tokens, 32,128 embeddings)


@lru_cache(maxsize=1)
def _byte_symbols() -> list[str]:
    """GPT-2/CLIP byte-to-unicode table, in CLIP's vocabulary order."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    symbols = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in symbols:
            symbols[b] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in keep] + [symbols[b] for b in range(256) if b not in keep]


def clip_bpe_merges() -> list[tuple[str, str]]:
    """The merges CLIP uses (49152 - 256 - 2 of them), read from open_clip's packaged file."""
    path = resources.files("open_clip") / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.decompress(path.read_bytes()).decode("utf-8").split("\n")
    return [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]


def write_clip_tokenizer_files(directory: str | Path) -> Path:
    """Write ``vocab.json`` and ``merges.txt`` of the CLIP tokenizer into ``directory``; return it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    merges = clip_bpe_merges()
    symbols = _byte_symbols()
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (directory / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}), encoding="utf-8")
    (directory / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8"
    )
    return directory


def load_clip_tokenizer(directory: str | Path, model_max_length: int = 77):
    """A ``transformers.CLIPTokenizer`` over the real CLIP vocabulary written into ``directory``."""
    from transformers import CLIPTokenizer

    directory = Path(directory)
    if not (directory / "vocab.json").exists():
        write_clip_tokenizer_files(directory)
    tok = CLIPTokenizer(
        vocab=str(directory / "vocab.json"), merges=str(directory / "merges.txt"), model_max_length=model_max_length
    )
    return check_tokenizer(tok, str(directory), CLIP_VOCAB_SIZE)


def check_tokenizer(tokenizer, source: str = "tokenizer", vocab_size: int | None = None):
    """Raise unless ``tokenizer`` fits the text encoder whose embedding table has ``vocab_size`` rows.

    ``CLIPTokenizer.from_pretrained(<unreachable hub id>)`` can silently return a tokenizer with a
    2-token vocabulary; what tells it apart from a real (even a small, research) tokenizer is that its
    size does not match the text encoder: more tokens than embeddings (ids out of range), or fewer than
    the embedding table minus the padding some encoders add. ``vocab_size=None`` (no encoder to compare
    with) only rejects a tokenizer of fewer than 3 tokens.
    """
    size = len(tokenizer)
    if vocab_size is None:
        bad = size < 3
    else:
        bad = size > vocab_size or size < vocab_size - EMBEDDING_PADDING
    if bad:
        against = "" if vocab_size is None else f" but its text encoder has {vocab_size} token embeddings"
        raise ValueError(
            f"tokenizer loaded from {source!r} has {size} tokens{against}: its vocabulary files are missing or "
            "belong to another model (an unreachable hub id offline, or a folder without vocab.json/merges.txt)"
        )
    return tokenizer
