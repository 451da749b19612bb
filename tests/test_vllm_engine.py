"""VLLMEngine. The real-vLLM tests run only where vLLM and CUDA are available; the rest drive
the engine through a stand-in `vllm` module to check how it uses vLLM's API."""

from __future__ import annotations

import importlib.util
import sys
import types
from types import SimpleNamespace as NS

import pytest
import torch

from ray_conductor.policy import vllm_engine
from ray_conductor.policy.engine import GenerationEngine, prompt_ids
from ray_conductor.policy.loading import load_causal_lm
from ray_conductor.policy.vllm_engine import MISSING_VLLM, VLLMEngine, to_sample

HAVE_VLLM = importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


# -- a stand-in for the parts of vllm's API the engine uses ---------------------------------


class FakeLLM:
    instances: list["FakeLLM"] = []
    reject_logprobs_mode = False

    def __init__(self, **kwargs):
        if self.reject_logprobs_mode and "logprobs_mode" in kwargs:
            raise TypeError("EngineArgs.__init__() got an unexpected keyword 'logprobs_mode'")
        self.kwargs = kwargs
        self.requests = self.params = None
        self.rpcs, self.resets = [], 0
        self.worker = NS(model_runner=NS(model=FakeModel()))
        _, self.tok = load_causal_lm("tiny-smollm2")
        FakeLLM.instances.append(self)

    def get_tokenizer(self):
        return self.tok

    def generate(self, requests, sampling_params, use_tqdm=True):
        self.requests, self.params = requests, sampling_params
        outs = []
        for req, sp in zip(requests, sampling_params):
            ids = [7, 8, 2] if sp.seed is None or sp.seed % 2 == 0 else [9]
            steps = [{t: NS(logprob=-0.25 * (k + 1), rank=1)} for k, t in enumerate(ids)]
            reason = "stop" if ids[-1] == 2 else "length"
            outs.append(NS(outputs=[NS(token_ids=ids, logprobs=steps, text=f"t{ids[0]}",
                                       finish_reason=reason)]))
        return outs

    def collective_rpc(self, fn, args=()):
        self.rpcs.append(fn)
        return [fn(self.worker, *args)]

    def reset_prefix_cache(self):
        self.resets += 1


class FakeModel:
    def __init__(self):
        self.loaded = None

    def load_weights(self, weights):
        self.loaded = list(weights)

    def state_dict(self):
        return {"qkv_proj.weight": torch.ones(2)}


@pytest.fixture
def fake_vllm(monkeypatch):
    mod = types.ModuleType("vllm")
    mod.LLM = FakeLLM
    mod.SamplingParams = lambda **kw: NS(**kw)
    monkeypatch.setitem(sys.modules, "vllm", mod)
    monkeypatch.setattr(vllm_engine, "resolve_model_path", lambda name: f"/models/{name}")
    FakeLLM.instances.clear()
    FakeLLM.reject_logprobs_mode = False
    return mod


def test_missing_vllm_says_what_to_do(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ImportError) as e:
        VLLMEngine("tiny-smollm2")
    assert str(e.value) == MISSING_VLLM and "engine=hf" in str(e.value)


def test_builds_llm_with_raw_logprobs(fake_vllm):
    engine = VLLMEngine("tiny-smollm2", dtype="bfloat16", gpu_memory_utilization=0.3)
    kw = FakeLLM.instances[-1].kwargs
    assert kw["model"] == "/models/tiny-smollm2" and kw["dtype"] == "bfloat16"
    assert kw["gpu_memory_utilization"] == 0.3 and kw["logprobs_mode"] == "raw_logprobs"
    assert isinstance(engine, GenerationEngine)


def test_older_vllm_without_logprobs_mode(fake_vllm):
    FakeLLM.reject_logprobs_mode = True
    VLLMEngine("tiny-smollm2")
    assert "logprobs_mode" not in FakeLLM.instances[-1].kwargs


def test_generate_one_request_per_sample_with_its_own_seed(fake_vllm):
    engine = VLLMEngine("tiny-smollm2")
    chat = [{"role": "user", "content": "hi"}]
    out = engine.generate([chat, "raw"], n=2, temperature=0.7, max_tokens=9, top_p=0.9, seed=4)
    llm = FakeLLM.instances[-1]
    assert [r["prompt_token_ids"] for r in llm.requests] == (
        [prompt_ids(engine.tokenizer, chat)] * 2 + [prompt_ids(engine.tokenizer, "raw")] * 2)
    assert [p.seed for p in llm.params] == [4, 5, 6, 7]
    p = llm.params[0]
    assert (p.n, p.temperature, p.top_p, p.max_tokens, p.logprobs) == (1, 0.7, 0.9, 9, 0)
    assert [[s.completion_ids for s in g] for g in out] == [[[7, 8, 2], [9]], [[7, 8, 2], [9]]]
    s = out[0][0]
    assert s.logprobs == [-0.25, -0.5, -0.75] and s.finish_reason == "stop" and s.text == "t7"
    assert out[0][1].finish_reason == "length"


def test_update_weights_goes_through_collective_rpc(fake_vllm):
    engine = VLLMEngine("tiny-smollm2")
    llm = FakeLLM.instances[-1]
    engine.update_weights({"a": torch.zeros(3, requires_grad=True)})
    loaded = llm.worker.model_runner.model.loaded
    assert [k for k, _ in loaded] == ["a"] and not loaded[0][1].requires_grad
    assert llm.resets == 1
    assert torch.equal(engine.get_state_dict()["qkv_proj.weight"], torch.ones(2))


def test_update_weights_on_old_vllm_uses_the_driver_worker(fake_vllm):
    engine = VLLMEngine("tiny-smollm2")
    worker = NS(model_runner=NS(model=FakeModel()))
    engine.llm = NS(llm_engine=NS(model_executor=NS(driver_worker=worker)))
    engine.load_state_dict({"b": torch.ones(1)})
    assert worker.model_runner.model.loaded[0][0] == "b"
    engine.llm = NS()
    with pytest.raises(RuntimeError, match="collective_rpc"):
        engine.update_weights({"b": torch.ones(1)})


def test_to_sample_checks_logprobs_were_asked_for():
    c = NS(token_ids=[5, 6], logprobs=None, text="x", finish_reason="length")
    with pytest.raises(RuntimeError, match="logprobs=0"):
        to_sample([1], c)


# -- the real thing --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_engine():
    return VLLMEngine("tiny-smollm2", dtype="float32", gpu_memory_utilization=0.2,
                      enforce_eager=True)


@pytest.mark.vllm
@pytest.mark.gpu
@pytest.mark.skipif(not HAVE_VLLM, reason="needs vLLM importable and a CUDA GPU")
def test_real_vllm_logprobs_match_transformers(real_engine):
    model, tok = load_causal_lm("tiny-smollm2", device="cuda")
    out = real_engine.generate([[{"role": "user", "content": "hi"}], "a raw prompt"], n=2,
                               temperature=1.0, max_tokens=12, seed=0)
    for s in (s for g in out for s in g):
        assert len(s.logprobs) == len(s.completion_ids) > 0
        ids = torch.tensor([s.prompt_ids + s.completion_ids], device="cuda")
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, len(s.prompt_ids) - 1 : -1].float(), -1)
        expected = logp.gather(1, torch.tensor(s.completion_ids, device="cuda")[:, None])
        assert torch.allclose(torch.tensor(s.logprobs), expected.squeeze(1).cpu(), atol=1e-2)


@pytest.mark.vllm
@pytest.mark.gpu
@pytest.mark.skipif(not HAVE_VLLM, reason="needs vLLM importable and a CUDA GPU")
def test_real_vllm_seeded_and_weight_update(real_engine):
    prompts = ["one two three"]
    a = real_engine.generate(prompts, n=2, temperature=1.0, max_tokens=8, seed=3)
    b = real_engine.generate(prompts, n=2, temperature=1.0, max_tokens=8, seed=3)
    assert [s.completion_ids for s in a[0]] == [s.completion_ids for s in b[0]]
    before = real_engine.generate(prompts, n=1, temperature=0, max_tokens=8)[0][0]
    model, _ = load_causal_lm("tiny-smollm2")
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(-1.0)
    real_engine.update_weights(model.state_dict())
    after = real_engine.generate(prompts, n=1, temperature=0, max_tokens=8)[0][0]
    assert after.completion_ids != before.completion_ids
